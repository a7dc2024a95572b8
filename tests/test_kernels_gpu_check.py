"""bench/gpu_check.py's parts that run without a GPU: argument parsing, the synthetic task, the loss
comparison, the table writer and its --replot, and the refusal on a machine without CUDA. (The checks
themselves need a CUDA GPU: `bash bench/gpu_check.sh` there.)"""
import json

import pytest
import torch

from test_bench_scripts import script  # noqa: F401 (the fixture that imports a bench script)


@pytest.fixture
def gpu_check(script):
    return script("gpu_check")


def test_arguments(gpu_check, capsys):
    args = gpu_check.parse_args([])
    assert args.only == list(gpu_check.CHECKS) and args.cofi_steps == 200 and args.teacher == "minilm"
    assert gpu_check.parse_args(["--only", "cofi, kernels"]).only == ["cofi", "kernels"]
    for bad, message in ((["--only", "kernels,tpu"], "unknown check(s) tpu; choose from kernels, bench, cofi, "
                                                     "export, ddp"),
                         (["--only", ","], "unknown check(s) (none)"),
                         (["--cofi-steps", "5"], "argument --cofi-steps: 5 is out of range (must be >= 10)")):
        with pytest.raises(SystemExit) as e:
            gpu_check.parse_args(bad)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_table_has_one_row_per_check_and_says_what_passed(gpu_check, tmp_path):
    rows = [gpu_check.Row("kernels", "pass", {"tests passed": 27}, "compiled, not interpreted", 41.2),
            gpu_check.Row("cofi", "fail", {"s/step triton": 0.0412345, "loss curve max rel diff": 0.31}, "x", 99.6),
            gpu_check.Row("ddp", "skipped", note="needs 2 GPUs, this machine has 1")]
    env = {"GPU": "NVIDIA H100", "GPUs": 1}
    doc = gpu_check.document(rows, env, "python bench/gpu_check.py --only kernels,cofi,ddp", ["kernels", "cofi", "ddp"])
    text = gpu_check.markdown(doc)
    lines = text.splitlines()
    assert lines[2] == "Command: `python bench/gpu_check.py --only kernels,cofi,ddp`"
    assert lines[4] == "Environment: GPU NVIDIA H100, GPUs 1."
    assert lines[6:8] == ["| check | status | figures | note | seconds |", "|---|---|---|---|---:|"]
    assert lines[8] == "| kernels | pass | tests passed 27 | compiled, not interpreted | 41 |"
    assert lines[9] == "| cofi | fail | s/step triton 0.04123; loss curve max rel diff 0.31 | x | 100 |"
    assert lines[10] == "| ddp | skipped |  | needs 2 GPUs, this machine has 1 | 0 |"
    assert lines[-1] == "1 of 3 checks passed; 1 skipped, 1 failed."
    (tmp_path / "gpu_check.json").write_text(json.dumps(doc))
    assert gpu_check.main(["--replot", str(tmp_path / "gpu_check.json")]) == 0
    assert (tmp_path / "gpu_check.md").read_text() == text


def test_an_unfinished_run_names_the_checks_not_run(gpu_check):
    doc = gpu_check.document([gpu_check.Row("kernels", "pass", seconds=3.0)], {"GPU": "x"}, "python bench/gpu_check.py",
                             list(gpu_check.CHECKS))
    assert gpu_check.markdown(doc).splitlines()[-2:] == [
        "1 of 1 checks passed; 0 skipped, 0 failed.",
        "Unfinished: bench, cofi, export, ddp not run (the run stopped, or is still running)."]


def test_loss_curves_are_compared_point_by_point(gpu_check, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": 20 * i, "train_loss": v}) + "\n" for i, v in enumerate([2.0, 1.5, 1.0])))
    assert gpu_check.losses(log) == [2.0, 1.5, 1.0]
    assert gpu_check.max_rel_diff([2.2, 1.5, 1.0], [2.0, 1.5, 1.0]) == pytest.approx(0.1)
    assert gpu_check.max_rel_diff([2.0, 1.5], [2.0, 1.5, 1.0]) == float("inf")      # a run that stopped early


def test_without_glue_data_a_synthetic_task_is_written(gpu_check, tmp_path):
    args = gpu_check.parse_args(["--glue-dir", str(tmp_path / "none")])
    got = gpu_check.task_args(args, tmp_path)
    assert got[:3] == ["--task", "synthetic", "--train-file"] and got[-2:] == ["--text-columns", "sentence"]
    train = (tmp_path / "data" / "train.tsv").read_text().splitlines()
    assert train[0] == "sentence\tlabel" and len(train) == 2049
    assert {line.split("\t")[1] for line in train[1:]} == {"0", "1"}
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_text("sentence\tlabel\n")
    args = gpu_check.parse_args(["--glue-dir", str(tmp_path / "glue")])
    assert gpu_check.task_args(args, tmp_path) == ["--task", "sst2", "--glue-dir", str(tmp_path / "glue")]


def test_without_cuda_it_says_so_in_one_line_and_exits_2(gpu_check, capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: gpu_check would run its checks")
    assert gpu_check.main(["--out", str(tmp_path / "x"), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("bench/gpu_check.py: error: torch sees no CUDA GPU here; this checks the CUDA paths (the CPU "
                   "ones are `make test`)")
    assert list(tmp_path.iterdir()) == []                                # nothing written, not even --work

"""bench/gpu_check.py's parts that run without a GPU: argument parsing, the synthetic task, the loss
comparison, the table writer, and the refusal on a machine without CUDA. (The checks themselves need
a CUDA GPU: `bash bench/gpu_check.sh` there.)"""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    text = gpu_check.table(rows, env)
    lines = text.splitlines()
    assert lines[2] == "Environment: GPU NVIDIA H100, GPUs 1."
    assert lines[4:6] == ["| check | status | figures | note | seconds |", "|---|---|---|---|---:|"]
    assert lines[6] == "| kernels | pass | tests passed 27 | compiled, not interpreted | 41 |"
    assert lines[7] == "| cofi | fail | s/step triton 0.04123; loss curve max rel diff 0.31 | x | 100 |"
    assert lines[8] == "| ddp | skipped |  | needs 2 GPUs, this machine has 1 | 0 |"
    assert lines[-1] == "1 of 3 checks passed; 1 skipped, 1 failed."
    gpu_check.write(rows, env, tmp_path / "sub" / "gpu_check")
    assert (tmp_path / "sub" / "gpu_check.md").read_text() == text
    saved = json.loads((tmp_path / "sub" / "gpu_check.json").read_text())
    assert saved["environment"] == env and [r["status"] for r in saved["rows"]] == ["pass", "fail", "skipped"]


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
    assert err == ("gpu_check: torch sees no CUDA GPU here; this checks the CUDA paths (the CPU ones are "
                   "`make test`)")
    assert not (tmp_path / "x.md").exists()

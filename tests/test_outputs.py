"""Outputs and runs (issue 23 B-E): an output never destroys an input, a CoFi run's finished directory
appears whole or not at all, a resume with other settings is refused, two runs never share an output,
and bad numbers, devices and missing files are one line before any work, never on a progress bar's line."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import tiny_model
from test_crash_safety import interrupt_finetune_at
from prunekit import Masks
from prunekit.cli import main
from prunekit.rundir import lock

pytestmark = pytest.mark.usefixtures("one_thread")


def one_error_line(capfd, verb: str, message: str) -> str:
    """The run's stderr is one line (bars and warnings aside: split on newlines only), the error, naming
    `message`."""
    err = capfd.readouterr().err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith(f"prunekit {verb}: error:") and message in last, err[-2000:]
    return last


def files(d) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def finetune_cmd(model, glue, out, *extra):
    return ["finetune", "--model", str(model), "--task", "sst2", "--glue-dir", str(glue), "--output", str(out),
            "--max-steps", "2", "--batch-size", "16", "--threads", "1", "--device", "cpu", *extra]


def cofi_cmd(model, glue, out, *extra):
    return ["compress", "--method", "cofi", "--teacher", str(model), "--task", "sst2", "--glue-dir", str(glue),
            "--output", str(out), "--target-sparsity", "0.3", "--batch-size", "16", "--prune-epochs", "2",
            "--finetune-epochs", "1", "--device", "cpu", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, sst2_glue_dir, tmp_path_factory):
    """A finished fine-tuning run (a model directory prunekit wrote)."""
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(finetune_cmd(tiny_model_dir, sst2_glue_dir, out)) == 0
    return out


# ---------------------------------------------------------------- B: outputs never destroy inputs


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_eval_output_may_not_replace_a_file_of_the_model(finished_run, sst2_glue_dir, capfd, name):
    before = files(finished_run)
    assert main(["eval", "--model", str(finished_run), "--glue-dir", str(sst2_glue_dir), "--output",
                 str(finished_run / name), "--overwrite"]) == 2
    one_error_line(capfd, "eval", "would replace the input")
    assert files(finished_run) == before


def test_eval_output_beside_the_model_files_is_fine(finished_run, sst2_glue_dir, capfd):
    assert main(["eval", "--model", str(finished_run), "--glue-dir", str(sst2_glue_dir), "--output",
                 str(finished_run / "eval.json")]) == 0
    assert json.loads((finished_run / "eval.json").read_text())["task"] == "sst2"
    (finished_run / "eval.json").unlink()


def test_prune_output_may_not_hold_its_masks(tiny_model_dir, tmp_path, capfd):
    out = tmp_path / "o"
    out.mkdir()
    Masks(z_head=torch.ones(3, 4)).save(out / "masks.safetensors")
    (out / "report.json").write_text("{}")          # an earlier prunekit output: --overwrite may replace it
    before = files(out)
    assert main(["prune", "--model", str(tiny_model_dir), "--masks", str(out / "masks.safetensors"), "--output",
                 str(out), "--overwrite"]) == 2
    one_error_line(capfd, "prune", "would replace the input")
    assert files(out) == before


def test_finetune_overwrite_with_a_bad_task_keeps_the_old_run(finished_run, tiny_model_dir, sst2_glue_dir, capfd):
    before = files(finished_run)
    cmd = finetune_cmd(tiny_model_dir, sst2_glue_dir, finished_run, "--overwrite")
    cmd[cmd.index("sst2")] = "no-such-task"
    assert main(cmd) == 2
    one_error_line(capfd, "finetune", "unknown task 'no-such-task'")
    assert files(finished_run) == before


def test_finetune_may_not_write_over_its_own_training_file(finished_run, tiny_model_dir, capfd):
    data = finished_run / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"good film {i}\t1\nbad film {i}\t0\n" for i in range(16)))
    before = files(finished_run)
    assert main(["finetune", "--model", str(tiny_model_dir), "--task", "mine", "--train-file", str(data),
                 "--dev-file", str(data), "--text-columns", "sentence", "--output", str(finished_run),
                 "--overwrite", "--max-steps", "1", "--device", "cpu"]) == 2
    one_error_line(capfd, "finetune", "would replace the input")
    assert files(finished_run) == before
    data.unlink()


@pytest.mark.parametrize("extra, message", [
    (["--macs", "1e-9"], "too small to keep one head and one FFN neuron per layer"),
    (["--method", "cofi", "--target-sparsity", "0.5", "--distill-layers", "7"], "distill layers must be between"),
    (["--method", "cofi", "--target-sparsity", "0.5", "--student", "/no/such/model"], "model directory not found"),
])
def test_compress_overwrite_with_bad_input_keeps_the_old_output(finished_run, tiny_model_dir, sst2_glue_dir, tmp_path,
                                                                capfd, extra, message):
    old = tmp_path / "old"
    shutil.copytree(finished_run, old)
    before = files(old)
    assert main(["compress", "--teacher", str(tiny_model_dir), "--task", "sst2", "--glue-dir", str(sst2_glue_dir),
                 "--output", str(old), "--overwrite", "--device", "cpu", *extra]) == 2
    one_error_line(capfd, "compress", message)
    assert files(old) == before and sorted(p.name for p in tmp_path.iterdir()) == ["old"]


# ---------------------------------------------------------------- C: CoFi's finished directory arrives whole

KILLED_AT = textwrap.dedent("""
    import os, sys
    import prunekit.harness as harness
    point = sys.argv[1]
    if point == "staging":      # the finished directory half built beside the run
        real_write = harness.write_json
        def write_json(path, obj):
            if os.path.basename(str(path)) == "report.json":
                os._exit(9)
            real_write(path, obj)
        harness.write_json = write_json
    else:                       # the run moved aside, the finished directory not yet in its place
        real_replace = os.replace
        def replace(src, dst):
            if os.path.basename(str(dst)) == "cofi" and ".tmp-" in os.path.basename(str(src)):
                os._exit(9)
            real_replace(src, dst)
        os.replace = replace
    from prunekit.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["staging", "swap"])
def test_a_cofi_run_killed_while_finishing_never_looks_finished_and_resume_keeps_the_model(
        point, tiny_model_dir, sst2_glue_dir, tmp_path, capfd):
    out = tmp_path / "cofi"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, point, *cofi_cmd(tiny_model_dir, sst2_glue_dir, out)],
                            env=env, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert not (out / "report.json").exists() and not (out / "config.json").exists()   # not finished-looking
    capfd.readouterr()
    if point == "staging":   # the run is still there, marked INCOMPLETE: resume writes the finished directory
        assert (out / "INCOMPLETE").is_file() and (out / "prune" / "pruned.safetensors").is_file()
        assert main(cofi_cmd(tiny_model_dir, sst2_glue_dir, out, "--resume")) == 0
    else:                    # the next prunekit call finishes the swap the killed one began
        assert not out.exists()
        assert main(cofi_cmd(tiny_model_dir, sst2_glue_dir, out, "--resume")) == 2
        one_error_line(capfd, "compress", "nothing to resume")
    assert {"config.json", "model.safetensors", "masks.safetensors", "report.json"} <= set(files(out))
    assert not (out / "INCOMPLETE").exists() and not (out / "prune").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cofi"]                 # no leftovers beside it
    assert main(["eval", "--model", str(out), "--glue-dir", str(sst2_glue_dir), "--device", "cpu"]) == 0


# ---------------------------------------------------------------- D: resume with other settings, two runs at once


def with_option(cmd: list, flag: str, value: str) -> list:
    """cmd with `flag` set to `value` (replaced if it is there, else added)."""
    if flag not in cmd:
        return [*cmd, flag, value]
    i = cmd.index(flag)
    return [*cmd[:i + 1], value, *cmd[i + 2:]]


@pytest.mark.parametrize("flag, value, what", [("--max-length", "16", "max_length"), ("--task", "stsb", "task"),
                                               ("--model", "minilm", "model")])
def test_resume_with_settings_that_change_the_run_is_refused(tiny_model_dir, sst2_stsb_glue_dir, tmp_path, capfd,
                                                             monkeypatch, flag, value, what):
    out = tmp_path / "run"
    cmd = finetune_cmd(tiny_model_dir, sst2_stsb_glue_dir, out, "--max-steps", "6", "--save-every", "2")
    interrupt_finetune_at(monkeypatch, 3)
    assert main(cmd) == 130
    monkeypatch.undo()
    before = files(out)
    capfd.readouterr()
    assert main(with_option(cmd, flag, value) + ["--resume"]) == 2
    line = one_error_line(capfd, "finetune", "cannot resume")
    assert f"{what}:" in line
    assert files(out) == before


@pytest.mark.slow
def test_a_cofi_resume_with_another_length_is_refused(tiny_model_dir, sst2_glue_dir, tmp_path, capfd, monkeypatch):
    from prunekit.cofi.trainer import CoFiTrainer
    real = CoFiTrainer.train_step

    def ctrl_c(self, batch):
        if self.step == 5:
            raise KeyboardInterrupt
        return real(self, batch)
    monkeypatch.setattr(CoFiTrainer, "train_step", ctrl_c)
    out = tmp_path / "cofi"
    assert main(cofi_cmd(tiny_model_dir, sst2_glue_dir, out, "--save-every", "4")) == 130
    monkeypatch.undo()
    capfd.readouterr()
    assert main(cofi_cmd(tiny_model_dir, sst2_glue_dir, out, "--save-every", "4", "--resume", "--max-length", "16")) == 2
    assert "max_length" in one_error_line(capfd, "compress", "cannot resume")
    assert (out / "prune" / "last").is_dir()


def test_a_second_run_into_an_output_in_use_is_refused(tiny_model_dir, sst2_glue_dir, tmp_path, capfd):
    out = tmp_path / "run"
    with lock(out, str(out)):                     # another run holds it
        assert main(finetune_cmd(tiny_model_dir, sst2_glue_dir, out)) == 2
        one_error_line(capfd, "finetune", "is being written by another prunekit run")
        assert main(cofi_cmd(tiny_model_dir, sst2_glue_dir, out)) == 2
        one_error_line(capfd, "compress", "is being written by another prunekit run")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []            # the lock file went with the lock


@pytest.mark.slow
def test_two_runs_started_together_into_one_output(tiny_model_dir, sst2_glue_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "prunekit.cli", *finetune_cmd(tiny_model_dir, sst2_glue_dir, out, "--max-steps", "8")]
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(r.wait(timeout=600), r.stderr.read()) for r in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, e in results if code == 2).strip().split("\n")
    assert len(err) == 1 and ("is being written by another prunekit run" in err[0] or "already exists" in err[0])
    assert json.loads((out / "metrics.json").read_text())["steps"] == 8


# ---------------------------------------------------------------- E: bad numbers, devices, files; error lines


@pytest.mark.parametrize("verb_args, message", [
    (["compress", "--method", "cofi", "--target-sparsity", "0.5", "--temperature", "1e-300"],
     "argument --temperature: 1e-300 is out of range (must be finite, >= 0.01 and <= 100)"),
    (["compress", "--latency", "0.5", "--latency-seq-len", "100"], "--latency-seq-len 100 is longer than"),
    (["compress", "--method", "cofi", "--latency", "0.5", "--latency-seq-len", "1000000"],
     "--latency-seq-len 1000000 is longer than"),
])
def test_compress_bad_numbers_are_refused_before_any_work(tiny_model_dir, sst2_glue_dir, tmp_path, capfd, verb_args,
                                                          message):
    verb, *rest = verb_args
    assert main([verb, "--teacher", str(tiny_model_dir), "--task", "sst2", "--glue-dir", str(sst2_glue_dir),
                 "--output", str(tmp_path / "o"), "--lut-cache", str(tmp_path / "lut.json"), *rest]) == 2
    one_error_line(capfd, verb, message)
    assert list(tmp_path.iterdir()) == []


def test_export_without_a_gpu_or_without_tokenizer_files_is_one_line(tmp_path, capfd):
    bare = tmp_path / "bare"
    tiny_model().save_pretrained(bare)                      # no tokenizer files
    capfd.readouterr()
    assert main(["export", "--onnx", "--model", str(bare), "--output", str(tmp_path / "o")]) == 2
    err = capfd.readouterr().err.strip().split("\n")
    assert len(err) == 1 and "has no tokenizer files" in err[0], err
    if not torch.cuda.is_available():
        assert main(["export", "--onnx", "--model", str(bare), "--output", str(tmp_path / "o"), "--device",
                     "cuda"]) == 2
        err = capfd.readouterr().err.strip().split("\n")
        assert len(err) == 1 and "torch sees no CUDA GPU here" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare"]


def test_an_error_during_a_progress_bar_gets_a_line_of_its_own(tiny_model_dir, sst2_glue_dir, tmp_path, capfd,
                                                               monkeypatch):
    from prunekit.errors import PrunekitError
    from prunekit.training import Trainer
    real = Trainer.train_step

    def fails(self, batch):
        if self.step == 1:
            raise PrunekitError("loss became nan at step 2; try a lower --lr")
        return real(self, batch)
    monkeypatch.setattr(Trainer, "train_step", fails)
    monkeypatch.setattr("prunekit.training.bar_interval", lambda: 0)   # the bar redraws at every step
    capfd.readouterr()
    assert main(finetune_cmd(tiny_model_dir, sst2_glue_dir, tmp_path / "run")) == 2
    err = capfd.readouterr().err
    assert "finetune sst2" in err                                       # the bar was drawn ...
    lines = err.rstrip("\n").split("\n")
    assert lines[-1].startswith("prunekit finetune: error: loss became nan"), err   # ... and the error is on its own line

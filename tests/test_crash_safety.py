"""Crash-safe runs: an interrupted run never looks finished, --resume picks up every interrupted state,
leftovers of killed writers are cleaned, and a CoFi run killed with SIGKILL resumes bit-identically."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from prunekit.cli import main
from prunekit.io import output_dir
from prunekit.training import Trainer


def finetune_cmd(model_dir, glue_dir, out):
    return ["finetune", "--model", str(model_dir), "--task", "sst2", "--glue-dir", str(glue_dir), "--output", str(out),
            "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--eval-every", "4", "--save-every", "2",
            "--threads", "1"]


def interrupt_finetune_at(monkeypatch, step):
    real = Trainer.train_step

    def ctrl_c(self, batch):
        if self.step == step:
            raise KeyboardInterrupt
        return real(self, batch)
    monkeypatch.setattr(Trainer, "train_step", ctrl_c)
    return lambda: monkeypatch.setattr(Trainer, "train_step", real)


def test_a_finetune_stopped_after_an_evaluation_is_not_a_model_until_resumed(tiny_model_dir, sst2_glue_dir, tmp_path,
                                                                            monkeypatch, capsys):
    out = tmp_path / "run"
    undo = interrupt_finetune_at(monkeypatch, 6)            # after the step-4 evaluation saved a best model
    assert main(finetune_cmd(tiny_model_dir, sst2_glue_dir, out)) == 130
    undo()
    assert (out / "INCOMPLETE").is_file() and (out / "last" / "best" / "model.safetensors").is_file()
    assert not (out / "config.json").exists()           # the best model so far lives in the checkpoint only
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--glue-dir", str(sst2_glue_dir)]) == 2
    assert "is an unfinished run (interrupted): finish it with --resume" in capsys.readouterr().err
    assert main(finetune_cmd(tiny_model_dir, sst2_glue_dir, out) + ["--resume"]) == 0
    assert not (out / "INCOMPLETE").exists() and not (out / "last").exists()
    assert main(["eval", "--model", str(out), "--glue-dir", str(sst2_glue_dir)]) == 0


def test_a_finetune_stopped_before_its_first_checkpoint_resumes_from_the_start(tiny_model_dir, sst2_glue_dir, tmp_path,
                                                                              monkeypatch, capsys):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main(finetune_cmd(tiny_model_dir, sst2_glue_dir, straight)) == 0
    undo = interrupt_finetune_at(monkeypatch, 1)            # no checkpoint yet (the first is at step 2)
    assert main(finetune_cmd(tiny_model_dir, sst2_glue_dir, cut)) == 130
    undo()
    assert not (cut / "last").exists() and (cut / "INCOMPLETE").is_file()
    capsys.readouterr()
    assert main(finetune_cmd(tiny_model_dir, sst2_glue_dir, cut)) == 2      # it blocks a plain rerun ...
    assert "--resume" in capsys.readouterr().err
    assert main(finetune_cmd(tiny_model_dir, sst2_glue_dir, cut) + ["--resume"]) == 0   # ... but resumes
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_leftovers_of_dead_writers_are_cleaned_and_success_leaves_none(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final = tmp_path / "out"
    stale = [tmp_path / f".out.tmp-{dead.pid}-abc", tmp_path / f".out.old-{dead.pid}", tmp_path / f".out.tmp-{dead.pid}"]
    stale[0].mkdir()
    stale[1].mkdir()
    stale[2].write_text("half a file")
    live = tmp_path / f".out.tmp-{os.getppid()}-xyz"           # a writer that is still running: left alone
    live.mkdir()
    with output_dir(final) as tmp:
        (tmp / "a.json").write_text("{}")
    assert not any(p.exists() for p in stale) and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "out"])


@pytest.mark.slow
def test_a_cofi_run_killed_with_sigkill_resumes_bit_identically(tiny_model_dir, sst2_glue_dir, tmp_path):
    def cmd(out, *extra):
        return [sys.executable, "-m", "prunekit.cli", "compress", "--method", "cofi", "--teacher", str(tiny_model_dir),
                "--task", "sst2", "--glue-dir", str(sst2_glue_dir), "--output", str(out), "--target-sparsity", "0.4",
                "--batch-size", "16", "--prune-epochs", "6", "--finetune-epochs", "2", "--save-every", "3",
                "--reg-lr", "0.1", "--threads", "1", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(cmd(tmp_path / "whole"), env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd(cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = cut / "prune" / "last" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and '"step": 12' in state.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "report.json").exists() and not (cut / "config.json").exists()
    resumed = subprocess.run(cmd(cut, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("masks.safetensors", "model.safetensors"):
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(cut / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_writer_killed_in_the_middle_of_a_directory_swap_is_finished_by_the_next_one(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final = tmp_path / "last"
    (tmp_path / f".last.old-{dead.pid}").mkdir()                   # the previous checkpoint, moved aside
    new = tmp_path / f".last.tmp-{dead.pid}-abc"                     # the new one, complete, not yet renamed
    new.mkdir()
    (new / "state.json").write_text('{"step": 12}')
    from prunekit.io import clean_leftovers
    clean_leftovers(final)
    assert (final / "state.json").read_text() == '{"step": 12}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]

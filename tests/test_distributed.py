"""Multi-process training with torchrun (gloo, 2 CPU processes): the same global batch and seed give the
same model (fine-tuning) and the same masks and loss curve (CoFi) as one process, within float
tolerance. Dropout is off in the model used, since each process draws its own dropout masks."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_model


@pytest.fixture(scope="module")
def no_dropout_dir(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("no-dropout")
    model = small_model(tok)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(d)
    return d


def launch(processes: int, args: list[str]):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prefix = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
              if processes > 1 else [sys.executable])
    r = subprocess.run(prefix + ["-m", "prunekit.cli", *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def losses(log):
    return [json.loads(line)["train_loss"] for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_fine_tune_like_one(no_dropout_dir, sst2_glue_dir, tmp_path):
    base = ["finetune", "--model", str(no_dropout_dir), "--task", "sst2", "--glue-dir", str(sst2_glue_dir),
            "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--eval-every", "3", "--threads", "1"]
    launch(1, base + ["--output", str(tmp_path / "one")])
    launch(2, base + ["--output", str(tmp_path / "two")])
    assert json.loads((tmp_path / "two" / "train_args.json").read_text())["processes"] == 2
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    assert losses(tmp_path / "two" / "log.jsonl") == pytest.approx(losses(tmp_path / "one" / "log.jsonl"), rel=1e-4)


@pytest.mark.slow
def test_two_processes_prune_with_cofi_like_one(no_dropout_dir, sst2_glue_dir, tmp_path):
    base = ["compress", "--method", "cofi", "--teacher", str(no_dropout_dir), "--task", "sst2", "--glue-dir",
            str(sst2_glue_dir), "--target-sparsity", "0.4", "--batch-size", "16", "--prune-epochs", "4",
            "--finetune-epochs", "1", "--reg-lr", "0.1", "--eval-every", "6", "--threads", "1"]
    launch(1, base + ["--output", str(tmp_path / "one")])
    launch(2, base + ["--output", str(tmp_path / "two")])
    a, b = load_file(str(tmp_path / "one" / "masks.safetensors")), load_file(str(tmp_path / "two" / "masks.safetensors"))
    for k in a:  # the same units kept, with the same soft values
        assert torch.equal(a[k] != 0, b[k] != 0) and torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4), k
    one, two = losses(tmp_path / "one" / "log_prune.jsonl"), losses(tmp_path / "two" / "log_prune.jsonl")
    assert two == pytest.approx(one, rel=1e-3, abs=1e-4)


@pytest.mark.slow
def test_two_processes_share_the_fisher_pass_and_find_the_same_masks(no_dropout_dir, sst2_glue_dir, tmp_path):
    base = ["compress", "--teacher", str(no_dropout_dir), "--task", "sst2", "--glue-dir", str(sst2_glue_dir),
            "--macs", "0.5", "--num-samples", "80", "--batch-size", "16", "--no-eval", "--threads", "1"]
    launch(1, base + ["--output", str(tmp_path / "one")])
    launch(2, base + ["--output", str(tmp_path / "two")])
    a, b = load_file(str(tmp_path / "one" / "masks.safetensors")), load_file(str(tmp_path / "two" / "masks.safetensors"))
    for k in a:
        assert torch.equal(a[k] != 0, b[k] != 0) and torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    assert json.loads((tmp_path / "two" / "report.json").read_text())["fisher_batches"] == 5

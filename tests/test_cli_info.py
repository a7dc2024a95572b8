"""`prunekit info` and the CLI's bad-input contract (one line on stderr, exit 2)."""
import subprocess
import sys

import pytest

from prunekit.cli import main


@pytest.mark.slow  # loads the real MiniLM
def test_info_prints_per_layer_table_for_minilm(capsys):
    assert main(["info", "minilm"]) == 0
    out = capsys.readouterr().out
    assert "encoder params (CoFi definition) 10,637,568" in out
    assert out.count("   12   1536  yes  yes") == 6


@pytest.mark.slow  # a subprocess (imports torch and transformers afresh)
def test_info_on_missing_model_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "prunekit.cli", "info", "/nonexistent/model"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "model directory not found" in r.stderr
    assert r.stderr.startswith("prunekit info: error: ") and "Traceback" not in r.stderr


def test_prune_verb_applies_masks_and_refuses_bad_ones(tmp_path, capsys):
    import torch
    import prunekit
    from conftest import tiny_config, tiny_model
    from prunekit import Masks
    from prunekit.cost import cost_report, format_report
    tiny_model().save_pretrained(tmp_path / "dense")
    Masks(z_head=torch.tensor([[1., 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])).save(tmp_path / "m.safetensors")
    assert main(["prune", "--model", str(tmp_path / "dense"), "--masks", str(tmp_path / "m.safetensors"),
                 "--output", str(tmp_path / "out")]) == 0
    compact = prunekit.load_model(tmp_path / "out")
    assert compact.config.num_heads == [2, 0, 3]
    # the printed table is the cost report of the compact model against the dense one, at seq len 128
    want = format_report(cost_report(compact.config, seq_len=128, reference=tiny_config()), str(tmp_path / "out"))
    assert capsys.readouterr().out == want + "\n"
    # an existing output is refused; masks of the wrong shape or with NaN are one-line errors
    assert main(["prune", "--model", str(tmp_path / "dense"), "--masks", str(tmp_path / "m.safetensors"),
                 "--output", str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
    for bad, message in ((Masks(z_head=torch.ones(3, 5)), "mask z_head has shape (3, 5), the model needs (3, 4)"),
                         (Masks(z_int=torch.full((3, 12), float("nan"))), "mask z_int contains NaN")):
        bad.save(tmp_path / "bad.safetensors")
        assert main(["prune", "--model", str(tmp_path / "dense"), "--masks", str(tmp_path / "bad.safetensors"),
                     "--output", str(tmp_path / "out2")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"prunekit prune: error: {message}"), err
    assert not (tmp_path / "out2").exists()


def test_regression_head_uses_mse_loss():
    import torch
    from conftest import random_batch, tiny_model
    model = tiny_model(num_labels=1)
    out = model(**random_batch(), labels=torch.tensor([0.5, 2.0, -1.0]))
    assert out.logits.shape == (3, 1)
    assert torch.allclose(out.loss, ((out.logits.squeeze(-1) - torch.tensor([0.5, 2.0, -1.0])) ** 2).mean())

"""`prunekit info` and the CLI's bad-input contract (one line on stderr, exit 2)."""
import subprocess
import sys

from prunekit.cli import main


def test_info_prints_per_layer_table_for_minilm(capsys):
    assert main(["info", "minilm"]) == 0
    out = capsys.readouterr().out
    assert "encoder params (CoFi definition) 10,637,568" in out
    assert out.count("   12   1536  yes  yes") == 6


def test_info_on_missing_model_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "prunekit.cli", "info", "/nonexistent/model"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "model directory not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_prune_verb_applies_masks_and_refuses_bad_ones(tmp_path, capsys):
    import torch
    import prunekit
    from conftest import tiny_model
    from prunekit import Masks
    tiny_model().save_pretrained(tmp_path / "dense")
    Masks(z_head=torch.tensor([[1., 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])).save(tmp_path / "m.safetensors")
    assert main(["prune", "--model", str(tmp_path / "dense"), "--masks", str(tmp_path / "m.safetensors"),
                 "--output", str(tmp_path / "out")]) == 0
    assert prunekit.load_model(tmp_path / "out").config.num_heads == [2, 0, 3]
    assert "kept vs reference" in capsys.readouterr().out
    # an existing output is refused; masks of the wrong shape or with NaN are one-line errors
    assert main(["prune", "--model", str(tmp_path / "dense"), "--masks", str(tmp_path / "m.safetensors"),
                 "--output", str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
    for bad in (Masks(z_head=torch.ones(3, 5)), Masks(z_int=torch.full((3, 12), float("nan")))):
        bad.save(tmp_path / "bad.safetensors")
        assert main(["prune", "--model", str(tmp_path / "dense"), "--masks", str(tmp_path / "bad.safetensors"),
                     "--output", str(tmp_path / "out2")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("shape" in err or "NaN" in err)
    assert not (tmp_path / "out2").exists()


def test_regression_head_uses_mse_loss():
    import torch
    from conftest import random_batch, tiny_model
    model = tiny_model(num_labels=1)
    out = model(**random_batch(), labels=torch.tensor([0.5, 2.0, -1.0]))
    assert out.logits.shape == (3, 1)
    assert torch.allclose(out.loss, ((out.logits.squeeze(-1) - torch.tensor([0.5, 2.0, -1.0])) ** 2).mean())

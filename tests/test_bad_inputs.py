"""Bad input, every verb: exit code 2, one line on stderr naming the problem, no traceback, nothing
written. The README's bad-input table lists these cases."""
import json

import pytest
import torch

from conftest import tiny_model
from prunekit import Masks
from prunekit.cli import main


def prunekit_dir(d, **config_changes):
    """A tiny prunekit model directory, its config.json edited (None removes a key)."""
    tiny_model().save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    for k, v in config_changes.items():
        cfg.pop(k) if v is None else cfg.__setitem__(k, v)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def bert_dir(d, drop_key):
    d.mkdir()
    cfg = {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 12, "max_position_embeddings": 32}
    cfg.pop(drop_key)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def pickle_beside_masks(d):
    prunekit_dir(d)
    (d / "model.safetensors").unlink()
    torch.save({}, d / "pytorch_model.bin")
    Masks(z_mha=torch.ones(3)).save(d / "masks.safetensors")
    return d


def huge_masks(t):
    Masks(z_int=torch.full((3, 12), 1e38), z_ffn=torch.full((3,), 1e38)).save(t / "huge.safetensors")
    return str(t / "huge.safetensors")


def a_file(t, name="file"):
    (t / name).write_text("not a directory")
    return str(t / name)


def unfinished(d):
    prunekit_dir(d)
    (d / "INCOMPLETE").write_text("")
    return d


def copy_model(t, m, name="copy"):
    import shutil
    shutil.copytree(m, t / name)
    return str(t / name)


def zero_masks(t):
    Masks(z_head=torch.zeros(3, 4), z_int=torch.zeros(3, 12)).save(t / "zero.safetensors")
    return str(t / "zero.safetensors")


def empty_masks(t):
    from safetensors.torch import save_file
    save_file({}, str(t / "empty.safetensors"))
    return str(t / "empty.safetensors")


def huge_head_masks(t):
    Masks(z_head=torch.full((3, 4), 1e38)).save(t / "hh.safetensors")
    return str(t / "hh.safetensors")


# (verb, a function of (tmp_path, model_dir, glue_dir) giving the arguments, what the line must say)
CASES = [
    ("info", lambda t, m, g: [str(m), "--seq-len", "-5"], "argument --seq-len: -5 is out of range"),
    ("info", lambda t, m, g: [str(t / "nope")], "model directory not found"),
    ("info", lambda t, m, g: [str((t / "x").mkdir() or (t / "x" / "config.json").write_text("[1, 2]") and t / "x")],
     "config.json is not a JSON object"),
    ("info", lambda t, m, g: [str(prunekit_dir(t / "x", num_heads=[4, 4], ffn_dim=[12, 12, 12]))],
     "num_heads and ffn_dim must be lists of one entry per layer, of the same length"),
    ("info", lambda t, m, g: [str(prunekit_dir(t / "x", num_heads=[4, -1, 4]))], "whole numbers >= 0"),
    ("info", lambda t, m, g: [str(prunekit_dir(t / "x", num_heads=[4, 3, 4]))], "its weights do not fit its config.json"),
    ("info", lambda t, m, g: [str(prunekit_dir(t / "x", hidden_size=0))], "hidden_size must be a positive whole number"),
    ("info", lambda t, m, g: [str(bert_dir(t / "x", "num_attention_heads"))],
     "bert config.json has no 'num_attention_heads'"),
    ("info", lambda t, m, g: [str(pickle_beside_masks(t / "x"))], "has no model.safetensors (it has pickle weights"),
    ("info", lambda t, m, g: [str(unfinished(t / "x"))], "is an unfinished run (interrupted)"),
    ("info", lambda t, m, g: [a_file(t)], "is a file; a model is a directory"),
    ("prune", lambda t, m, g: ["--model", str(m), "--masks", str(t / "none.safetensors"), "--output", str(t / "o")],
     "mask file not found"),
    ("prune", lambda t, m, g: ["--model", str(m), "--masks", huge_masks(t), "--output", str(t / "o")],
     "make folded weights non-finite"),
    ("prune", lambda t, m, g: ["--model", str(m), "--masks", huge_masks(t), "--output", str(t / "o"), "--seq-len",
                               "0"], "argument --seq-len: 0 is out of range"),
    ("info", lambda t, m, g: [str(m), "--seq-len", "99999999999999999999"], "argument --seq-len: 99999999999999999999 is "
     "out of range"),
    ("prune", lambda t, m, g: ["--model", str(m), "--masks", str(t), "--output", str(t / "o")],
     "is a directory; --masks names a .safetensors file"),
    ("prune", lambda t, m, g: ["--model", str(m), "--masks", empty_masks(t), "--output", str(t / "o")], "holds no masks"),
    ("prune", lambda t, m, g: ["--model", str(m), "--masks", zero_masks(t), "--output", str(t / "o")],
     "remove every attention and FFN sublayer"),
    ("prune", lambda t, m, g: ["--model", str(m), "--masks", huge_head_masks(t), "--output", str(t / "o")],
     "outputs inf or NaN"),
    ("prune", lambda t, m, g: ["--model", copy_model(t, m), "--masks", huge_masks(t), "--output", str(t / "copy"),
                               "--overwrite"], "would replace the input"),
    ("prune", lambda t, m, g: ["--model", copy_model(t, m, "sub/model"), "--masks", huge_masks(t), "--output",
                               str(t / "sub"), "--overwrite"], "would replace the input"),
    ("prune", lambda t, m, g: ["--model", str(m), "--masks", huge_masks(t), "--output", ".", "--overwrite"],
     "must name a new or replaceable file or directory"),
    ("prune", lambda t, m, g: ["--model", str(m), "--masks", huge_masks(t), "--output", a_file(t) + "/sub"],
     "is a file, not a directory"),
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--output", str(t / "o"), "--threads", "100000"],
     "argument --threads: 100000 is out of range"),
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--output", str(t / "o"), "--lr", "1e-300"],
     "argument --lr: 1e-300 is out of range"),
    ("export", lambda t, m, g: ["--onnx", "--model", str(m), "--output", str(t / "o"), "--keep-fused"],
     "--keep-fused goes with --optimize"),
    ("export", lambda t, m, g: ["--onnx", "--model", str(m), "--output", str(t / "o"), "--task", "foo"],
     "calibrate --quantize int8-static only"),
    ("compress", lambda t, m, g: ["--method", "post-training", "--teacher", str(m), "--task", "sst2", "--glue-dir",
                                  str(g), "--macs", "0.5", "--output", str(t / "o"), "--distill-precision", "bf16"],
     "--distill-precision goes with --distill-steps N"),
    ("compress", lambda t, m, g: ["--method", "cofi", "--teacher", str(m), "--task", "sst2", "--glue-dir", str(g),
                                  "--output", str(t / "o"), "--target-sparsity", "0.5", "--student", str(t / "nope")],
     "model directory not found"),
    ("compress", lambda t, m, g: ["--method", "cofi", "--teacher", str(m), "--task", "sst2", "--glue-dir", str(g),
                                  "--output", str(t / "o"), "--target-sparsity", "0.5", "--kernels", "triton"],
     "--kernels triton "),  # (on CUDA only, or for tileable head dims: this tiny model has neither)
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--output", str(t / "o"), "--epochs", "0"],
     "argument --epochs: 0 is out of range"),
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--output", str(t / "o"), "--lr", "inf"],
     "argument --lr: inf is out of range"),
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--output", str(t / "o"), "--batch-size", "-1"],
     "argument --batch-size: -1 is out of range"),
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--output", str(t / "o"), "--warmup-ratio",
                                  "1.5"], "argument --warmup-ratio: 1.5 is out of range"),
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--output", str(t / "o"),
                                  "--max-train-samples", "0"], "argument --max-train-samples: 0 is out of range"),
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--glue-dir", str(g), "--output", str(t / "o"),
                                  "--max-length", "100000"], "--max-length 100000 is longer than"),
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--glue-dir", str(g), "--output", str(t / "o"),
                                  "--device", "cuda"], "torch sees no CUDA GPU here"),
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--glue-dir", str(g), "--output", str(t / "o"),
                                  "--device", "tpu"], "unknown --device 'tpu'"),
    ("finetune", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--glue-dir", str(g), "--output", a_file(t)],
     "is a file"),
    ("eval", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--glue-dir", str(g), "--output", a_file(t, "m.json")],
     "already exists; pass --overwrite"),
    ("eval", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--batch-size", "0"],
     "argument --batch-size: 0 is out of range"),
    ("eval", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--glue-dir", str(g), "--device", "cuda"],
     "torch sees no CUDA GPU here"),
    ("eval", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--max-length", "1"],
     "argument --max-length: 1 is out of range"),
    ("eval", lambda t, m, g: ["--model", str(m), "--task", "sst2", "--glue-dir", str(g), "--max-length", "65"],
     "--max-length 65 is longer than"),
    ("export", lambda t, m, g: ["--onnx", "--model", str(m), "--output", str(t / "o"), "--opset", "99"],
     "argument --opset: 99 is out of range"),
    ("export", lambda t, m, g: ["--onnx", "--model", str(m), "--output", str(t / "o"), "--quantize", "int4"],
     "int4"),
    ("export", lambda t, m, g: ["--model", str(m), "--output", str(t / "o")], "name the format: --onnx"),
    ("compress", lambda t, m, g: ["--teacher", str(m), "--task", "sst2", "--output", str(t / "o"), "--macs", "nan"],
     "argument --macs: nan is out of range"),
    ("compress", lambda t, m, g: ["--teacher", str(m), "--task", "sst2", "--output", str(t / "o"), "--macs", "0.5",
                                  "--num-samples", "0"], "argument --num-samples: 0 is out of range"),
    ("compress", lambda t, m, g: ["--teacher", str(m), "--task", "sst2", "--glue-dir", str(g), "--output", str(t / "o"),
                                  "--latency", "0.5", "--lut-cache", str(t)], "is a directory; it names the JSON file"),
    ("compress", lambda t, m, g: ["--teacher", str(m), "--task", "sst2", "--output", str(t / "o"), "--latency", "0.5",
                                  "--latency-seq-len", "1"], "argument --latency-seq-len: 1 is out of range"),
    ("compress", lambda t, m, g: ["--teacher", str(m), "--task", "sst2", "--glue-dir", str(g), "--output", str(t / "o"),
                                  "--macs", "0.5", "--device", "cuda"], "torch sees no CUDA GPU here"),
    ("compress", lambda t, m, g: ["--method", "cofi", "--teacher", str(m), "--task", "sst2", "--output", str(t / "o"),
                                  "--target-sparsity", "0.5", "--max-steps", "0"], "argument --max-steps: 0 is out of range"),
    ("compress", lambda t, m, g: ["--method", "cofi", "--teacher", str(m), "--task", "sst2", "--glue-dir", str(g),
                                  "--output", str(t / "o"), "--target-sparsity", "0.5", "--resume"], "nothing to resume"),
    ("compress", lambda t, m, g: ["--method", "cofi", "--teacher", str(m), "--task", "sst2", "--glue-dir", str(g),
                                  "--output", str(t / "o"), "--target-sparsity", "0.5", "--kernels", "cuda"],
     "invalid choice: 'cuda'"),
]


@pytest.mark.parametrize("verb, make_args, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_with_nothing_written(verb, make_args, message, tiny_model_dir, sst2_glue_dir,
                                                           tmp_path, capfd):
    if "cuda" in str(make_args) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = make_args(tmp_path, tiny_model_dir, sst2_glue_dir)
    before = {p.name for p in tmp_path.iterdir()}
    capfd.readouterr()
    assert main([verb, *args]) == 2
    err = capfd.readouterr().err.strip().splitlines()   # fd-level: ORT's own log lines would show here too
    assert len(err) == 1, err
    assert err[0].startswith(f"prunekit {verb}: error:") and message in err[0], err[0]
    assert "Traceback" not in err[0]
    assert {p.name for p in tmp_path.iterdir()} == before                  # nothing written, no temp leftovers


def test_there_are_at_least_thirty_cases_across_all_verbs():
    assert len(CASES) >= 30 and {c[0] for c in CASES} == {"info", "prune", "finetune", "eval", "export", "compress"}

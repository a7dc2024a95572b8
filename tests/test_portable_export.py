"""The exported directory serves without prunekit, and OpenVINO runs the same model.onnx.

For each architecture (BERT, RoBERTa, DistilBERT, ELECTRA: tests/test_architectures.py's odd-shaped
HF models, given a tokenizer), a compact model with pruned heads, FFN units and hidden dims and a
layer without attention is exported by `prunekit export --onnx`; then, in a process that never imports
prunekit, transformers' AutoConfig / AutoTokenizer read the directory and the README's onnxruntime +
tokenizers snippet scores sentences, which must give PyTorch's logits. OpenVINO is held to the same
fp32 parity as ONNX Runtime. Tests that run ONNX Runtime, OpenVINO or a subprocess are marked slow.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.checkpoints import config_from_hf
from prunekit.cli import load_predictor, main
from prunekit.config import PrunekitBertConfig
from prunekit.errors import PrunekitError
from prunekit.export import export_onnx, open_classifier
from prunekit.export.portable import PRUNEKIT_KEY, exported_config, portable_config
from conftest import random_batch
from test_architectures import ARCHS, SHAPE, arch_masks, hf_model, roberta_tokenizer
from test_export import tiny, tiny_structures
from test_bench_latency import load_bench  # noqa: F401 (the fixture: bench/latency.py imported as its folder sees it)
from test_bench_scripts import script  # noqa: F401 (the fixture load_bench uses)

ROOT = Path(__file__).resolve().parents[1]
LABELS = {0: "negative", 1: "positive"}
CONFIG_CLASSES = {"bert": "BertConfig", "roberta": "RobertaConfig", "distilbert": "DistilBertConfig",
                  "electra": "ElectraConfig"}
TEXTS = ["a gripping , beautifully shot film that never lets go .", "it 's a dull , lifeless mess .", "fine ."]
HAS_OPENVINO = __import__("importlib.util").util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install 'prunekit[openvino]'; "
                                                             "the dev extra installs it)")
pytestmark = pytest.mark.filterwarnings("ignore:.*has no tokenizer files:UserWarning")


def tokenizer_for(arch, tok):
    return roberta_tokenizer(TEXTS * 20) if arch == "roberta" else tok


@pytest.fixture(scope="module", params=ARCHS)
def compact_dir(request, tok, tmp_path_factory):
    """(arch, teacher dir, compact dir): an HF classifier with labels and a tokenizer, pruned the way
    `prunekit compress` leaves it (compact model, tokenizer, masks.safetensors of the dense shape)."""
    arch = request.param
    tokenizer = tokenizer_for(arch, tok)
    teacher = tmp_path_factory.mktemp(f"{arch}-teacher")
    hf_model(arch, vocab=len(tokenizer), num_labels=2, id2label=LABELS,
             label2id={v: k for k, v in LABELS.items()}).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    model = prunekit.load_model(str(teacher))
    model.config.finetuning_task = "sst2"                        # as `prunekit finetune` records it
    masks = arch_masks(model)
    compact_path = tmp_path_factory.mktemp(f"{arch}-compact")
    prunekit.prune(model, masks).save_pretrained(compact_path)
    masks.save(compact_path / "masks.safetensors")
    return arch, teacher, compact_path


# ---------------------------------------------------------------------------------------------
# config.json: the base architecture's, nominal dense sizes, the real structure kept


def test_portable_config_is_the_base_architecture_with_dense_sizes_and_the_real_structure(compact_dir):
    arch, _, path = compact_dir
    compact = prunekit.load_model(str(path))
    cfg = compact.config
    assert cfg.hidden_size < SHAPE["d"] and cfg.num_heads[1] == 0 and len(set(cfg.ffn_dim)) > 1   # really compact
    portable = portable_config(cfg, source=path)
    assert portable["model_type"] == arch and portable["architectures"][0].lower() == f"{arch}forsequenceclassification"
    assert portable["id2label"] == {"0": "negative", "1": "positive"} and portable["label2id"] == {"negative": 0, "positive": 1}
    assert portable["finetuning_task"] == "sst2"

    # HF's own reader of these configs gives the dense teacher's shape and every architecture switch
    back = config_from_hf(portable, None)
    teacher = config_from_hf(json.loads((compact_dir[1] / "config.json").read_text()), None)
    assert (back.num_heads, back.ffn_dim, back.hidden_size) == ([SHAPE["H"]] * SHAPE["L"], [SHAPE["F"]] * SHAPE["L"], SHAPE["d"])
    switches = ("arch", "vocab_size", "max_position_embeddings", "type_vocab_size", "pad_token_id", "layer_norm_eps",
                "positions_from_padding", "embedding_size", "position_embedding_type", "pooler_activation",
                "pooler_input_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "num_labels", "id2label")
    assert {k: getattr(back, k) for k in switches} == {k: getattr(teacher, k) for k in switches}

    # nothing lost: the prunekit block rebuilds the compact config exactly
    kept = PrunekitBertConfig.from_dict(portable[PRUNEKIT_KEY]["config"])
    assert kept.to_dict() == cfg.to_dict()


def size_names(arch) -> tuple:
    """hidden width, head count, FFN width as each architecture's config names them."""
    return ("dim", "n_heads", "hidden_dim") if arch == "distilbert" else ("hidden_size", "num_attention_heads",
                                                                          "intermediate_size")


def test_dense_ffn_width_comes_from_the_masks_and_else_the_widest_layer(compact_dir, tmp_path):
    arch, _, path = compact_dir
    cfg = prunekit.load_model(str(path)).config
    ffn = size_names(arch)[2]
    assert portable_config(cfg, source=path)[ffn] == SHAPE["F"]
    assert portable_config(cfg, source=tmp_path)[ffn] == max(cfg.ffn_dim) < SHAPE["F"]   # no masks.safetensors there


def test_exported_config_reads_old_exports_and_names_a_broken_block(tmp_path):
    old = tiny()
    old.config.to_json_file(str(tmp_path / "config.json"), use_diff=False)       # an export from before this format
    assert exported_config(tmp_path).num_heads == old.config.num_heads
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", PRUNEKIT_KEY: [1, 2]}))
    with pytest.raises(PrunekitError, match="its 'prunekit' entry is not"):
        exported_config(tmp_path)


# ---------------------------------------------------------------------------------------------
# the exported directory in a process without prunekit


def readme_snippet() -> str:
    """The README's onnxruntime + tokenizers snippet, verbatim."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    found = [b for b in blocks if b.startswith("# serving without prunekit: onnxruntime + tokenizers")]
    assert len(found) == 1, "README lost its onnxruntime + tokenizers snippet"
    return found[0]


SERVE_CHECK = '''
import json, sys
import transformers
from transformers import AutoConfig, AutoTokenizer
stock = AutoConfig.from_pretrained(model_dir)
tokenizer_classes = type(AutoTokenizer.from_pretrained(model_dir)).__name__
result = {"class": type(stock).__name__, "model_type": stock.model_type, "architectures": stock.architectures,
          "num_labels": stock.num_labels, "config": stock.to_dict(), "tokenizer": tokenizer_classes,
          "logits": logits.tolist(), "labels": [config["id2label"][str(i)] for i in logits.argmax(-1)],
          "prunekit_imported": "prunekit" in sys.modules, "transformers": transformers.__version__}
print("RESULT " + json.dumps(result))
'''


def serve_without_prunekit(model_dir: Path, texts: list[str], workdir: Path) -> dict:
    """The README snippet (model_dir and sentences swapped in) plus AutoConfig / AutoTokenizer, run by
    a fresh interpreter from a directory outside the repository."""
    snippet = readme_snippet().replace('"runs/pt-sst2-0.5-onnx"', repr(str(model_dir)))
    snippet = re.sub(r"encode_batch\(\[.*?\]\)", f"encode_batch({texts!r})", snippet)
    script = workdir / "serve.py"
    script.write_text(snippet + SERVE_CHECK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script)], cwd=workdir, env={**env, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


@pytest.fixture(scope="module")
def exported(compact_dir, tmp_path_factory):
    """(arch, compact dir, ONNX dir written by the CLI, what the prunekit-free process saw)."""
    arch, _, path = compact_dir
    out = tmp_path_factory.mktemp(f"{arch}-export") / "onnx"
    assert main(["export", "--onnx", "--model", str(path), "--output", str(out)]) == 0
    return arch, path, out, serve_without_prunekit(out, TEXTS, tmp_path_factory.mktemp(f"{arch}-serve"))


@pytest.mark.slow
def test_exported_config_loads_in_stock_transformers_without_prunekit(exported):
    arch, path, out, seen = exported
    cfg = prunekit.load_model(str(path)).config
    assert seen["prunekit_imported"] is False
    assert seen["model_type"] == arch and seen["class"] == CONFIG_CLASSES[arch]
    assert seen["architectures"] == [CONFIG_CLASSES[arch].replace("Config", "ForSequenceClassification")]
    stock = seen["config"]
    assert stock["id2label"] == {"0": "negative", "1": "positive"} and stock["label2id"] == {"negative": 0, "positive": 1}
    assert seen["num_labels"] == 2 and stock["finetuning_task"] == "sst2"
    assert [stock[k] for k in size_names(arch)] == [SHAPE["d"], SHAPE["H"], SHAPE["F"]]   # the teacher's, nominal
    kept = stock[PRUNEKIT_KEY]["config"]                                                   # the real structure, kept
    assert (kept["num_heads"], kept["ffn_dim"], kept["hidden_size"]) == (cfg.num_heads, cfg.ffn_dim, cfg.hidden_size)
    # every file ORT serving needs: the graph, the config, the tokenizer
    files = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files


@pytest.mark.slow
def test_readme_onnxruntime_snippet_gives_pytorchs_logits_without_prunekit(exported):
    arch, path, out, seen = exported
    compact = prunekit.load_model(str(path))
    enc = compact.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = compact(**enc).logits
    assert (torch.tensor(seen["logits"]) - want).abs().max() < 1e-4
    assert seen["labels"] == [LABELS[i] for i in want.argmax(-1).tolist()]


@pytest.mark.slow
def test_prunekit_eval_reads_the_real_structure_back(exported):
    _, path, out, _ = exported
    compact = prunekit.load_model(str(path))
    predict, tokenizer, config = load_predictor(out)
    assert (config.num_heads, config.ffn_dim, config.hidden_size) == (compact.config.num_heads, compact.config.ffn_dim,
                                                                      compact.config.hidden_size)
    assert config.finetuning_task == "sst2" and config.id2label == LABELS and tokenizer is not None
    enc = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        assert (predict(enc) - compact(**enc).logits).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------
# OpenVINO: the same model.onnx, the same parity


@pytest.mark.slow
@needs_openvino
@pytest.mark.parametrize("structure", list(tiny_structures()))
def test_openvino_runs_the_export_within_fp32_parity(structure, tmp_path):
    masks = tiny_structures()[structure]
    model = tiny() if masks is None else prunekit.prune(tiny(), masks)
    report = export_onnx(model, tmp_path / "out", check_with=("openvino",))
    parity = report["parity"]["openvino"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["providers"][0].startswith("OpenVINO")
    assert "(f32)" in parity["providers"][0]                       # not the bf16 default of bf16-capable CPUs
    clf = open_classifier(tmp_path / "out", "openvino", threads=1)
    for seed, (b, s) in enumerate([(5, 11), (3, 30)]):              # shapes the export never saw
        batch = random_batch(batch=b, seq=s, seed=seed + 200)
        with torch.no_grad():
            want = model(**batch).logits
        assert (clf(batch) - want).abs().max() < 1e-4


@pytest.mark.slow
@needs_openvino
def test_openvino_reads_fused_and_int8_graphs_too(tmp_path):
    model = prunekit.prune(tiny(), tiny_structures()["all at once"])
    fused = export_onnx(model, tmp_path / "fused", optimize=True, keep_fused=True, check_with=("openvino",))
    assert fused["node_counts"]["final"].get("Attention") == 2 and fused["parity"]["openvino"]["max_abs_diff"] <= 1e-4
    int8 = export_onnx(model, tmp_path / "int8", quantize="int8", check_with=("openvino",))
    drift = int8["drift"]["openvino"]                              # int8 cannot meet fp32 parity: moved, not broken
    assert 0 < drift["max_abs_diff"] < 0.1 and drift["argmax_agreement"] >= 0.8


def test_openvino_missing_is_one_clear_error_and_nothing_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)            # import openvino -> ImportError
    with pytest.raises(PrunekitError, match=r"OpenVINO is not installed: pip install 'prunekit\[openvino\]'"):
        open_classifier(tmp_path, "openvino")
    with pytest.raises(PrunekitError, match="OpenVINO is not installed"):
        export_onnx(tiny(), tmp_path / "out", check_with=("openvino",))
    assert not (tmp_path / "out").exists()
    with pytest.raises(PrunekitError, match="runtime must be one of"):
        open_classifier(tmp_path, "tensorrt")
    with pytest.raises(PrunekitError, match="check_with takes"):
        export_onnx(tiny(), tmp_path / "out", check_with=("ort",))


@pytest.mark.slow
@needs_openvino
def test_bench_latency_times_openvino_beside_ort(tmp_path, load_bench):
    dense = tiny()
    dense.save_pretrained(tmp_path / "dense")
    prunekit.prune(dense, tiny_structures()["all at once"]).save_pretrained(tmp_path / "pruned")
    out = tmp_path / "res" / "lat"
    rc = load_bench().main(["--dense", str(tmp_path / "dense"), "--pruned", str(tmp_path / "pruned"), "--runtimes",
                            "ort", "openvino", "--batch", "2", "--seq", "8", "--budget", "0.05", "--min-rounds", "3",
                            "--warmup-calls", "1", "--warmup-seconds", "0", "--cache", str(tmp_path / "cache"),
                            "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.with_name("lat.json").read_text())
    assert doc["environment"]["openvino"] and {r["runtime"] for r in doc["rows"]} == {"ort", "openvino"}
    report = json.loads((tmp_path / "cache" / "pruned_pruned" / "openvino" / "export_report.json").read_text())
    assert report["parity"]["openvino"]["max_abs_diff"] <= 1e-4    # timed only after the same parity check

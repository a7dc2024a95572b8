"""A tiny end-to-end run of bench/latency.py: it must write a valid table, JSON and PNG."""
import json

import pytest
import torch

import prunekit
from conftest import tiny_model
from test_bench_scripts import script  # noqa: F401 (the fixture that imports a bench script)


@pytest.fixture
def load_bench(script):
    """bench/latency.py as `python bench/latency.py` sees its folder: bench/ first on sys.path."""
    return lambda: script("latency")


@pytest.mark.slow  # exports to ONNX and times ONNX Runtime
def test_tiny_bench_run_writes_table_json_and_png(tmp_path, capsys, load_bench):
    dense = tiny_model()
    dense.save_pretrained(tmp_path / "dense")
    compact = prunekit.prune(dense, prunekit.Masks(z_head=torch.tensor([[1., 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]]),
                                                   z_int=(torch.arange(36).view(3, 12) % 2).float()))
    compact.save_pretrained(tmp_path / "pt-tiny")
    (tmp_path / "pt-tiny" / "report.json").write_text(json.dumps({"main_metric": "accuracy", "metrics": {"accuracy": 0.8}}))
    (tmp_path / "dense" / "eval.json").write_text(json.dumps({"main_metric": "accuracy", "metrics": {"accuracy": 0.9}}))
    bench = load_bench()
    out = tmp_path / "res" / "lat"
    rc = bench.main(["--dense", str(tmp_path / "dense"), "--runs", str(tmp_path), "--runtimes", "torch", "ort",
                     "--batch", "1", "2", "--seq", "8", "--budget", "0.05", "--min-rounds", "3",
                     "--warmup-calls", "1", "--warmup-seconds", "0", "--cache", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.with_name("lat.json").read_text())
    assert {"torch", "onnxruntime", "cpu", "threads"} <= set(doc["environment"])
    assert set(doc["models"]) == {"dense:dense", "pruned:pt-tiny"}        # found under --runs by itself
    assert len(doc["rows"]) == 2 * 2 * 1 * 2                              # models x runtimes x seqs x batches
    for row in doc["rows"]:
        assert row["runs"] >= 3 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        if row["model"] == "dense:dense":
            assert row["speedup"] == 1.0 and row["macs_ratio"] == 1.0
        else:
            assert row["macs_ratio"] > 1.5
    md = out.with_name("lat.md").read_text()
    assert "| model | runtime | batch | seq | P50 ms |" in md and md in capsys.readouterr().out
    for png in ("lat-latency.png", "lat-pareto.png"):
        assert out.with_name(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_bad_input_exits_2(tmp_path, capsys, load_bench):
    bench = load_bench()
    assert bench.main(["--dense", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench/latency.py: error: ") and "model directory not found" in err and err.count("\n") == 1
    assert bench.main(["--runtimes", "tensorrt", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("bench/latency.py: error: unknown runtime(s) ['tensorrt']; choose from ")


def test_model_metric_reads_the_metric_of_the_model_that_was_written(tmp_path, load_bench):
    bench = load_bench()

    def metric_of(name, data):
        (tmp_path / name).mkdir()
        (tmp_path / name / ("metrics.json" if "best" in data else "report.json")).write_text(json.dumps(data))
        return bench.model_metric(tmp_path / name)["value"]

    # finetune writes the weights of its best evaluation: that is the model in the directory
    assert metric_of("teacher", {"task": "sst2", "best": {"accuracy": 0.89, "step": 1750},
                                 "final": {"accuracy": 0.88, "step": 2105}}) == 0.89
    assert metric_of("pt", {"main_metric": "accuracy", "dev_metrics": {"teacher": {"accuracy": 0.88},
                            "compact": {"accuracy": 0.85}, "distilled": {"accuracy": 0.87}}}) == 0.87
    assert metric_of("cofi", {"main_metric": "f1", "dev_metrics": {"teacher": {"f1": 0.85}, "pruned": {"f1": 0.80},
                              "finetuned": {"f1": 0.83}}}) == 0.83

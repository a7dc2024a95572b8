"""The statistics under bench/latency.py, checked on synthetic timings."""
import itertools
import types

import numpy as np
import pytest

from prunekit import benchmark
from prunekit.benchmark import Row, markdown_table, speedups, summarise, time_interleaved, warm_up


def test_summarise_percentiles_and_throughput():
    s = summarise([i / 1000 for i in range(1, 101)], batch_size=32)   # 1..100 ms
    assert s.p50_ms == pytest.approx(50.5) and s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5) and s.runs == 100
    assert s.throughput == pytest.approx(32 / 0.0505)


def test_interleaving_spreads_a_drifting_clock_evenly_over_models():
    # a clock that drifts: every call costs 1 ms more than the one before it, whoever runs
    ticks = itertools.count()
    state = {"t": 0.0}
    def clock():
        return state["t"]
    def make(name):
        def run():
            state["t"] += 0.001 * (1 + next(ticks))
        return run
    times = time_interleaved({"dense": make("dense"), "pruned": make("pruned")}, rounds=200, clock=clock)
    means = {k: np.mean(v) for k, v in times.items()}
    # without rotation the second model would always be 1 ms slower; with it they differ by < 1%
    assert abs(means["dense"] - means["pruned"]) / means["dense"] < 0.01
    assert len(times["dense"]) == len(times["pruned"]) == 200


def test_warm_up_respects_both_count_and_time(monkeypatch):
    # a fake clock that each call advances by 1/8 s (exact in binary), so the count is deterministic
    now = [0.0]
    monkeypatch.setattr(benchmark, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def call():
        now[0] += 0.125
    assert warm_up(call, min_calls=5, min_seconds=0.0) == 5    # the count alone decides
    assert warm_up(call, min_calls=1, min_seconds=0.5) == 4    # the time decides: 4 calls reach 0.5 s
    assert warm_up(call, min_calls=6, min_seconds=0.5) == 6    # both: the larger wins
    assert warm_up(call, min_calls=2, min_seconds=0.51) == 5   # 0.5 s is not yet 0.51 s


def test_speedup_and_markdown_table():
    dense, pruned = summarise([0.010] * 5, 1), summarise([0.004] * 5, 1)
    sp = speedups({"dense": dense, "pruned": pruned}, "dense")
    assert sp["pruned"] == pytest.approx(2.5) and sp["dense"] == pytest.approx(1.0)
    row = Row("pruned", "ort", 1, 128, pruned, speedup=sp["pruned"], macs_ratio=2.0)
    assert row.speedup_per_mac_reduction == pytest.approx(1.25)
    table = markdown_table([row])
    assert "| pruned | ort | 1 | 128 | 4.00 |" in table and "2.50×" in table and "| 1.25 |" in table


def test_time_interleaved_clocks_runners_that_return_outputs_and_trusts_only_float_self_timing():
    state = {"t": 0.0}
    def clock():
        return state["t"]
    def returns(value, cost):
        def run():
            state["t"] += cost
            return value
        return run
    times = time_interleaved({"logits": returns(np.array([[5.0, -3.0]]), 0.25),      # a model's output
                              "ort": returns([np.array([[7.0]])], 0.5),              # ORT's output list
                              "scalar": returns(np.float64(9.0), 0.125),             # a NumPy number
                              "cuda": returns(0.002, 1.0)}, rounds=4, clock=clock)   # CUDA events: own seconds
    assert times == {"logits": [0.25] * 4, "ort": [0.5] * 4, "scalar": [0.125] * 4, "cuda": [0.002] * 4}


@pytest.mark.slow  # exports two tiny ONNX graphs and times them in ONNX Runtime
def test_time_graphs_measures_milliseconds_not_the_outputs(tmp_path):
    import torch

    from conftest import tiny_model
    from prunekit.export import export_onnx
    from prunekit.export.optimize import time_graphs
    model = tiny_model()
    with torch.no_grad():  # large logits: a timing that read the outputs would be far off
        model.classifier.bias.fill_(1e4)
    export_onnx(model, tmp_path / "m")
    ms = time_graphs({"a": tmp_path / "m" / "model.onnx", "b": tmp_path / "m" / "model.onnx"}, model.config,
                     shape=(2, 8))
    assert all(0 < v < 1000 for v in ms.values()), ms

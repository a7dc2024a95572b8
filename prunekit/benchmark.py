"""Latency measurement the way deployers measure it: same inputs, same run, models interleaved.

The pieces bench/latency.py is built from, importable so that tests can check them on synthetic
timings: warm-up by count and by time, round-robin timing (the order rotates every round so that
machine drift and thermal effects fall on every model alike), percentiles and throughput, speed-up
against the dense teacher, an environment block, and Markdown output.
"""
import os
import platform
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Stats:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # sequences per second at the median latency
    runs: int


def summarise(seconds, batch_size: int) -> Stats:
    """Percentiles (linear interpolation) and throughput from a list of per-call latencies in seconds."""
    t = np.asarray(seconds, dtype=np.float64) * 1e3
    if t.size == 0:
        raise ValueError("no timings to summarise")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return Stats(float(p50), float(p90), float(p99), float(t.mean()), batch_size / (p50 / 1e3), int(t.size))


def warm_up(fn, min_calls: int = 3, min_seconds: float = 0.5) -> int:
    """Call fn until both min_calls calls and min_seconds have passed; returns the number of calls."""
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return calls


def time_interleaved(runners: dict, rounds: int, clock=time.perf_counter, progress=None) -> dict:
    """Time each runner once per round, rotating the order every round; returns name -> [seconds].

    A runner that times itself (CUDA events) returns its own seconds as a Python float; anything else
    it returns (None, logits, an ORT output list, a NumPy scalar) is ignored and the clock is used.
    """
    names = list(runners)
    times = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = clock()
            own = runners[name]()
            times[name].append(own if type(own) is float else clock() - start)
        if progress is not None:
            progress.update(1)
    return times


def rounds_for(per_round_seconds: float, budget_seconds: float, min_rounds: int, max_rounds: int) -> int:
    """How many timed rounds fit a time budget, never fewer than min_rounds nor more than max_rounds."""
    fit = int(budget_seconds / max(per_round_seconds, 1e-9))
    return max(min_rounds, min(max_rounds, fit))


def speedups(stats: dict, dense: str) -> dict:
    """name -> P50 latency of the dense model / P50 latency of this model (same run)."""
    return {name: stats[dense].p50_ms / s.p50_ms for name, s in stats.items()}


def environment(threads: int, device: str = "cpu") -> dict:
    """Library versions, CPU model, thread count and GPU name, for the JSON next to every result."""
    import onnxruntime
    import torch
    import transformers

    from .machine import cpu_name, load_average
    cpu = cpu_name()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads, "device": device, "gpu": gpu,
            "platform": platform.platform(), "load_average": load_average()}


@dataclass
class Row:
    model: str
    runtime: str
    batch: int
    seq: int
    stats: Stats
    speedup: float | None = None
    macs_ratio: float | None = None      # dense MACs / this model's MACs
    extra: dict = field(default_factory=dict)

    @property
    def speedup_per_mac_reduction(self):
        if self.speedup is None or not self.macs_ratio:
            return None
        return self.speedup / self.macs_ratio


def markdown_table(rows: list[Row]) -> str:
    head = ("| model | runtime | batch | seq | P50 ms | P90 ms | P99 ms | seq/s | speed-up | MAC reduction | "
            "speed-up / MAC reduction |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fmt = lambda v, f: "" if v is None else format(v, f)
    lines = [head]
    for r in rows:
        s = r.stats
        lines.append(f"| {r.model} | {r.runtime} | {r.batch} | {r.seq} | {s.p50_ms:.2f} | {s.p90_ms:.2f} | "
                     f"{s.p99_ms:.2f} | {s.throughput:.1f} | {fmt(r.speedup, '.2f')}{'×' if r.speedup else ''} | "
                     f"{fmt(r.macs_ratio, '.2f')}{'×' if r.macs_ratio else ''} | {fmt(r.speedup_per_mac_reduction, '.2f')} |")
    return "\n".join(lines)

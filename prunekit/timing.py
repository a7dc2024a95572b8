"""Timing: per-stage wall and CPU time (Stopwatch) and the median latency of a call (median_ms).
Benchmarks that interleave several models use prunekit.benchmark on top of these."""
import time
from contextlib import contextmanager

import numpy as np
import torch


class Stopwatch:
    """Wall time and process CPU time (all threads) per named stage. On a shared machine CPU time
    divided by the thread count is the steadier estimate of what the stage costs."""

    def __init__(self):
        self.seconds, self.cpu_seconds = {}, {}

    @contextmanager
    def __call__(self, name):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0, time.process_time() - c0)

    def add(self, name, seconds: float, cpu_seconds: float = 0.0):
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + cpu_seconds

    def total(self, names) -> tuple[float, float]:
        """(wall, CPU) seconds summed over the named stages."""
        return (sum(self.seconds.get(n, 0.0) for n in names), sum(self.cpu_seconds.get(n, 0.0) for n in names))


def median_ms(fn, warmup: int, repeats: int, device: str = "cpu") -> float:
    """Median milliseconds of fn() over `repeats` runs after `warmup` runs (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if str(device).startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))

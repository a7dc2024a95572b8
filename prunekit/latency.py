"""Block-latency lookup tables for a latency budget (Kwon et al. 2022, section 3.3), and the
piecewise-linear model both methods read them through (LatencyFit, estimate_latency).

A table holds, for one runtime, device and input shape (batch, sequence length), the measured latency
of one attention sublayer with n heads (n = 1 .. H) and of one FFN sublayer with n neurons
(n = 1 .. F): projections, softmax/GELU, residual add and LayerNorm, built from prunekit's own
Attention and FeedForward modules, so they are the blocks a compact model runs. FFN widths are timed
on a grid (every F/48 neurons plus the ends) and linearly interpolated in between: timing all 1536
widths of MiniLM would take minutes and the curve is smooth. Each entry is the median of `repeats`
timed runs after `warmup` runs.

Tables are cached in one JSON file, keyed by runtime, device, thread count, block shape and input
shape, so a second pruning run for the same deployment reuses them. The machine's load average
before and after is recorded with each table: on a shared machine a table is only as good as the
quiet it was measured in (delete its entry from the cache to measure it again).
Runtimes: "ort" (the default: each block exported to ONNX with static shapes and timed in an ONNX
Runtime session, CPU provider, or CUDA with device="cuda"), the runtime prunekit deploys on; or
"torch" (PyTorch eager; CUDA events on a GPU).
"""
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import PrunekitBertConfig
from .errors import PrunekitError
from .io import write_json
from .machine import device_name, load_average
from .model import Attention, FeedForward
from .timing import median_ms

DEFAULT_CACHE = Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit")) / "latency_lut.json"


def table_key(config, batch: int, seq_len: int, runtime: str = "torch", device: str = "cpu", threads=None) -> str:
    threads = (threads or torch.get_num_threads()) if device == "cpu" else 0
    return (f"{runtime}|{device_name(device)}|threads={threads}|d={config.hidden_size},dh={config.head_dim},"
            f"H={config.num_heads[0]},F={config.ffn_dim[0]}|batch={batch},seq={seq_len}")


def ffn_grid(F: int, points: int = 48) -> list[int]:
    step = max(1, F // points)
    return sorted(set([1, F] + list(range(step, F, step))))


class _Block(torch.nn.Module):
    """One sublayer with positional inputs, for export: attention (x, bias) or FFN (x)."""

    def __init__(self, sublayer):
        super().__init__()
        self.sublayer = sublayer

    def forward(self, *inputs):
        return self.sublayer(*inputs)


def _runner(block, inputs: tuple, runtime: str, device: str, threads: int):
    """A zero-argument callable that runs the block once on the given runtime."""
    if runtime == "torch":
        return lambda: block(*inputs)
    from prunekit.export.runtime import new_session  # onnxruntime: heavy, and only for the ort runtime
    names = ["x", "bias"][:len(inputs)]
    buf = io.BytesIO()
    wrapper = _Block(block).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(t.cpu() for t in inputs), buf, dynamo=False, opset_version=17,
                          input_names=names, output_names=["y"])
    session = new_session(buf.getvalue(), device, threads if device == "cpu" else None)
    feeds = {n: t.cpu().numpy() for n, t in zip(names, inputs)}
    return lambda: session.run(None, feeds)


@torch.no_grad()
def measure_tables(config, batch: int, seq_len: int, device: str = "cpu", warmup: int = 2, repeats: int = 5,
                   progress: bool = True, runtime: str = "ort", threads: int | None = None) -> dict:
    """Measure {'mha': [ms for n = 1..H], 'ffn': [ms for n = 1..F]} for blocks shaped like config's.
    threads: CPU threads of the runtime (default: torch's current setting)."""
    threads = threads or torch.get_num_threads()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(config, batch, seq_len, device, warmup, repeats, progress, runtime, threads)
    finally:
        torch.set_num_threads(saved)


def _measure(config, batch, seq_len, device, warmup, repeats, progress, runtime, threads):
    load = load_average()
    H, F, d = config.num_heads[0], config.ffn_dim[0], config.hidden_size
    block_cfg = PrunekitBertConfig(hidden_size=d, head_dim=config.head_dim, num_heads=[H], ffn_dim=[F],
                                   layer_norm_eps=config.layer_norm_eps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, seq_len, d, generator=g).to(device)
    bias = torch.zeros(batch, 1, 1, seq_len, device=device)
    clock = device if runtime == "torch" else "cpu"  # ORT's session.run returns when the work is done
    mha = []
    grid = ffn_grid(F)
    bar = tqdm(total=H + len(grid), desc=f"latency table b{batch} s{seq_len}", disable=not progress, leave=False)
    for n in range(1, H + 1):
        block = Attention(block_cfg, n).to(device).eval()
        mha.append(median_ms(_runner(block, (x, bias), runtime, device, threads), warmup, repeats, clock))
        bar.update()
    ffn_at = []
    for n in grid:
        block = FeedForward(block_cfg, n).to(device).eval()
        ffn_at.append(median_ms(_runner(block, (x,), runtime, device, threads), warmup, repeats, clock))
        bar.update()
    bar.close()
    ffn = np.interp(np.arange(1, F + 1), grid, ffn_at).tolist()
    return {"mha": mha, "ffn": ffn, "ffn_grid": grid, "ffn_measured": ffn_at, "unit": "ms",
            "warmup": warmup, "repeats": repeats, "runtime": runtime, "device": device, "threads": threads,
            "load_average_before": load, "load_average_after": load_average()}


RUNTIMES = ("ort", "torch")


def load_or_measure(config, batch: int, seq_len: int, cache_path=None, device: str = "cpu", runtime: str = "ort",
                    progress: bool = True, threads: int | None = None) -> tuple[dict, bool]:
    """The table for this runtime/device/shape from the cache, or measured and added to it.
    Returns (table, came_from_cache)."""
    if runtime not in RUNTIMES:
        raise PrunekitError(f"unknown latency runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    path = Path(cache_path) if cache_path is not None else DEFAULT_CACHE
    key = table_key(config, batch, seq_len, runtime, device, threads)
    cache = _read_cache(path)
    if key in cache:
        return cache[key], True
    table = measure_tables(config, batch, seq_len, device, progress=progress, runtime=runtime, threads=threads)
    table["key"] = key
    cache = _read_cache(path)  # re-read: another run may have added tables meanwhile
    cache[key] = table
    write_json(path, cache)
    return table, False


def _read_cache(path: Path) -> dict:
    if path.is_dir():
        raise PrunekitError(f"latency table cache {path} is a directory; --lut-cache names a JSON file")
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        # never overwrite a file we cannot read: it may be something else given by mistake
        raise PrunekitError(f"latency table cache {path} is not a readable JSON file ({type(e).__name__})") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "mha" in v and "ffn" in v for v in data.values()):
        raise PrunekitError(f"{path} is not a prunekit latency table cache")
    return data


@dataclass
class LatencyFit:
    """latency(n) = 0 for n = 0, c for 1 <= n <= T, c + slope * (n - T) for n > T."""
    c: float
    T: int
    slope: float

    def __call__(self, n):
        n = torch.as_tensor(n, dtype=torch.float64)
        return torch.where(n <= 0, torch.zeros_like(n), self.c + self.slope * (n - self.T).clamp(min=0))

    def as_dict(self):
        return {"c": self.c, "T": self.T, "slope": self.slope}


def fit_piecewise_linear(lut) -> LatencyFit:
    """Least-squares fit of LatencyFit to lut[n-1] = latency with n units, n = 1 .. N.

    For each threshold T: c = mean of the first T entries; the slope of the rest is fitted through
    (T, c) and clipped at 0. The T with the lowest total squared error wins (the first T is always
    taken, so the fit is never empty, where the reference's could be).
    """
    y = torch.as_tensor(lut, dtype=torch.float64).flatten()
    if len(y) == 0 or not torch.isfinite(y).all():
        raise PrunekitError("latency table is empty or has non-finite entries")
    best = None
    for T in range(1, len(y) + 1):
        c = float(y[:T].mean())
        err = float(((y[:T] - c) ** 2).sum())
        slope = 0.0
        if T < len(y):
            x = torch.arange(1, len(y) - T + 1, dtype=torch.float64)
            r = y[T:] - c
            slope = max(0.0, float((x * r).sum() / (x * x).sum()))
            err += float(((r - slope * x) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, LatencyFit(c, T, slope))
    return best[1]


def estimate_latency(head_mask, neuron_mask, mha_lut, ffn_lut) -> float:
    """Sum over layers of the measured table entries (lut[n-1]; 0 for an absent sublayer)."""
    total = 0.0
    for n in head_mask.sum(1).long().tolist():
        total += mha_lut[n - 1] if n > 0 else 0.0
    for n in neuron_mask.sum(1).long().tolist():
        total += ffn_lut[n - 1] if n > 0 else 0.0
    return float(total)


def latency_kept(table: dict, head_mask, neuron_mask) -> float:
    """The share of the dense model's block latency that (L, H) head and (L, F) unit masks keep, by the
    tables (a unit counts when its mask is non-zero)."""
    L, H = head_mask.shape
    F = neuron_mask.shape[1]
    dense = estimate_latency(torch.ones(L, H), torch.ones(L, F), table["mha"], table["ffn"])
    return estimate_latency(head_mask != 0, neuron_mask != 0, table["mha"], table["ffn"]) / dense

"""What the benchmark scripts share beyond prunekit.benchmark: how they parse their arguments, the
latency grid, and the figures.

  parser, replot         argparse with --out and --replot, one-line errors and range-checked numbers
                         (THREADS, COUNT, ...; prunekit.options.number for others); the --replot of a
                         script that writes a table alone
  TimingPlan, run_grid   dense and compact models timed in the same run over runtimes x batch x seq
                         (bench/latency.py; cofi.py and posttrain.py time their models with it too)
  cofi_trainer           a CoFi pruning trainer as `prunekit compress --method cofi` builds it, whose
                         train_step cofi.py and train_speed.py time against a fine-tuning step
  latency_figures,       the PNGs of latency.py and stacked.py: one colour per model, one marker per
  pareto_figure          runtime or variant, legends outside the axes

The scripts run as `python bench/NAME.py` from the repository root; Python puts the script's own
folder, bench/, first on sys.path, which is how they import this module (`from common import ...`).
"""
import copy
import math
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from prunekit import options
from prunekit.benchmark import (Row, rewrite_table, rounds_for, save_figure, speedups, suffixed, summarise,
                                time_interleaved, warm_up)
from prunekit.budget import Budget
from prunekit.cofi import CoFiConfig, ExpectedCost, Gates
from prunekit.cofi.config import train_args
from prunekit.cofi.trainer import CoFiTrainer
from prunekit.cost import macs
from prunekit.data import Task, lengths
from prunekit.distill import LayerDistiller, distilled_layers
from prunekit.export import export_onnx
from prunekit.export.runtime import open_classifier
from prunekit.options import OneLineParser, number  # the CLI's one-line usage errors and range checks

# ---------------------------------------------------------------------------------------------
# Parsing

THREADS = number(int, options.THREADS)
COUNT = number(int, options.COUNT)          # rounds, steps, repeats, sizes
SECONDS = number(float, options.NON_NEGATIVE)  # finite and >= 0
FRACTION = number(float, options.FRACTION)  # budgets and MACs kept: strictly between 0 and 1


def parser(prog: str, doc: str, out: str, files: str = "OUT.md, OUT.json") -> OneLineParser:
    """The parser of a bench script, with the options every one has: --out (the prefix of what it
    writes, default `out`) and --replot. Its usage errors are one line ("bench/x.py: error: ...")."""
    p = OneLineParser(prog=prog, description=doc.strip().splitlines()[0])
    p.add_argument("--out", default=out, help=f"output prefix: {files} (default {out})")
    p.add_argument("--replot", metavar="JSON", help="only write the table again (and figures, where the script "
                   "draws them) from an earlier run's OUT.json, beside it: nothing is measured")
    return p


def replot(path, markdown, needs) -> int:
    """--replot of a script whose output is OUT.md alone: it again from OUT.json; prints what it wrote."""
    print("\n".join(rewrite_table(path, markdown, needs)))
    return 0


def command_line(script: str, argv) -> str:
    """What a result records as its command: `python bench/NAME.py ARGS` (run from the repository root)."""
    return shlex.join(["python", script, *argv])


# ---------------------------------------------------------------------------------------------
# The latency grid

CPU_RUNTIMES = ("torch", "ort", "ort-opt", "ort-int8")  # ort-opt-int8 on request
CUDA_RUNTIMES = ("torch", "torch-fp16", "ort-cuda", "ort-cuda-fp16")
EXPORT_VARIANTS = {  # runtime -> export_onnx keyword arguments
    "ort": {}, "ort-opt": {"optimize": True, "keep_fused": True}, "ort-int8": {"quantize": "int8"},
    "ort-opt-int8": {"optimize": True, "keep_fused": True, "quantize": "int8"},
    "ort-shipped": {"optimize": True},  # what `prunekit export --optimize` ships: fused or plain, the faster
    "ort-cuda": {"optimize": True, "keep_fused": True, "device": "cuda"},
    "ort-cuda-fp16": {"optimize": True, "keep_fused": True, "fp16": True, "device": "cuda"},
    "openvino": {"check_with": ("openvino",)},  # the plain graph in OpenVINO, parity checked there too
}
RUNTIMES = tuple(dict.fromkeys(CPU_RUNTIMES + CUDA_RUNTIMES + tuple(EXPORT_VARIANTS)))


@dataclass
class TimingPlan:
    """How each (batch, seq, runtime) cell of the grid is timed."""
    budget: float = 6.0          # seconds of timed rounds per cell, all models together
    min_rounds: int = 10         # percentiles need a sample even where one round outlasts the budget
    max_rounds: int = 200        # small shapes would otherwise spend the whole budget on rounds
    warmup_calls: int = 3        # the first calls allocate buffers and pick kernels
    warmup_seconds: float = 0.5  # and the clocks of the CPU settle


def synthetic_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> dict:
    """Full-length rows of random tokens, identical for every model (latency does not read them)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def export_cached(model, slug: str, runtime: str, cache: Path, source_mtime: float) -> Path:
    """The model's export for `runtime` under cache/slug/runtime, made again when the weights are newer."""
    out = cache / slug / runtime
    report = out / "export_report.json"
    if not (report.exists() and report.stat().st_mtime >= source_mtime):
        export_onnx(model, out, overwrite=True, source=slug, **EXPORT_VARIANTS[runtime])
    return out


def make_runner(runtime: str, model, onnx_dir: Path | None, batch: dict, device: str, threads: int):
    """A zero-argument callable running one forward; CUDA runners time themselves with events."""
    if runtime.startswith("torch"):
        return torch_runner(model.half() if runtime == "torch-fp16" else model, batch, device)
    # spinning off: sessions are interleaved, and the idle threads of the session that just ran would
    # otherwise busy-wait on the cores the next one needs
    clf = open_classifier(onnx_dir, "openvino" if runtime == "openvino" else "ort",
                          device="cuda" if "cuda" in runtime else "cpu", threads=threads, spinning=False)
    feeds = clf.feeds(batch)
    return lambda: (clf.run(feeds), None)[1]


def torch_runner(model, batch: dict, device: str):
    m = model.to(device)
    feeds = {k: v.to(device) for k, v in batch.items()}
    if device == "cuda":
        def run():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.inference_mode():
                start.record()
                m(**feeds)
                end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        return run

    def run():
        with torch.inference_mode():
            m(**feeds)
    return run


def export_all(models: dict, runtimes, cache: Path) -> dict:
    """(model name, runtime) -> export directory, for every runtime that runs an ONNX export."""
    onnx_dirs = {}
    for name, (model, path) in models.items():
        mtime = max((f.stat().st_mtime for f in path.glob("*.safetensors")), default=0) if path else 0
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        for rt in runtimes:
            if rt in EXPORT_VARIANTS:
                print(f"exporting {name} for {rt} ...", file=sys.stderr)
                onnx_dirs[name, rt] = export_cached(model, slug, rt, cache, mtime)
    return onnx_dirs


def time_cell(runners: dict, plan: TimingPlan) -> dict:
    """name -> seconds per call: all runners warmed up, then timed interleaved for the plan's budget."""
    start = time.perf_counter()
    for run in runners.values():
        warm_up(run, plan.warmup_calls, plan.warmup_seconds)
    if plan.warmup_seconds == 0:  # the warm-up was calls only: it times a round
        per_round = (time.perf_counter() - start) / max(1, plan.warmup_calls)
    else:  # estimate one round from a single timed pass
        per_round = sum(once(run) for run in runners.values())
    return time_interleaved(runners, rounds_for(per_round, plan.budget, plan.min_rounds, plan.max_rounds))


def once(run) -> float:
    start = time.perf_counter()
    own = run()
    return time.perf_counter() - start if own is None else own


def run_grid(models: dict, runtimes, batches, seqs, device: str, threads: int, cache: Path,
             plan: TimingPlan = TimingPlan()) -> list[Row]:
    """models: name -> (model, its directory or None); the first is the dense teacher. Every cell
    (batch, seq, runtime) times all models in one interleaved run on the same synthetic batch."""
    dense_name = next(iter(models))
    onnx_dirs = export_all(models, runtimes, cache)
    vocab = models[dense_name][0].config.vocab_size
    rows = []
    for b, s, rt in tqdm([(b, s, rt) for b in batches for s in seqs for rt in runtimes], desc="latency grid",
                         file=sys.stderr):
        batch = synthetic_batch(vocab, b, s)
        runners = {name: make_runner(rt, model, onnx_dirs.get((name, rt)), batch, device, threads)
                   for name, (model, _) in models.items()}
        stats = {name: summarise(t, b) for name, t in time_cell(runners, plan).items()}
        sp = speedups(stats, dense_name)
        dense_macs = macs(models[dense_name][0].config, seq_len=s)["total"]
        rows += [Row(name, rt, b, s, stats[name], speedup=sp[name],
                     macs_ratio=dense_macs / macs(model.config, seq_len=s)["total"])
                 for name, (model, _) in models.items()]
    return rows


# ---------------------------------------------------------------------------------------------
# Training steps


def cofi_trainer(teacher, task: Task, config: CoFiConfig, budget: Budget, steps: int = 1000,
                 warmup_steps: int = 100) -> CoFiTrainer:
    """The pruning trainer of a copy of `teacher` (the gates, expected size, layer distillation and
    schedule of `config`, down to `budget`), as prunekit.cofi builds it, for timing its train_step:
    nothing is written."""
    cfg = teacher.config
    return CoFiTrainer(copy.deepcopy(teacher).requires_grad_(True).train(), teacher, task,
                       train_args(config, None, steps, math.ceil(len(task.train) / config.batch_size), config.lr),
                       config, LayerDistiller(cfg.hidden_size, distilled_layers(config, cfg.num_layers)),
                       Gates(cfg, config.gates, config.droprate_init),
                       ExpectedCost(cfg, budget.kind, lengths(task.train)), budget.sparsity, warmup_steps=warmup_steps)


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib is loaded by the functions that draw: a script that only measures skips it)

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
HEADLINE = [(32, 128), (1, 128)]  # the shapes the speed-up bars are drawn at, when measured


def colours(models) -> dict:
    """One colour per model, the same in every figure of a run."""
    import matplotlib
    cmap = matplotlib.colormaps["tab10" if len(models) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(models)}


def two_legends(ax, colour: dict, marker: dict, second: str, model_line="-", extra=(), pad=0.0,
                always_second=False) -> list:
    """Models (colours) and runtimes or variants (markers) as two legends outside the axes, so that
    nothing hides data; returns them, for savefig's bbox_extra_artists."""
    from matplotlib.lines import Line2D
    models = [Line2D([], [], color=c, marker="o", linestyle=model_line, label=m) for m, c in colour.items()]
    kinds = [Line2D([], [], color="grey", marker=mk, linestyle="", label=k) for k, mk in marker.items()] + list(extra)
    first = ax.legend(handles=models, title="model", fontsize=7, title_fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.02, 1.0), borderaxespad=pad)
    ax.add_artist(first)
    legends = [first]
    if len(kinds) > 1 or always_second:
        legends.append(ax.legend(handles=kinds, title=second, fontsize=7, title_fontsize=8, loc="lower left",
                                 bbox_to_anchor=(1.02, 0.0), borderaxespad=pad))
    return legends


def latency_figures(rows: list[Row], metrics: dict, out: Path) -> list[str]:
    """OUT-latency.png (P50 vs batch), OUT-speedup.png (bars at the headline shapes, with each model's
    MAC reduction as the mark it could reach) and, with dev metrics, OUT-pareto.png."""
    import matplotlib
    matplotlib.use("Agg")
    colour = colours(list(dict.fromkeys(r.model for r in rows)))
    marker = {rt: MARKERS[i % len(MARKERS)] for i, rt in enumerate(dict.fromkeys(r.runtime for r in rows))}
    written = [latency_vs_batch(rows, colour, marker, out)]
    if (bars := speedup_bars(rows, colour, out)) is not None:
        written.append(bars)
    if len([m for m in metrics.values() if m]) >= 2:
        written.append(latency_pareto(rows, metrics, colour, marker, out))
    return written


def save(fig, out: Path, suffix: str, extra=(), dpi=110) -> str:
    return save_figure(fig, suffixed(out, suffix), dpi=dpi, bbox_inches="tight", bbox_extra_artists=list(extra))


def latency_vs_batch(rows, colour, marker, out) -> str:
    import matplotlib.pyplot as plt
    seqs = sorted({r.seq for r in rows})
    fig, axes = plt.subplots(1, len(seqs), figsize=(5 * len(seqs), 4.2), squeeze=False)
    for ax, s in zip(axes[0], seqs):
        for m, rt in dict.fromkeys((r.model, r.runtime) for r in rows if r.seq == s):
            pts = sorted((r.batch, r.stats.p50_ms) for r in rows if r.seq == s and (r.model, r.runtime) == (m, rt))
            ax.plot(*zip(*pts), marker=marker[rt], color=colour[m], alpha=0.85, linewidth=1)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="P50 latency (ms)", title=f"sequence length {s}")
        ax.grid(True, which="both", alpha=0.3)
    return save(fig, out, "-latency.png", two_legends(axes[0][-1], colour, marker, "runtime"))


def speedup_bars(rows, colour, out) -> str | None:
    import matplotlib.pyplot as plt
    shapes = [sh for sh in HEADLINE if any((r.batch, r.seq) == sh for r in rows)]
    runtimes = list(dict.fromkeys(r.runtime for r in rows))
    pruned = [m for m in colour if m != rows[0].model]
    if not shapes or not pruned:
        return None
    fig, axes = plt.subplots(len(shapes), len(runtimes), figsize=(3.2 * len(runtimes) + 1, 3.2 * len(shapes)),
                             squeeze=False, sharey=True)
    xs = range(len(pruned))
    for i, (b, s) in enumerate(shapes):
        for j, rt in enumerate(runtimes):
            ax = axes[i][j]
            cell = {r.model: r for r in rows if (r.batch, r.seq, r.runtime) == (b, s, rt)}
            ax.bar(xs, [cell[m].speedup if m in cell else 0 for m in pruned], color=[colour[m] for m in pruned])
            ax.scatter(xs, [cell[m].macs_ratio if m in cell else float("nan") for m in pruned], marker="_", s=400,
                       color="black", zorder=3, label="MAC reduction")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_xticks(list(xs), [str(k + 1) for k in xs], fontsize=8)
            ax.set_title(f"{rt}, batch {b} / seq {s}", fontsize=9)
            if j == 0:
                ax.set_ylabel("speed-up vs dense")
    axes[0][0].legend(fontsize=7, loc="upper left")
    names = [f"{k + 1} = {m}" for k, m in enumerate(pruned)]
    per_line = max(1, len(runtimes) + 1)  # the caption's lines fit the figure's width (no clipping)
    caption = "\n".join("; ".join(names[i:i + per_line]) for i in range(0, len(names), per_line))
    fig.tight_layout()
    text = fig.text(0.5, 0.0, "models: " + caption, ha="center", va="top", fontsize=7)
    return save(fig, out, "-speedup.png", [text])


def latency_pareto(rows, metrics, colour, marker, out) -> str:
    """Dev metric vs speed-up at the largest shape. The metrics were measured in fp32, so only fp32
    runtimes are placed, and only models scored on the dense model's task (one axis, one metric)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    big = max(rows, key=lambda r: (r.batch, r.seq))
    task = (metrics.get(rows[0].model) or {}).get("task")
    same = lambda m: m and (task is None or m.get("task") in (None, task))
    fp32 = lambda runtime: "int8" not in runtime and "fp16" not in runtime
    for r in rows:
        if (r.batch, r.seq) == (big.batch, big.seq) and fp32(r.runtime) and same(metrics.get(r.model)):
            ax.scatter(r.speedup, metrics[r.model]["value"], color=colour[r.model], marker=marker[r.runtime],
                       s=45, edgecolor="black", linewidth=0.4)
    ax.set(xlabel=f"speed-up vs dense (batch {big.batch}, seq {big.seq})", ylabel=f"dev {task or 'metric'}",
           title="accuracy vs speed-up")
    ax.grid(True, alpha=0.3)
    legends = two_legends(ax, {m: c for m, c in colour.items() if same(metrics.get(m))},
                          {rt: mk for rt, mk in marker.items() if fp32(rt)}, "runtime")
    return save(fig, out, "-pareto.png", legends)


def pareto_figure(points: list[dict], variants, x_label: str, y_label: str, title: str, path: Path,
                  hollow_label: str = "OpenVINO") -> str:
    """points: {model, variant, x, y}; one colour per model, one marker per variant, and the Pareto
    front (the points no other point beats on both x and y) as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    colour = colours(list(dict.fromkeys(p["model"] for p in points)))
    marker = {v: mk for v, mk in zip(variants, "osD^v")}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for p in points:  # hollow: a point of a second runtime (OpenVINO running the same file)
        c = colour[p["model"]]
        ax.scatter(p["x"], p["y"], color=c, marker=marker[p["variant"]], s=50, zorder=3,
                   **({"facecolor": "none", "edgecolor": c, "linewidth": 1.2} if p.get("hollow")
                      else {"edgecolor": "black", "linewidth": 0.4}))
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (-p["x"], -p["y"])):  # fastest first: kept if better than all faster
        if p["y"] > best:
            best = p["y"]
            front.append((p["x"], best))
    ax.plot(*zip(*sorted(front)), color="grey", linestyle="--", linewidth=1, zorder=2, label="Pareto front")
    ax.set(xlabel=x_label, ylabel=y_label, title=title)
    ax.grid(True, alpha=0.3)
    legends = two_legends(ax, colour, marker, "variant", model_line="", pad=0.5, always_second=True,
                          extra=[Line2D([], [], color="grey", linestyle="--", label="Pareto front")] +
                          [Line2D([], [], color="grey", marker="o", markerfacecolor="none", linestyle="",
                                  label=hollow_label)] * any(p.get("hollow") for p in points))
    return save_figure(fig, path, dpi=120, bbox_inches="tight", bbox_extra_artists=legends)

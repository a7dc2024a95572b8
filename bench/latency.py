"""Dense teacher vs pruned models, measured the way deployers measure: same run, same inputs.

    python bench/latency.py                                   # packaged MiniLM vs runs/*/ compact models
    python bench/latency.py --dense runs/teacher-sst2 --pruned runs/pt-sst2-0.5 runs/pt-sst2-0.4
    python bench/latency.py --full-grid --runtimes ort-opt    # batch {1,8,32,128} x seq {32,128,384}
    python bench/latency.py --device cuda                     # torch fp32/fp16 (CUDA events), ORT CUDA + IO binding
    python bench/latency.py --runtimes ort ort-shipped        # plain graph vs what `export --optimize` ships
    python bench/latency.py --runtimes ort openvino           # the same model.onnx in ORT and in OpenVINO

For every (batch, seq) cell and every runtime, the dense model and the pruned ones are warmed up
(by count and by time), then timed round-robin with the order rotating every round, so that drift
on the machine falls on all of them alike. Speed-up is P50(dense) / P50(model) within that cell.
ONNX exports are made with prunekit.export (validated against PyTorch) and cached under --cache.
Output: a Markdown table (stdout and OUT.md), OUT.json with an environment block, and OUT-latency.png
(P50 latency vs batch) plus OUT-pareto.png (dev metric vs speed-up) when models carry metrics.
"""
import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import prunekit
from prunekit.benchmark import (Row, environment, markdown_table, rounds_for, speedups, summarise,
                                time_interleaved, warm_up)
from prunekit.cost import macs
from prunekit.errors import PrunekitError
from prunekit.export.runtime import open_classifier, runtime_versions

CPU_RUNTIMES = ("torch", "ort", "ort-opt", "ort-int8")  # ort-opt-int8 on request: rarely faster than ort-int8 on CPU
CUDA_RUNTIMES = ("torch", "torch-fp16", "ort-cuda", "ort-cuda-fp16")
EXPORT_VARIANTS = {  # runtime -> export_onnx keyword arguments
    "ort": {}, "ort-opt": {"optimize": True, "keep_fused": True}, "ort-int8": {"quantize": "int8"},
    "ort-opt-int8": {"optimize": True, "keep_fused": True, "quantize": "int8"},
    "ort-shipped": {"optimize": True},  # what `prunekit export --optimize` ships: fused or plain, the faster
    "ort-cuda": {"optimize": True, "keep_fused": True, "device": "cuda"},
    "ort-cuda-fp16": {"optimize": True, "keep_fused": True, "fp16": True, "device": "cuda"},
    "openvino": {"check_with": ("openvino",)},  # the plain graph in OpenVINO, parity checked there too
}


MAX_FOUND = 6  # compact models timed when none are named (each adds a column of work to every cell)


def find_pruned(root: Path) -> list[Path]:
    """Compact models left by earlier `prunekit compress` runs (directories with a prunekit config)."""
    found = []
    for cfg in sorted(root.glob("*/config.json")):
        try:
            config = json.loads(cfg.read_text())
            if config.get("model_type") == "prunekit-bert" and (cfg.parent / "model.safetensors").exists():
                if len(set(config["num_heads"])) > 1 or "pt-" in cfg.parent.name or "pruned" in cfg.parent.name:
                    found.append(cfg.parent)
        except (OSError, json.JSONDecodeError):
            continue
    return found


def magnitude_pruned(dense, macs_kept: float = 0.5):
    """A stand-in compact model when no compress run exists: in every layer keep the heads and FFN
    units with the largest weight norms, evenly, at about `macs_kept` of the MACs. It is labelled as
    such in every output: its accuracy means nothing, only its shape and speed do."""
    cfg = dense.config
    H, Fw, L = cfg.num_heads[0], cfg.ffn_dim[0], cfg.num_layers
    z_head, z_int = torch.zeros(L, H), torch.zeros(L, Fw)
    for l, layer in enumerate(dense.bert.layers):
        head_norm = layer.attention.output.weight.view(cfg.hidden_size, H, cfg.head_dim).norm(dim=(0, 2))
        unit_norm = layer.ffn.down.weight.norm(dim=0)
        z_head[l, head_norm.topk(max(1, round(H * macs_kept))).indices] = 1
        z_int[l, unit_norm.topk(max(1, round(Fw * macs_kept))).indices] = 1
    return prunekit.prune(dense, prunekit.Masks(z_head=z_head, z_int=z_int))


def model_metric(path: Path | None) -> dict | None:
    """The dev metric a model directory carries, if any: eval.json (prunekit eval --output), the
    written model's entry in report.json (prunekit compress: post-training's compact or distilled
    model, CoFi's fine-tuned one) or the best entry of metrics.json (prunekit finetune writes the weights
    of its best evaluation; a teacher evaluated only at the end has best = final)."""
    if path is None:
        return None
    for name in ("eval.json", "report.json", "metrics.json"):
        f = path / name
        if not f.is_file():
            continue
        data = json.loads(f.read_text())
        dev = data.get("dev_metrics") or {}  # compress: the model written (after distillation / fine-tuning)
        metrics = (data.get("metrics") or next((dev[k] for k in ("distilled", "finetuned", "compact", "pruned") if k in dev),
                                               None) or data.get("best"))
        if isinstance(metrics, dict):
            key = data.get("main_metric") or next((k for k in metrics if k not in ("step", "epoch", "train_loss")), None)
            if isinstance(metrics.get(key), (int, float)):
                return {"name": key, "value": float(metrics[key]), "task": data.get("task"), "file": str(f)}
    return None


def export_cached(model, slug: str, runtime: str, cache: Path, source_mtime: float) -> Path:
    from prunekit.export import export_onnx
    out = cache / slug / runtime
    report = out / "export_report.json"
    if not (report.exists() and report.stat().st_mtime >= source_mtime):
        export_onnx(model, out, overwrite=True, source=slug, **EXPORT_VARIANTS[runtime])
    return out


def make_runner(runtime: str, model, onnx_dir: Path | None, batch: dict, device: str, threads: int):
    """A zero-argument callable running one forward; CUDA runners time themselves with events."""
    if runtime.startswith("torch"):
        m = model.to(device)
        if runtime == "torch-fp16":
            m = m.half()
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
    # spinning off: sessions are interleaved, and the idle threads of the session that just ran would
    # otherwise busy-wait on the cores the next one needs
    clf = open_classifier(onnx_dir, "openvino" if runtime == "openvino" else "ort",
                          device="cuda" if "cuda" in runtime else "cpu", threads=threads, spinning=False)
    feeds = clf.feeds(batch)
    return lambda: (clf.run(feeds), None)[1]


def synthetic_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> dict:
    """Full-length rows of random tokens, identical for every model (latency does not read them)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def run_grid(models: dict, runtimes, batches, seqs, device, threads, cache, budget, min_rounds, max_rounds,
             warmup_calls, warmup_seconds) -> list[Row]:
    """models: name -> (model, dir or None). The first one is the dense teacher."""
    dense_name = next(iter(models))
    onnx_dirs = {}
    for name, (model, path) in models.items():
        mtime = max((f.stat().st_mtime for f in path.glob("*.safetensors")), default=0) if path else 0
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        for rt in runtimes:
            if rt in EXPORT_VARIANTS:
                print(f"exporting {name} for {rt} ...", file=sys.stderr)
                onnx_dirs[name, rt] = export_cached(model, slug, rt, cache, mtime)
    rows = []
    cells = [(b, s, rt) for b in batches for s in seqs for rt in runtimes]
    for b, s, rt in tqdm(cells, desc="latency grid", file=sys.stderr):
        vocab = models[dense_name][0].config.vocab_size
        batch = synthetic_batch(vocab, b, s)
        runners = {name: make_runner(rt, model, onnx_dirs.get((name, rt)), batch, device, threads)
                   for name, (model, _) in models.items()}
        start = time.perf_counter()
        for run in runners.values():
            warm_up(run, warmup_calls, warmup_seconds)
        per_round = (time.perf_counter() - start) / max(1, warmup_calls) if warmup_seconds == 0 else None
        if per_round is None:  # estimate one round from a single timed pass
            per_round = sum(_once(run) for run in runners.values())
        times = time_interleaved(runners, rounds_for(per_round, budget, min_rounds, max_rounds))
        stats = {name: summarise(t, b) for name, t in times.items()}
        sp = speedups(stats, dense_name)
        dense_macs = macs(models[dense_name][0].config, seq_len=s)["total"]
        for name, (model, _) in models.items():
            rows.append(Row(name, rt, b, s, stats[name], speedup=sp[name],
                            macs_ratio=dense_macs / macs(model.config, seq_len=s)["total"]))
    return rows


def _once(run) -> float:
    start = time.perf_counter()
    own = run()
    return time.perf_counter() - start if own is None else own


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
HEADLINE = [(32, 128), (1, 128)]  # the shapes the speed-up bars are drawn at, when measured


def styles(rows: list[Row]):
    """One colour per model (the same in every figure) and one marker per runtime."""
    import matplotlib
    models = list(dict.fromkeys(r.model for r in rows))
    runtimes = list(dict.fromkeys(r.runtime for r in rows))
    cmap = matplotlib.colormaps["tab10" if len(models) <= 10 else "tab20"]
    return ({m: cmap(i % cmap.N) for i, m in enumerate(models)},
            {rt: MARKERS[i % len(MARKERS)] for i, rt in enumerate(runtimes)})


def two_legends(fig, ax, colour, marker):
    """Models (colours) and runtimes (markers) as two legends outside the axes, so nothing hides data."""
    from matplotlib.lines import Line2D
    models = [Line2D([], [], color=c, marker="o", linestyle="-", label=m) for m, c in colour.items()]
    runtimes = [Line2D([], [], color="grey", marker=mk, linestyle="", label=rt) for rt, mk in marker.items()]
    first = ax.legend(handles=models, title="model", fontsize=7, title_fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.add_artist(first)
    legends = [first]
    if len(runtimes) > 1:
        legends.append(ax.legend(handles=runtimes, title="runtime", fontsize=7, title_fontsize=8, loc="lower left",
                                 bbox_to_anchor=(1.02, 0.0), borderaxespad=0))
    return legends


def plot(rows: list[Row], metrics: dict, out: Path) -> list[str]:
    """<out>-latency.png (P50 vs batch), <out>-speedup.png (bars at the headline shapes, with each
    model's MAC reduction as the mark it could reach) and, with dev metrics, <out>-pareto.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    colour, marker = styles(rows)
    save = lambda fig, suffix, extra=(): (fig.savefig(out.with_name(out.name + suffix), dpi=110, bbox_inches="tight",
                                                      bbox_extra_artists=list(extra)),
                                          plt.close(fig), written.append(str(out.with_name(out.name + suffix))))

    seqs = sorted({r.seq for r in rows})
    fig, axes = plt.subplots(1, len(seqs), figsize=(5 * len(seqs), 4.2), squeeze=False)
    for ax, s in zip(axes[0], seqs):
        for m, rt in dict.fromkeys((r.model, r.runtime) for r in rows if r.seq == s):
            pts = sorted((r.batch, r.stats.p50_ms) for r in rows if r.seq == s and (r.model, r.runtime) == (m, rt))
            ax.plot(*zip(*pts), marker=marker[rt], color=colour[m], alpha=0.85, linewidth=1)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="P50 latency (ms)", title=f"sequence length {s}")
        ax.grid(True, which="both", alpha=0.3)
    save(fig, "-latency.png", two_legends(fig, axes[0][-1], colour, marker))

    shapes = [sh for sh in HEADLINE if any((r.batch, r.seq) == sh for r in rows)]
    runtimes = list(dict.fromkeys(r.runtime for r in rows))
    dense = rows[0].model
    pruned = [m for m in colour if m != dense]
    if shapes and pruned:
        fig, axes = plt.subplots(len(shapes), len(runtimes), figsize=(3.2 * len(runtimes) + 1, 3.2 * len(shapes)),
                                 squeeze=False, sharey=True)
        for i, (b, s) in enumerate(shapes):
            for j, rt in enumerate(runtimes):
                ax = axes[i][j]
                cell = {r.model: r for r in rows if (r.batch, r.seq, r.runtime) == (b, s, rt)}
                xs = range(len(pruned))
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
        save(fig, "-speedup.png", [text])

    if len([m for m in metrics.values() if m]) >= 2:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        big = max(rows, key=lambda r: (r.batch, r.seq))
        # the metrics were measured in fp32, so only fp32 runtimes are placed, and only models scored on
        # the dense model's task (one axis, one metric)
        task = (metrics.get(dense) or {}).get("task")
        same = lambda m: m and (task is None or m.get("task") in (None, task))
        for r in rows:
            if (r.batch, r.seq) == (big.batch, big.seq) and "int8" not in r.runtime and "fp16" not in r.runtime \
                    and same(metrics.get(r.model)):
                ax.scatter(r.speedup, metrics[r.model]["value"], color=colour[r.model], marker=marker[r.runtime],
                           s=45, edgecolor="black", linewidth=0.4)
        ax.set(xlabel=f"speed-up vs dense (batch {big.batch}, seq {big.seq})", ylabel=f"dev {task or 'metric'}",
               title="accuracy vs speed-up")
        ax.grid(True, alpha=0.3)
        legends = two_legends(fig, ax, {m: c for m, c in colour.items() if same(metrics.get(m))},
                              {rt: mk for rt, mk in marker.items() if "int8" not in rt and "fp16" not in rt})
        save(fig, "-pareto.png", legends)
    return written


def replot(json_path: Path) -> list[str]:
    """The figures again from a results JSON (no timing)."""
    from prunekit.benchmark import Stats
    doc = json.loads(json_path.read_text())
    rows = [Row(r["model"], r["runtime"], r["batch"], r["seq"],
                Stats(r["p50_ms"], r["p90_ms"], r["p99_ms"], r["mean_ms"], r["throughput"], r["runs"]),
                speedup=r["speedup"], macs_ratio=r["macs_ratio"]) for r in doc["rows"]]
    metrics = {name: m.get("metric") for name, m in doc["models"].items()}
    out = json_path.with_suffix("")
    pngs = plot(rows, metrics, out)
    doc["plots"] = pngs
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    return pngs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dense", default="minilm", help="dense teacher: 'minilm' (default) or a model directory")
    p.add_argument("--pruned", nargs="*", help="compact model directories (default: runs/*/ compress outputs)")
    p.add_argument("--runs", default="runs", help="where to look for compact models when --pruned is not given")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--runtimes", nargs="+", help=f"CPU: {' '.join(CPU_RUNTIMES)}; CUDA: {' '.join(CUDA_RUNTIMES)}; on request: ort-opt-int8, "
                   "ort-shipped (export --optimize's choice: the fused graph only where it was faster), "
                   "openvino (the plain graph in OpenVINO, pip install 'prunekit[openvino]')")
    p.add_argument("--batch", nargs="+", type=int, help="batch sizes (default 1 32; full grid 1 8 32 128)")
    p.add_argument("--seq", nargs="+", type=int, help="sequence lengths (default 32 128; full grid 32 128 384)")
    p.add_argument("--full-grid", action="store_true", help="batch {1,8,32,128} x seq {32,128,384} (default on CUDA)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="intra-op threads (fixed, recorded)")
    p.add_argument("--budget", type=float, default=6.0, help="seconds of timed rounds per cell (default 6)")
    p.add_argument("--min-rounds", type=int, default=10)
    p.add_argument("--max-rounds", type=int, default=200)
    p.add_argument("--warmup-calls", type=int, default=3)
    p.add_argument("--warmup-seconds", type=float, default=0.5)
    p.add_argument("--cache", default="runs/bench-cache", help="where ONNX exports are cached")
    p.add_argument("--out", default="bench/results/latency", help="output prefix: OUT.md, OUT.json, OUT-*.png")
    p.add_argument("--replot", metavar="JSON", help="only redraw the figures of an earlier run's OUT.json")
    args = p.parse_args(argv)
    try:
        if args.replot:
            if not Path(args.replot).is_file():
                raise PrunekitError(f"no results file {args.replot}")
            print("\n".join(replot(Path(args.replot))))
            return 0
        return run(args)
    except PrunekitError as e:
        print(f"bench/latency.py: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    full = args.full_grid or args.device == "cuda"
    batches = args.batch or ([1, 8, 32, 128] if full else [1, 32])
    seqs = args.seq or ([32, 128, 384] if full else [32, 128])
    runtimes = args.runtimes or list(CUDA_RUNTIMES if args.device == "cuda" else CPU_RUNTIMES)
    known = CUDA_RUNTIMES + CPU_RUNTIMES + ("ort-opt-int8", "ort-shipped", "openvino")
    if bad := [r for r in runtimes if r not in known]:
        raise PrunekitError(f"unknown runtime(s) {bad}; choose from {' '.join(dict.fromkeys(known))}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PrunekitError("--device cuda but torch sees no CUDA device")
    if any(b < 1 for b in batches) or any(s < 1 for s in seqs):
        raise PrunekitError("batch sizes and sequence lengths must be >= 1")

    torch.manual_seed(0)  # the packaged MiniLM has no classifier: make the fresh one reproducible
    dense = prunekit.load_model(args.dense, num_labels=None if args.dense != "minilm" else 2)
    if max(seqs) > dense.config.max_position_embeddings:
        raise PrunekitError(f"sequence length {max(seqs)} exceeds the model's {dense.config.max_position_embeddings} positions")
    dense_name = "dense:" + Path(args.dense).name
    models = {dense_name: (dense, Path(args.dense) if Path(args.dense).is_dir() else None)}
    notes = []
    if args.pruned:
        pruned_dirs = [Path(d) for d in args.pruned]
    else:
        pruned_dirs = find_pruned(Path(args.runs))
        if len(pruned_dirs) > MAX_FOUND:  # newest first: the runs a user just made
            pruned_dirs = sorted(pruned_dirs, key=lambda d: (d / "model.safetensors").stat().st_mtime)[-MAX_FOUND:]
            notes.append(f"More than {MAX_FOUND} compact models under {args.runs}/: the {MAX_FOUND} newest are timed; "
                         "name others with --pruned.")
        print("compact models: " + (" ".join(str(d) for d in pruned_dirs) or "none found"), file=sys.stderr)
    for d in pruned_dirs:
        models["pruned:" + d.name] = (prunekit.load_model(d), d)
    if len(models) == 1:
        name = "magnitude-50%-stand-in"
        models[name] = (magnitude_pruned(dense), None)
        notes.append(f"No compact model was given or found under {args.runs}/; '{name}' was built by this script "
                     "(weight-magnitude selection at 50% of MACs, untrained): its speed is real, its accuracy is not.")
    cache = Path(args.cache)
    rows = run_grid(models, runtimes, batches, seqs, args.device, args.threads, cache, args.budget,
                    args.min_rounds, args.max_rounds, args.warmup_calls, args.warmup_seconds)

    metrics = {name: model_metric(path) for name, (_, path) in models.items()}
    env = environment(args.threads, args.device)
    env.update(runtime_versions(runtimes))
    table = markdown_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/latency.py " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("latency.py") else None
    header = [f"# Latency: dense teacher vs pruned ({args.device}, {args.threads} threads)", "",
              f"Command: `{command or 'python bench/latency.py ' + ' '.join(map(str, vars(args).values()))}`",
              f"Machine: {env['cpu']}, {env['cpu_count']} cores; torch {env['torch']}, onnxruntime {env['onnxruntime']}"
              + (f"; GPU {env['gpu']}" if env["gpu"] else ""), ""]
    header += [f"Note: {n}" for n in notes] + ([""] if notes else [])
    for name, m in metrics.items():
        if m:
            header.append(f"- {name}: dev {m['name']} {m['value']:.4f} ({m['file']})")
    md = "\n".join(header + ["", table, ""])
    print(md)
    pngs = plot(rows, metrics, out)
    doc = {"command": command, "environment": env, "notes": notes, "models": {
        name: {"dir": str(path) if path else None, "num_heads": model.config.num_heads, "ffn_dim": model.config.ffn_dim,
               "hidden_size": model.config.hidden_size, "params_encoder": prunekit.param_counts(model.config)["encoder"],
               "metric": metrics[name]} for name, (model, path) in models.items()},
        "rows": [{"model": r.model, "runtime": r.runtime, "batch": r.batch, "seq": r.seq, **r.stats.__dict__,
                  "speedup": r.speedup, "macs_ratio": r.macs_ratio,
                  "speedup_per_mac_reduction": r.speedup_per_mac_reduction} for r in rows],
        "plots": pngs}
    tmp = out.with_name(out.name + ".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out.with_name(out.name + ".json"))
    tmp = out.with_name(out.name + ".md.tmp")
    tmp.write_text(md)
    os.replace(tmp, out.with_name(out.name + ".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pruning stacked with int8: dense and pruned models, each in fp32, dynamic int8 and static int8,
scored on the full dev set through ONNX Runtime and timed in ORT-CPU at b1/s128 and b32/s128.

    python bench/stacked.py --task sst2 --model teacher=runs/teacher-sst2 \
        --model post-training=runs/pt-sst2-macs0.5-d0 --model cofi=runs/cofi-sst2-macs0.5
    # the first --model is the dense fp32 reference of every speed-up; writes bench/results/stacked.{md,json}
    python bench/stacked.py ... --runtimes ort openvino   # each variant in ORT and in OpenVINO (the same model.onnx)

Each variant is what `prunekit export --onnx --optimize [--quantize int8 | int8-static --task T]`
ships (the fused graph kept only where it is faster, export_report.json says which); static int8
calibrates on 256 training examples. All sessions of a shape are timed round-robin with the order
rotating each round (bench/latency.py's method, intra-op spinning off), P50 reported. With several
--runtimes every variant is scored and timed in each; the reference is the dense fp32 model in the first.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prunekit  # noqa: E402
from export_int8_quality import logits_of, score  # noqa: E402 (bench/, the script's own folder)
from gluedir import add_glue_dir_option, require_glue_dir  # noqa: E402
from latency import synthetic_batch  # noqa: E402
from prunekit.benchmark import environment, summarise, time_interleaved, warm_up  # noqa: E402
from prunekit.cli import calibration_feeds  # noqa: E402
from prunekit.cost import macs  # noqa: E402
from prunekit.data import load_task  # noqa: E402
from prunekit.export import export_onnx  # noqa: E402
from prunekit.export.runtime import RUNTIMES, open_classifier, runtime_versions  # noqa: E402
from prunekit.metrics import main_metric  # noqa: E402
from prunekit.training import trained_labels  # noqa: E402

VARIANTS = {"fp32": {}, "int8 dynamic": {"quantize": "int8"}, "int8 static": {"quantize": "int8-static"}}
SHAPES = ((1, 128), (32, 128))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="LABEL=DIR (repeatable; the first is the dense one)")
    p.add_argument("--task", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=["ort"], help="ort and/or openvino")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds per shape (b1 gets 4x as many)")
    p.add_argument("--cache", default=str(ROOT / "runs" / "stacked"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "stacked"))
    add_glue_dir_option(p)
    args = p.parse_args()
    glue_dir = require_glue_dir(args.glue_dir, [args.task], "bench/stacked.py")
    if bad := [m for m in args.model if "=" not in m]:
        p.error(f"--model takes LABEL=DIR, not {bad[0]!r}")
    models = dict(m.split("=", 1) for m in args.model)
    if len(models) != len(args.model):
        p.error("each --model needs its own label")
    dense_config = prunekit.load_model(next(iter(models.values()))).config
    rows, sessions = [], {}
    for label, path in models.items():
        model = prunekit.load_model(path)
        task = load_task(args.task, model.tokenizer, glue_dir=glue_dir, with_train=False,
                         labels=trained_labels(model.config))
        labels = [e["label"] for e in task.dev]
        kept = macs(model.config, seq_len=128)["total"] / macs(dense_config, seq_len=128)["total"]
        for variant, kwargs in VARIANTS.items():
            out = Path(args.cache) / label / variant.replace(" ", "-")
            calib = (calibration_feeds(model, path, args.task, glue_dir, 256)
                     if kwargs.get("quantize") == "int8-static" else None)
            start = time.perf_counter()
            report = export_onnx(model, out, optimize=True, overwrite=True, source=path, calibration=calib,
                                 check_with=tuple(r for r in args.runtimes if r != "ort"), **kwargs)
            export_s = time.perf_counter() - start
            for rt in args.runtimes:
                metric = score(task, logits_of(open_classifier(out, rt, threads=args.threads), task.dev), labels)
                rows.append({"model": label, "dir": path, "variant": variant, "runtime": rt, "macs_kept": round(kept, 3),
                             "graph_kept": report.get("fusion", {}).get("timing", {}).get("kept"),
                             "export_s": round(export_s, 1), **metric})
                sessions[label, variant, rt] = out
                print(rows[-1], file=sys.stderr, flush=True)
    dense = (next(iter(models)), "fp32", args.runtimes[0])
    vocab = dense_config.vocab_size
    for b, s in SHAPES:
        batch = synthetic_batch(vocab, b, s)
        runners = {}
        for key, out in sessions.items():
            clf = open_classifier(out, key[2], threads=args.threads, spinning=False)
            feeds = clf.feeds(batch)
            runners[key] = lambda c=clf, f=feeds: c.run(f)
        for run in runners.values():
            warm_up(run, 3, 0.5)
        times = time_interleaved(runners, args.rounds * (4 if b == 1 else 1))
        p50 = {k: summarise(t, b).p50_ms for k, t in times.items()}
        for r in rows:
            key = (r["model"], r["variant"], r["runtime"])
            r[f"p50_ms_b{b}_s{s}"] = round(p50[key], 2)
            r[f"speedup_b{b}_s{s}"] = round(p50[dense] / p50[key], 2)
    env = environment(args.threads)
    env.update(runtime_versions(args.runtimes))
    Path(args.out).with_suffix(".json").write_text(json.dumps({"command": "python " + " ".join(sys.argv),
                                                               "environment": env, "rows": rows}, indent=1))
    metric_name = main_metric(args.task)
    base = rows[0][metric_name]
    lines = ["# Pruning stacked with int8 (ORT CPU)", "",
             f"`python {' '.join(sys.argv)}`; {env['cpu']}, {args.threads} threads, onnxruntime {env['onnxruntime']}; "
             f"load average after: {env['load_average']}. Dev {metric_name} of the full dev set through the row's runtime "
             "(ORT unless named); P50 latency "
             "over interleaved rounds; speed-up against the dense fp32 model in the same run.", "",
             f"| model | MACs kept | variant | dev {metric_name} | Δ vs dense fp32 | P50 b1/s128 | speed-up | "
             "P50 b32/s128 | speed-up |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        variant = r["variant"] + ("" if r["runtime"] == "ort" else f", {r['runtime']}")
        lines.append(f"| {r['model']} | {r['macs_kept']:.0%} | {variant} | {100 * r[metric_name]:.2f} | "
                     f"{100 * (r[metric_name] - base):+.2f} | {r['p50_ms_b1_s128']:.1f} ms | {r['speedup_b1_s128']:.2f}× | "
                     f"{r['p50_ms_b32_s128']:.1f} ms | {r['speedup_b32_s128']:.2f}× |")
    lines += ["", f"![accuracy vs speed-up]({Path(args.out).name}-pareto.png)"]
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, metric_name, Path(f"{args.out}-pareto.png"))
    print("\n".join(lines))


def plot(rows: list, metric: str, path: Path):
    """Dev metric (through ORT) against the b32/s128 speed-up: one colour per model, one marker per
    variant, legends outside the axes, the Pareto front as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    models = list(dict.fromkeys(r["model"] for r in rows))
    colour = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    marker = {v: mk for v, mk in zip(VARIANTS, "osD")}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for r in rows:
        ov = r.get("runtime") == "openvino"  # hollow: the same file in OpenVINO
        ax.scatter(r["speedup_b32_s128"], 100 * r[metric], color=colour[r["model"]], marker=marker[r["variant"]],
                   s=50, edgecolor=colour[r["model"]] if ov else "black", facecolor="none" if ov else None,
                   linewidth=1.2 if ov else 0.4, zorder=3)
    front, best = [], -math.inf
    for r in sorted(rows, key=lambda r: (-r["speedup_b32_s128"], -r[metric])):  # fastest first: kept if more accurate than all faster
        if 100 * r[metric] > best:
            best = 100 * r[metric]
            front.append((r["speedup_b32_s128"], best))
    ax.plot(*zip(*sorted(front)), color="grey", linestyle="--", linewidth=1, zorder=2, label="Pareto front")
    ax.set(xlabel="speed-up vs dense fp32, ORT CPU, batch 32 / seq 128", ylabel=f"dev {metric}",
           title="accuracy vs speed-up: pruning x int8")
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=colour[m], marker="o", linestyle="", label=m) for m in models]
    first = ax.legend(handles=handles, title="model", fontsize=7, title_fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.02, 1.0))
    ax.add_artist(first)
    handles = [Line2D([], [], color="grey", marker=mk, linestyle="", label=v) for v, mk in marker.items()]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="Pareto front"))
    if any(r.get("runtime") == "openvino" for r in rows):
        handles.append(Line2D([], [], color="grey", marker="o", markerfacecolor="none", linestyle="", label="OpenVINO"))
    second = ax.legend(handles=handles, title="variant", fontsize=7, title_fontsize=8, loc="lower left",
                       bbox_to_anchor=(1.02, 0.0))
    fig.savefig(path, dpi=120, bbox_inches="tight", bbox_extra_artists=[first, second])
    plt.close(fig)


if __name__ == "__main__":
    main()

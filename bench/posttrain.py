"""Post-training pruning benchmark: MiniLM teachers on SST-2, MRPC and RTE.

    GLUE_DIR=../shared/data/glue python bench/posttrain.py    # everything below, resumable
    python bench/posttrain.py --tasks mrpc --macs 0.5 --no-latency --no-speed --glue-dir ../shared/data/glue

For each task and each MAC budget (40/50/60% kept) and for the latency mode (50% of the teacher's
block latency, tables timed in ONNX Runtime on this CPU at batch 32, seq 128), it runs
`prunekit.posttrain.pipeline.run` (the code behind `prunekit compress --method post-training`) and
records the dev metric of the teacher and after search, rearrangement and tuning, the pruning wall
time per stage (Fisher + search + rearrange + tune; evaluation excluded), the process CPU time and
the machine's load average, because the machine is shared. Compact models stay in
runs/pt-<task>-<budget> (a finished one is reused, not recomputed). With --speed, the dense teacher
and every compact model are exported to ONNX and timed interleaved in ORT-CPU at batch 32, seq 128
(bench/latency.py's run_grid). With --ablations, 50% MACs is also run with the variants in
ABLATIONS (seeds 1 and 2, random Fisher batches, bf16 Fisher, the dense model as the tuning target, more
samples), and the 50% MACs drop is summarised as mean and spread over seeds 0-2.
Output: OUT.md and OUT.json (default bench/results/posttrain); paths in them are relative to the
repository root. The GLUE data: --glue-dir or $GLUE_DIR (the script stops with one line without it).
"""
import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gluedir import add_glue_dir_option, require_glue_dir  # noqa: E402 (bench/, the script's own folder)
from prunekit.benchmark import environment  # noqa: E402
from prunekit.posttrain.pipeline import Constraint, PostTrainConfig, run  # noqa: E402

TARGET_DROP = {"sst2": 1.0, "mrpc": 1.5, "rte": 2.0}  # points, at 50% MACs (issue 4)
ABLATIONS = [  # (run suffix, label, compress() options), each at 50% MACs
    ("seed1", "seed 1", {"seed": 1}),
    ("seed2", "seed 2", {"seed": 2}),
    ("random", "random Fisher batches", {"fisher_by_length": False}),
    ("bf16", "bf16 Fisher", {"fisher_precision": "bf16"}),
    ("denseteacher", "dense model as the tuning target", {"tune_teacher": "dense"}),
    ("samples8192", "8192 samples (MRPC, RTE: the whole training set)", {"num_samples": 8192}),
]
SEEDS = ("", "seed 1", "seed 2")  # the variants whose drops are averaged: seed 0 is the main run


def budgets(args):
    out = [(f"{m:g}", Constraint("macs", m)) for m in args.macs]
    if not args.no_latency:
        out += [(f"lat{v:g}", Constraint("latency", v, latency_batch=32, latency_seq_len=128, latency_threads=2,
                                          lut_cache=str(ROOT / "runs" / "latency_lut.json")))
                for v in args.latency]
    return out


def run_one(task, tag, constraint, glue_dir, options=None, suffix=""):
    out = ROOT / "runs" / f"pt-{task}-{tag}{suffix}"
    if (out / "report.json").is_file():
        print(f"reusing {out}", file=sys.stderr)
        report = json.loads((out / "report.json").read_text())
    else:
        load = os.getloadavg()
        report = run(str(ROOT / "runs" / f"teacher-{task}"), task, str(out), constraint,
                     PostTrainConfig(**(options or {})), data={"glue_dir": glue_dir}, overwrite=True)
        report["load_average_before"], report["load_average_after"] = load, os.getloadavg()
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return {**report, "teacher": f"runs/teacher-{task}"}  # relative to the repository root, as "output" is


def timing(tasks, glue_dir, threads, repeats):
    """Pruning wall time alone (no evaluation) at 50% MACs with `threads` threads, `repeats` times per
    task and Fisher precision (the default fp32, and bf16); the best run is the one least disturbed by
    other jobs. Nothing is kept but the reports."""
    import tempfile
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = []
    try:
        for task, precision, i in ((t, p, i) for t in tasks for p in ("fp32", "bf16") for i in range(repeats)):
            with tempfile.TemporaryDirectory() as tmp:
                load = os.getloadavg()
                r = run(str(ROOT / "runs" / f"teacher-{task}"), task, str(Path(tmp) / "pt"), Constraint("macs", 0.5),
                        PostTrainConfig(evaluate=False, progress=False, fisher_precision=precision),
                        data={"glue_dir": glue_dir})
            out.append({"task": task, "repeat": i, "threads": threads, "seconds": r["seconds"],
                        "cpu_seconds": r["cpu_seconds"], "load_average_before": load,
                        "load_average_after": os.getloadavg(), "num_samples": r["num_samples"],
                        "fisher_precision": r["fisher_precision"], "tune_precision": r["tune_precision"]})
            print(f"timing {task} {precision} #{i}: {r['seconds']['pruning']:.1f} s", file=sys.stderr)
    finally:
        torch.set_num_threads(saved)
    return out


def speed(results, threads):
    spec = importlib.util.spec_from_file_location("bench_latency", ROOT / "bench" / "latency.py")
    lat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lat)
    import prunekit
    rows = []
    for task in sorted({r["task"] for r in results}):
        teacher = ROOT / "runs" / f"teacher-{task}"
        models = {f"teacher-{task}": (prunekit.load_model(str(teacher)), teacher)}
        for r in results:
            if r["task"] == task:
                path = ROOT / r["output"]
                models[path.name] = (prunekit.load_model(str(path)), path)
        rows += lat.run_grid(models, ["ort"], [32], [128], "cpu", threads, ROOT / "runs" / "bench-cache",
                             budget=8.0, min_rounds=10, max_rounds=60, warmup_calls=3, warmup_seconds=1.0)
    return rows


def markdown(results, rows, env, command, timings=()):
    lines = ["# Post-training pruning (Kwon et al. 2022) on MiniLM teachers", "",
             f"Command: `{command}`  ", f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, "
             f"onnxruntime {env['onnxruntime']}, {env['threads']} threads. The 1-minute load average before/after "
             "each run is in the last column (2.0 = both cores busy).", "",
             "Dev metric (task's main metric, x100) of the teacher and after each stage; drop = teacher - tuned.", "",
             "| task | budget | MACs kept | params kept | teacher | search | rearranged | tuned | drop | target | "
             "pruning s (wall) | fisher | tune | CPU s / threads | load avg |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r["main_metric"]
        d = {k: 100 * v[m] for k, v in r["dev_metrics"].items()}
        c = r["constraint"]
        budget = f"{c['kind']} {c['value']:g}" + (" " + r.get("variant", "") if r.get("variant") else "")
        target = f"≤ {TARGET_DROP[r['task']]:.1f}" if (c["kind"], c["value"]) == ("macs", 0.5) and not r.get("variant") else ""
        s = r["seconds"]
        lines.append(
            f"| {r['task']} ({m}) | {budget} | {r['macs_kept']:.3f} | {r['params_kept']:.3f} | {d['teacher']:.2f} | "
            f"{d['search']:.2f} | {d['rearranged']:.2f} | {d['tuned']:.2f} | {d['teacher'] - d['tuned']:+.2f} | {target} | "
            f"{s['pruning']:.1f} | {s['fisher']:.1f} | {s['tune']:.1f} | "
            f"{r['cpu_seconds']['pruning'] / r['threads']:.1f} | "
            f"{r['load_average_before'][0]:.1f}/{r['load_average_after'][0]:.1f} |")
    lines += seed_summary(results)
    if rows:
        lines += ["", "ORT-CPU latency, batch 32, seq 128 (bench/latency.py's run_grid: exported, validated, "
                  "interleaved, P50):", "",
                  "| model | P50 ms | speed-up vs its teacher | MAC reduction |", "|---|---:|---:|---:|"]
        for row in rows:
            lines.append(f"| {row.model} | {row.stats.p50_ms:.1f} | {row.speedup:.2f}× | {row.macs_ratio:.2f}× |")
    if timings:
        lines += ["", "Pruning wall time alone (Fisher + search + rearrange + tune, no evaluation), 50% MACs, "
                  f"2048 samples, {timings[0]['threads']} threads, tuning in {timings[0]['tune_precision']}; "
                  "target <= 45 s:", "",
                  "| task | Fisher in | run | pruning s | fisher | search | rearrange | tune | load avg before/after |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for t in timings:
            s = t["seconds"]
            lines.append(f"| {t['task']} | {t['fisher_precision']} | {t['repeat']} | {s['pruning']:.1f} | {s['fisher']:.1f} | {s['search']:.2f} | "
                         f"{s['rearrange']:.2f} | {s['tune']:.1f} | {t['load_average_before'][0]:.1f}/"
                         f"{t['load_average_after'][0]:.1f} |")
    lines += ["", "Per-layer structure (heads / FFN units per layer):", ""]
    for r in results:
        c = r["constraint"]
        lines.append(f"- {r['task']} {c['kind']} {c['value']:g}{' ' + r['variant'] if r.get('variant') else ''}: heads "
                     + " ".join(str(x["heads"]) for x in r["structure"]) + "; FFN "
                     + " ".join(str(x["ffn"]) for x in r["structure"]))
    return "\n".join(lines) + "\n"


def seed_summary(results):
    """Markdown lines: the 50% MACs drop per task averaged over the seeds that were run (dev sets are
    small: one RTE example is 0.36 points, one SST-2 example 0.11)."""
    import statistics
    lines = []
    for task in sorted({r["task"] for r in results}):
        drops = []
        for r in results:
            c, m = r["constraint"], r["main_metric"]
            if r["task"] == task and (c["kind"], c["value"]) == ("macs", 0.5) and r.get("variant", "") in SEEDS:
                d = r["dev_metrics"]
                drops.append(100 * (d["teacher"][m] - d["tuned"][m]))
        if len(drops) > 1:
            lines.append(f"| {task} | {len(drops)} | {statistics.mean(drops):+.2f} | {statistics.stdev(drops):.2f} | "
                         f"{min(drops):+.2f} / {max(drops):+.2f} | ≤ {TARGET_DROP[task]:.1f} |")
    if not lines:
        return []
    return ["", "Drop at 50% MACs over sampling seeds (the seed draws the Fisher / tuning sample):", "",
            "| task | seeds | mean drop | sd | best / worst | target |", "|---|---:|---:|---:|---:|---:|"] + lines


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "rte"])
    p.add_argument("--macs", nargs="+", type=float, default=[0.4, 0.5, 0.6])
    p.add_argument("--latency", nargs="+", type=float, default=[0.5])
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--ablations", action="store_true", help="also run the ABLATIONS variants at 50%% MACs")
    p.add_argument("--ablation-tasks", nargs="+", default=["sst2", "mrpc", "rte"])
    add_glue_dir_option(p)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2). On a machine shared "
                   "with other jobs, 1 avoids OpenMP threads waiting on each other (seen: 5-10x slower with 2)")
    p.add_argument("--speed-threads", type=int, default=2, help="ORT threads for the speed-up (default 2)")
    p.add_argument("--timing", type=int, default=0, metavar="N", help="also time the pruning alone N times per task "
                   "at 50%% MACs with --timing-threads threads")
    p.add_argument("--timing-threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "posttrain"))
    args = p.parse_args()
    args.glue_dir = require_glue_dir(args.glue_dir, args.tasks + (args.ablation_tasks if args.ablations else []),
                                     "bench/posttrain.py")
    torch.set_num_threads(args.threads)
    results = []
    for task in args.tasks:
        for tag, constraint in budgets(args):
            r = run_one(task, tag, constraint, args.glue_dir)
            r["output"] = f"runs/pt-{task}-{tag}"
            results.append(r)
    if args.ablations:
        for task in args.ablation_tasks:
            for suffix, name, options in ABLATIONS:
                r = run_one(task, "0.5", Constraint("macs", 0.5), args.glue_dir, options, "-" + suffix)
                r["variant"], r["output"] = name, f"runs/pt-{task}-0.5-{suffix}"
                results.append(r)
    timings = timing(args.tasks, args.glue_dir, args.timing_threads, args.timing) if args.timing else []
    rows = [] if args.no_speed else speed([r for r in results if not r.get("variant")], args.speed_threads)
    env = environment(torch.get_num_threads())
    command = "python " + " ".join(sys.argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(results, rows, env, command, timings))
    payload = {"command": command, "environment": env, "results": results,
               "latency": [{"model": r.model, "runtime": r.runtime, "batch": r.batch, "seq": r.seq,
                            "p50_ms": r.stats.p50_ms, "p90_ms": r.stats.p90_ms, "speedup": r.speedup,
                            "macs_ratio": r.macs_ratio} for r in rows],
               "timing": timings,
               "date": time.strftime("%Y-%m-%d %H:%M")}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

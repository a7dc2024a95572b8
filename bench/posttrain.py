"""Post-training pruning benchmark: MiniLM teachers on SST-2, MRPC and RTE.

    GLUE_DIR=../shared/data/glue python bench/posttrain.py    # everything below, resumable
    python bench/posttrain.py --tasks mrpc --macs 0.5 --no-latency --no-speed --glue-dir ../shared/data/glue
    python bench/posttrain.py --replot bench/results/posttrain.json   # the tables again from the JSON alone

For each task and each MAC budget (40/50/60% kept) and for the latency mode (50% of the teacher's
block latency, tables timed in ONNX Runtime on this CPU at batch 32, seq 128), it runs
`prunekit.harness.run` with the post-training method (the code behind `prunekit compress --method
post-training`) and
records the dev metric of the teacher and after search, rearrangement and tuning, the pruning wall
time per stage (Fisher + search + rearrange + tune; evaluation excluded), the process CPU time and
the machine's load average, because the machine is shared. Compact models stay in
runs/pt-<task>-<budget> (a finished one is reused, not recomputed). With --speed, the dense teacher
and every compact model are exported to ONNX and timed interleaved in ORT-CPU at batch 32, seq 128
(bench/common.py's run_grid). With --ablations, 50% MACs is also run with the variants in
ABLATIONS (seeds 1 and 2, random Fisher batches, bf16 Fisher, the dense model as the tuning target, more
samples), and the 50% MACs drop is summarised as mean and spread over seeds 0-2.
Output: OUT.md and OUT.json (default bench/results/posttrain); paths in them are relative to the
repository root, where the script runs. The GLUE data: --glue-dir or $GLUE_DIR.
"""
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import prunekit
from common import FRACTION, THREADS, TimingPlan, command_line, parser, replot, run_grid
from prunekit.benchmark import (check_out, environment, glue_dir_option, require_glue_dir, script,
                                table, write_results)
from prunekit.budget import Budget, Deployment
from prunekit.harness import run
from prunekit.io import write_json
from prunekit.machine import load_average
from prunekit.options import Range, number
from prunekit.posttrain import METHOD, PostTrainConfig

PROG = "bench/posttrain.py"
RUNS = Path("runs")
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
SPEED = TimingPlan(budget=8.0, min_rounds=10, max_rounds=60, warmup_calls=3, warmup_seconds=1.0)


def budgets(args):
    out = [(f"{m:g}", Budget("macs", m)) for m in args.macs]
    if not args.no_latency:
        deployment = Deployment(latency_batch=32, latency_seq_len=128, latency_threads=2,
                                lut_cache=str(RUNS / "latency_lut.json"))
        out += [(f"lat{v:g}", Budget("latency", v, deployment)) for v in args.latency]
    return out


def run_one(task, tag, budget: Budget, glue_dir, options=None, suffix=""):
    out = RUNS / f"pt-{task}-{tag}{suffix}"
    if (out / "report.json").is_file():
        print(f"reusing {out}", file=sys.stderr)
        report = json.loads((out / "report.json").read_text())
    else:
        load = load_average()
        report = run(METHOD, str(RUNS / f"teacher-{task}"), task, str(out), budget,
                     PostTrainConfig(**(options or {})), data={"glue_dir": glue_dir}, overwrite=True)
        report["load_average_before"], report["load_average_after"] = load, load_average()
        write_json(out / "report.json", report)
    return {**report, "teacher": f"runs/teacher-{task}", "output": str(out)}


def timing(tasks, glue_dir, threads, repeats):
    """Pruning wall time alone (no evaluation) at 50% MACs with `threads` threads, `repeats` times per
    task and Fisher precision (the default fp32, and bf16); the best run is the one least disturbed by
    other jobs. Nothing is kept but the reports."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = []
    try:
        for task, precision, i in ((t, p, i) for t in tasks for p in ("fp32", "bf16") for i in range(repeats)):
            with tempfile.TemporaryDirectory() as tmp:
                load = load_average()
                r = run(METHOD, str(RUNS / f"teacher-{task}"), task, str(Path(tmp) / "pt"), Budget("macs", 0.5),
                        PostTrainConfig(evaluate=False, progress=False, fisher_precision=precision),
                        data={"glue_dir": glue_dir})
            out.append({"task": task, "repeat": i, "threads": threads, "seconds": r["seconds"],
                        "cpu_seconds": r["cpu_seconds"], "load_average_before": load,
                        "load_average_after": load_average(), "num_samples": r["num_samples"],
                        "fisher_precision": r["fisher_precision"], "tune_precision": r["tune_precision"]})
            print(f"timing {task} {precision} #{i}: {r['seconds']['pruning']:.1f} s", file=sys.stderr)
    finally:
        torch.set_num_threads(saved)
    return out


def speed(results, threads) -> list[dict]:
    """ORT-CPU latency of every teacher and its compact models at batch 32 / seq 128, interleaved."""
    rows = []
    for task in sorted({r["task"] for r in results}):
        teacher = RUNS / f"teacher-{task}"
        models = {f"teacher-{task}": (prunekit.load_model(str(teacher)), teacher)}
        for r in (r for r in results if r["task"] == task):
            models[Path(r["output"]).name] = (prunekit.load_model(r["output"]), Path(r["output"]))
        rows += run_grid(models, ["ort"], [32], [128], "cpu", threads, RUNS / "bench-cache", SPEED)
    return [{"model": r.model, "runtime": r.runtime, "batch": r.batch, "seq": r.seq, "p50_ms": r.stats.p50_ms,
             "p90_ms": r.stats.p90_ms, "speedup": r.speedup, "macs_ratio": r.macs_ratio} for r in rows]


def budget_of(r) -> str:
    c = r["constraint"]
    return f"{c['kind']} {c['value']:g}" + (" " + r["variant"] if r.get("variant") else "")


def is_main_half(r) -> bool:
    """The 50% MACs run the targets are set for (not an ablation of it)."""
    return (r["constraint"]["kind"], r["constraint"]["value"]) == ("macs", 0.5) and not r.get("variant")


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = ["# Post-training pruning (Kwon et al. 2022) on MiniLM teachers", "",
             f"Command: `{doc['command']}`  ", f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, "
             f"onnxruntime {env['onnxruntime']}, {env['threads']} threads. The 1-minute load average before/after "
             "each run is in the last column (2.0 = both cores busy).", "",
             "Dev metric (task's main metric, x100) of the teacher and after each stage; drop = teacher - tuned.", "",
             stages_table(doc["results"])]
    lines += seed_summary(doc["results"])
    if doc["latency"]:
        lines += ["", "ORT-CPU latency, batch 32, seq 128 (bench/latency.py's run_grid: exported, validated, "
                  "interleaved, P50):", "",
                  table(["model", "P50 ms", "speed-up vs its teacher", "MAC reduction"],
                        [[r["model"], f"{r['p50_ms']:.1f}", f"{r['speedup']:.2f}×", f"{r['macs_ratio']:.2f}×"]
                         for r in doc["latency"]], "lrrr")]
    if timings := doc["timing"]:
        lines += ["", "Pruning wall time alone (Fisher + search + rearrange + tune, no evaluation), 50% MACs, "
                  f"2048 samples, {timings[0]['threads']} threads, tuning in {timings[0]['tune_precision']}; "
                  "target <= 45 s:", "", timing_table(timings)]
    lines += ["", "Per-layer structure (heads / FFN units per layer):", ""]
    lines += [f"- {r['task']} {r['constraint']['kind']} {r['constraint']['value']:g}"
              f"{' ' + r['variant'] if r.get('variant') else ''}: heads "
              + " ".join(str(x["heads"]) for x in r["structure"]) + "; FFN "
              + " ".join(str(x["ffn"]) for x in r["structure"]) for r in doc["results"]]
    return "\n".join(lines) + "\n" + doc.get("analysis", "")  # a reading of the results written afterwards


def stages_table(results) -> str:
    rows = []
    for r in results:
        m = r["main_metric"]
        d = {k: 100 * v[m] for k, v in r["dev_metrics"].items()}
        s = r["seconds"]
        rows.append([f"{r['task']} ({m})", budget_of(r), f"{r['macs_kept']:.3f}", f"{r['params_kept']:.3f}",
                     f"{d['teacher']:.2f}", f"{d['search']:.2f}", f"{d['rearranged']:.2f}", f"{d['tuned']:.2f}",
                     f"{d['teacher'] - d['tuned']:+.2f}", f"≤ {TARGET_DROP[r['task']]:.1f}" if is_main_half(r) else "",
                     f"{s['pruning']:.1f}", f"{s['fisher']:.1f}", f"{s['tune']:.1f}",
                     f"{r['cpu_seconds']['pruning'] / r['threads']:.1f}",
                     f"{r['load_average_before'][0]:.1f}/{r['load_average_after'][0]:.1f}"])
    return table(["task", "budget", "MACs kept", "params kept", "teacher", "search", "rearranged", "tuned", "drop",
                  "target", "pruning s (wall)", "fisher", "tune", "CPU s / threads", "load avg"], rows, "ll" + "r" * 13)


def timing_table(timings) -> str:
    return table(["task", "Fisher in", "run", "pruning s", "fisher", "search", "rearrange", "tune",
                  "load avg before/after"],
                 [[t["task"], t["fisher_precision"], t["repeat"], f"{t['seconds']['pruning']:.1f}",
                   f"{t['seconds']['fisher']:.1f}", f"{t['seconds']['search']:.2f}", f"{t['seconds']['rearrange']:.2f}",
                   f"{t['seconds']['tune']:.1f}",
                   f"{t['load_average_before'][0]:.1f}/{t['load_average_after'][0]:.1f}"] for t in timings],
                 "ll" + "r" * 7)


def seed_summary(results):
    """Markdown lines: the 50% MACs drop per task averaged over the seeds that were run (dev sets are
    small: one example of RTE or SST-2 moves the metric by a visible fraction of a point)."""
    rows = []
    for task in sorted({r["task"] for r in results}):
        drops = [100 * (r["dev_metrics"]["teacher"][r["main_metric"]] - r["dev_metrics"]["tuned"][r["main_metric"]])
                 for r in results if r["task"] == task and (r["constraint"]["kind"], r["constraint"]["value"]) ==
                 ("macs", 0.5) and r.get("variant", "") in SEEDS]
        if len(drops) > 1:
            rows.append([task, len(drops), f"{statistics.mean(drops):+.2f}", f"{statistics.stdev(drops):.2f}",
                         f"{min(drops):+.2f} / {max(drops):+.2f}", f"≤ {TARGET_DROP[task]:.1f}"])
    if not rows:
        return []
    return ["", "Drop at 50% MACs over sampling seeds (the seed draws the Fisher / tuning sample):", "",
            table(["task", "seeds", "mean drop", "sd", "best / worst", "target"], rows, "lrrrrr")]


def build_parser():
    p = parser(PROG, __doc__, out="bench/results/posttrain")
    glue_dir_option(p)
    p.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "rte"], choices=sorted(TARGET_DROP))
    p.add_argument("--macs", nargs="+", type=FRACTION, default=[0.4, 0.5, 0.6])
    p.add_argument("--latency", nargs="+", type=FRACTION, default=[0.5])
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--ablations", action="store_true", help="also run the ABLATIONS variants at 50%% MACs")
    p.add_argument("--ablation-tasks", nargs="+", default=["sst2", "mrpc", "rte"], choices=sorted(TARGET_DROP))
    p.add_argument("--threads", type=THREADS, default=2, help="torch intra-op threads (default 2). On a machine "
                   "shared with other jobs, 1 avoids OpenMP threads waiting on each other")
    p.add_argument("--speed-threads", type=THREADS, default=2, help="ORT threads for the speed-up (default 2)")
    p.add_argument("--timing", type=number(int, Range(0, 1000)), default=0, metavar="N", help="also time the pruning alone "
                   "N times per task at 50%% MACs with --timing-threads threads")
    p.add_argument("--timing-threads", type=THREADS, default=2)
    return p


@script(PROG)
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.replot:
        return replot(args.replot, markdown, needs=("command", "environment", "results", "latency", "timing"))
    glue_dir = require_glue_dir(args.glue_dir, args.tasks + (args.ablation_tasks if args.ablations else []))
    check_out(args.out)
    torch.set_num_threads(args.threads)
    results = [run_one(task, tag, budget, glue_dir) for task in args.tasks for tag, budget in budgets(args)]
    if args.ablations:
        results += [{**run_one(task, "0.5", Budget("macs", 0.5), glue_dir, options, "-" + suffix), "variant": name}
                    for task in args.ablation_tasks for suffix, name, options in ABLATIONS]
    timings = timing(args.tasks, glue_dir, args.timing_threads, args.timing) if args.timing else []
    latency = [] if args.no_speed else speed([r for r in results if not r.get("variant")], args.speed_threads)
    doc = {"command": command_line(PROG, argv), "environment": environment(torch.get_num_threads()),
           "results": results, "latency": latency, "timing": timings, "date": time.strftime("%Y-%m-%d %H:%M")}
    write_results(args.out, markdown(doc), doc)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

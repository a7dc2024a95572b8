"""Study (finished): does a bf16 Fisher pass cost post-training pruning accuracy? Paired over sample
seeds. The answer, in bench/results/fisher_precision.md, is what the README says of --fisher-precision.

    GLUE_DIR=../shared/data/glue python bench/studies/fisher_precision.py --tasks sst2 mrpc --seeds 0 1 2 3 4 5
    python bench/studies/fisher_precision.py --replot bench/results/fisher_precision.json

For each task and seed, post-training pruning at 50% MACs runs twice on the same 2048-example sample:
Fisher pass in fp32 (the default) and under bf16 autocast (`--fisher-precision bf16`); everything
after the Fisher pass (search, rearrangement, mask tuning) is the same code. Recorded per run: the
compact model's dev metric, the Fisher pass's wall time, and how many heads / FFN units its masks
and the fp32 masks of the same seed disagree on. The seed changes which examples are sampled, so the
fp32 runs' spread over seeds is the noise a single figure carries; the question is whether
bf16 - fp32, paired by seed, stands out of it. Teachers: runs/teacher-<task> (final checkpoints,
bench/teachers.py). Resumable: each finished run is a line of runs/fisher_precision.jsonl, masks
included; --report-only writes the tables from that log. Output: bench/results/fisher_precision.md, .json.
"""
import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prunekit.benchmark import (environment, glue_dir_option, require_glue_dir, rewrite_table, run_script, table,
                                write_results)
from prunekit.budget import Budget
from prunekit.evaluation import evaluate_task, torch_predictor
from prunekit.machine import keep_freed_memory, load_average
from prunekit.metrics import main_metric
from prunekit.posttrain import METHOD, PostTrainConfig, compress
from prunekit.teachers import load_teacher_and_task

PROG = "bench/studies/fisher_precision.py"
LOG = Path("runs") / "fisher_precision.jsonl"
PRECISIONS = ("fp32", "bf16")
OTHER = "fp32-threads"  # the fp32 run of seed 0 again with --other-threads threads


def logged() -> dict:
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()] if LOG.is_file() else []
    return {(r["task"], r["seed"], r["precision"]): r for r in rows}


def run_task(task_name: str, seeds, macs: float, glue_dir: str, have: dict, other_threads: int | None = None):
    teacher = Path("runs") / f"teacher-{task_name}"
    model, task, _ = load_teacher_and_task(str(teacher), task_name, {"glue_dir": glue_dir}, "post-training pruning",
                                           METHOD.max_length(task_name))
    todo = [(s, p) for s in seeds for p in PRECISIONS if (task_name, s, p) not in have]
    if other_threads and (task_name, 0, OTHER) not in have:
        todo.append((0, OTHER))
    threads = torch.get_num_threads()
    for seed, precision in tqdm(todo, desc=task_name):
        run_threads = other_threads if precision == OTHER else threads
        torch.set_num_threads(run_threads)
        load = load_average()
        start = time.perf_counter()
        try:
            compact, masks, report = compress(model, task, Budget("macs", macs), PostTrainConfig(
                seed=seed, fisher_precision="fp32" if precision == OTHER else precision, evaluate=False,
                progress=False))
        finally:
            torch.set_num_threads(threads)
        wall = time.perf_counter() - start
        metrics = evaluate_task(torch_predictor(compact, "cpu"), task, 128, False)
        row = {"task": task_name, "seed": seed, "precision": precision, "macs": macs, "teacher": str(teacher),
               "main_metric": main_metric(task.name), "metric": metrics[main_metric(task.name)], "metrics": metrics,
               "fisher_seconds": report["seconds"]["fisher"], "pruning_seconds": report["seconds"]["pruning"],
               "wall_seconds": wall, "macs_kept": report["macs_kept"],
               "threads": run_threads, "malloc_kept": keep_freed_memory(),
               "load_average_before": load, "load_average_after": load_average(),
               "z_head": (masks.z_head != 0).int().tolist(), "z_int": (masks.z_int != 0).int().tolist()}
        with LOG.open("a") as f:
            f.write(json.dumps(row) + "\n")
        have[(task_name, seed, precision)] = row


def without_masks(have: dict) -> list[dict]:
    """The logged runs for the JSON: each run's masks replaced by how many heads / FFN units they keep
    that the fp32 run of the same task and seed does not, or the other way round."""
    def differ(a, b, key):
        return int((torch.tensor(a[key]) != torch.tensor(b[key])).sum())
    rows = []
    for (task, seed, precision), r in have.items():
        row = {k: v for k, v in r.items() if k not in ("z_head", "z_int")}
        if precision != "fp32" and (task, seed, "fp32") in have:
            ref = have[task, seed, "fp32"]
            row["masks_differ_from_fp32"] = [differ(r, ref, "z_head"), differ(r, ref, "z_int")]
        rows.append(row)
    return rows


def summarise(runs: list[dict], tasks, seeds) -> dict:
    """Per task: fp32 and bf16 mean and spread over the seeds, and bf16 - fp32 paired by seed."""
    have = {(r["task"], r["seed"], r["precision"]): r for r in runs}
    summary = {}
    for t in tasks:
        pairs = [(have[t, s, "fp32"], have[t, s, "bf16"]) for s in seeds
                 if (t, s, "fp32") in have and (t, s, "bf16") in have]
        if len(pairs) < 2:
            continue
        fp32, bf16 = [100 * a["metric"] for a, _ in pairs], [100 * b["metric"] for _, b in pairs]
        diff = [y - x for x, y in zip(fp32, bf16)]
        summary[t] = {"n": len(diff), "fp32_mean": statistics.mean(fp32), "fp32_sd": statistics.stdev(fp32),
                      "bf16_mean": statistics.mean(bf16), "bf16_sd": statistics.stdev(bf16),
                      "diff_mean": statistics.mean(diff), "diff_se": statistics.stdev(diff) / len(diff) ** 0.5,
                      "bf16_better": sum(d > 0 for d in diff), "bf16_worse": sum(d < 0 for d in diff),
                      # medians: a run that shared the machine with a stopped-and-resumed job must not skew it
                      "fisher_speedup": statistics.median(a["fisher_seconds"] for a, _ in pairs)
                      / statistics.median(b["fisher_seconds"] for _, b in pairs)}
    return summary


def markdown(doc: dict) -> str:
    env, runs, tasks, seeds = doc["environment"], doc["runs"], doc["tasks"], doc["seeds"]
    have = {(r["task"], r["seed"], r["precision"]): r for r in runs}
    threads = "/".join(str(t) for t in sorted({r["threads"] for r in runs if r["precision"] in PRECISIONS}))
    differ = lambda r: " / ".join(map(str, r["masks_differ_from_fp32"]))
    pairs = [(have[t, s, "fp32"], have[t, s, "bf16"]) for t in tasks for s in seeds
             if (t, s, "fp32") in have and (t, s, "bf16") in have]
    lines = ["# bf16 vs fp32 Fisher pass in post-training pruning: paired over sample seeds", "",
             f"Command: `{doc['command']}`  ", f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, "
             f"{threads} torch thread(s) per run; the load average before/after each run is in fisher_precision.json.",
             "", "Post-training pruning at 50% MACs, 2048 samples, the default pipeline except the Fisher pass's "
             "precision; dev metric (x100) of the compact model after mask tuning. Teachers: runs/teacher-<task>, "
             "final checkpoints (no dev-set picking). Masks differ = heads + FFN units kept by one run and not the "
             "other.", "",
             table(["task", "seed", "fp32", "bf16", "bf16 - fp32", "masks differ (heads / FFN units)",
                    "Fisher s fp32 / bf16"],
                   [[f"{a['task']} ({a['main_metric']})", a["seed"], f"{100 * a['metric']:.2f}", f"{100 * b['metric']:.2f}",
                     f"{100 * (b['metric'] - a['metric']):+.2f}", differ(b),
                     f"{a['fisher_seconds']:.1f} / {b['fisher_seconds']:.1f}"] for a, b in pairs], "lrrrrrr")]
    floor = [(have[t, 0, "fp32"], have[t, 0, OTHER]) for t in tasks if (t, 0, "fp32") in have and (t, 0, OTHER) in have]
    if floor:
        lines += ["", "The same fp32 run with another thread count (seed 0): the order of the sums in the GEMMs "
                  "changes, nothing else.", "",
                  table(["task", "threads", "fp32", "other threads", "masks differ (heads / FFN units)"],
                        [[a["task"], f"{a['threads']} vs {b['threads']}", f"{100 * a['metric']:.2f}",
                          f"{100 * b['metric']:.2f}", differ(b)] for a, b in floor], "llrrr")]
    lines += ["", table(["task", "seeds", "fp32 mean ± sd", "bf16 mean ± sd", "bf16 - fp32 (paired) mean ± s.e.",
                         "bf16 better / worse", "Fisher pass fp32 / bf16 time (medians)"],
                        [[t, s["n"], f"{s['fp32_mean']:.2f} ± {s['fp32_sd']:.2f}", f"{s['bf16_mean']:.2f} ± {s['bf16_sd']:.2f}",
                          f"{s['diff_mean']:+.2f} ± {s['diff_se']:.2f}", f"{s['bf16_better']} / {s['bf16_worse']}",
                          f"{s['fisher_speedup']:.2f}×"] for t, s in summarise(runs, tasks, seeds).items()], "lrrrrrr")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return run_script(PROG, body, argv)


def body(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--macs", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--other-threads", type=int, help="also run fp32, seed 0, with this many threads (the noise "
                   "floor: what a change of summation order alone does to the masks)")
    p.add_argument("--report-only", action="store_true", help="only write the tables from the runs logged so far")
    p.add_argument("--out", default="bench/results/fisher_precision")
    p.add_argument("--replot", metavar="JSON", help="only write the tables of an earlier OUT.json again")
    glue_dir_option(p)
    args = p.parse_args(argv)
    if args.replot:
        needs = ("command", "environment", "tasks", "seeds", "runs")
        print("\n".join(rewrite_table(args.replot, markdown, needs)))
        return 0
    torch.set_num_threads(args.threads)
    have = logged()
    if not args.report_only:
        glue_dir = require_glue_dir(args.glue_dir, args.tasks)
        LOG.parent.mkdir(exist_ok=True)
        for t in args.tasks:
            run_task(t, args.seeds, args.macs, glue_dir, have, args.other_threads)
    runs = without_masks(have)
    doc = {"command": shlex.join(["python", PROG, *argv]),
           "environment": environment(args.threads), "tasks": args.tasks, "seeds": args.seeds,
           "summary": summarise(runs, args.tasks, args.seeds), "runs": runs}
    write_results(args.out, markdown(doc), doc)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

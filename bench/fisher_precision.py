"""Does a bf16 Fisher pass cost post-training pruning accuracy? A paired study over sample seeds.

    GLUE_DIR=../shared/data/glue python bench/fisher_precision.py --tasks sst2 mrpc --seeds 0 1 2 3 4 5

For each task and seed, post-training pruning at 50% MACs runs twice on the same 2048-example sample:
Fisher pass in fp32 (the default) and under bf16 autocast (`--fisher-precision bf16`); everything
after the Fisher pass (search, rearrangement, mask tuning) is the same code. Recorded per run: the
compact model's dev metric, the Fisher pass's wall time, and how many heads / FFN units the two masks
disagree on. The seed changes which examples are sampled, so the fp32 runs' spread over seeds is the
noise a single figure carries; the question is whether bf16 - fp32, paired by seed, stands out of it.
Teachers: runs/teacher-<task> (final checkpoints, bench/teachers.sh). Resumable: each finished run
is a line of runs/fisher_precision.jsonl. Output: bench/results/fisher_precision.md and .json.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gluedir import add_glue_dir_option, require_glue_dir  # noqa: E402 (bench/, the script's own folder)
from prunekit.benchmark import environment  # noqa: E402
from prunekit.machine import keep_freed_memory  # noqa: E402
from prunekit.posttrain.pipeline import Constraint, PostTrainConfig, compress, default_max_length  # noqa: E402
from prunekit.metrics import main_metric  # noqa: E402
from prunekit.teachers import load_teacher_and_task  # noqa: E402
from prunekit.training import evaluate_task, torch_predictor  # noqa: E402

LOG = ROOT / "runs" / "fisher_precision.jsonl"
OUT = ROOT / "bench" / "results" / "fisher_precision"
PRECISIONS = ("fp32", "bf16")
OTHER = "fp32-threads"  # the fp32 run of seed 0 again with --other-threads threads


def done() -> dict:
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()] if LOG.is_file() else []
    return {(r["task"], r["seed"], r["precision"]): r for r in rows}


def run_task(task_name: str, seeds, macs: float, glue_dir: str, have: dict, other_threads: int | None = None):
    teacher = ROOT / "runs" / f"teacher-{task_name}"
    data = {"glue_dir": glue_dir, "max_length": default_max_length(task_name)}
    model, task, _ = load_teacher_and_task(str(teacher), task_name, data, purpose="post-training pruning",
                                           default_max_length=default_max_length(task_name))
    todo = [(s, p) for s in seeds for p in PRECISIONS if (task_name, s, p) not in have]
    if other_threads and (task_name, 0, OTHER) not in have:
        todo.append((0, OTHER))
    threads = torch.get_num_threads()
    for seed, precision in tqdm(todo, desc=task_name):
        run_threads = other_threads if precision == OTHER else threads
        torch.set_num_threads(run_threads)
        load = os.getloadavg()
        start = time.perf_counter()
        try:
            compact, masks, report = compress(model, task, Constraint("macs", macs), PostTrainConfig(
                seed=seed, fisher_precision="fp32" if precision == OTHER else precision, evaluate=False,
                progress=False))
        finally:
            torch.set_num_threads(threads)
        wall = time.perf_counter() - start
        metrics = evaluate_task(torch_predictor(compact, "cpu"), task, 128, False)
        row = {"task": task_name, "seed": seed, "precision": precision, "macs": macs, "teacher": str(teacher.relative_to(ROOT)),
               "main_metric": main_metric(task.name), "metric": metrics[main_metric(task.name)], "metrics": metrics,
               "fisher_seconds": report["seconds"]["fisher"], "pruning_seconds": report["seconds"]["pruning"],
               "wall_seconds": wall, "macs_kept": report["macs_kept"],
               "threads": run_threads, "malloc_kept": keep_freed_memory(),
               "load_average_before": load, "load_average_after": os.getloadavg(),
               "z_head": (masks.z_head != 0).int().tolist(), "z_int": (masks.z_int != 0).int().tolist()}
        with LOG.open("a") as f:
            f.write(json.dumps(row) + "\n")
        have[(task_name, seed, precision)] = row


def disagree(a: dict, b: dict, key: str) -> int:
    return int((torch.tensor(a[key]) != torch.tensor(b[key])).sum())


def summarise(have: dict, tasks, seeds, command: str) -> tuple[str, dict]:
    env = environment(1)
    machine = f"{env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}"
    threads = "/".join(str(t) for t in sorted({r["threads"] for r in have.values() if r["precision"] in PRECISIONS}))
    lines = ["# bf16 vs fp32 Fisher pass in post-training pruning: paired over sample seeds", "",
             f"Command: `{command}`  ", f"Machine: {machine}, {threads} torch thread(s) per run; the load "
             "average before/after each run is in fisher_precision.json.",
             "", "Post-training pruning at 50% MACs, 2048 samples, the default pipeline except the Fisher pass's "
             "precision; dev metric (x100) of the compact model after mask tuning. Teachers: runs/teacher-<task>, "
             "final checkpoints (no dev-set picking). Masks differ = heads + FFN units kept by one run and not the "
             "other.", "",
             "| task | seed | fp32 | bf16 | bf16 - fp32 | masks differ (heads / FFN units) | Fisher s fp32 / bf16 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    summary = {}
    for t in tasks:
        pairs = [(have[(t, s, "fp32")], have[(t, s, "bf16")]) for s in seeds
                 if (t, s, "fp32") in have and (t, s, "bf16") in have]
        for a, b in pairs:
            lines.append(f"| {t} ({a['main_metric']}) | {a['seed']} | {100 * a['metric']:.2f} | {100 * b['metric']:.2f} | "
                         f"{100 * (b['metric'] - a['metric']):+.2f} | {disagree(a, b, 'z_head')} / {disagree(a, b, 'z_int')} | "
                         f"{a['fisher_seconds']:.1f} / {b['fisher_seconds']:.1f} |")
        if len(pairs) < 2:
            continue
        fp32 = [100 * a["metric"] for a, _ in pairs]
        bf16 = [100 * b["metric"] for _, b in pairs]
        diff = [y - x for x, y in zip(fp32, bf16)]
        n = len(diff)
        se = statistics.stdev(diff) / n ** 0.5
        summary[t] = {"n": n, "fp32_mean": statistics.mean(fp32), "fp32_sd": statistics.stdev(fp32),
                      "bf16_mean": statistics.mean(bf16), "bf16_sd": statistics.stdev(bf16),
                      "diff_mean": statistics.mean(diff), "diff_se": se, "bf16_better": sum(d > 0 for d in diff),
                      "bf16_worse": sum(d < 0 for d in diff),
                      # medians: a run that shared the machine with a stopped-and-resumed job must not skew it
                      "fisher_speedup": statistics.median(a["fisher_seconds"] for a, _ in pairs)
                      / statistics.median(b["fisher_seconds"] for _, b in pairs)}
    floor = [(have[(t, 0, "fp32")], have[(t, 0, OTHER)]) for t in tasks
             if (t, 0, "fp32") in have and (t, 0, OTHER) in have]
    if floor:
        lines += ["", "The same fp32 run with another thread count (seed 0): the order of the sums in the GEMMs "
                  "changes, nothing else.", "",
                  "| task | threads | fp32 | other threads | masks differ (heads / FFN units) |", "|---|---|---:|---:|---:|"]
        lines += [f"| {a['task']} | {a['threads']} vs {b['threads']} | {100 * a['metric']:.2f} | {100 * b['metric']:.2f} | "
                  f"{disagree(a, b, 'z_head')} / {disagree(a, b, 'z_int')} |" for a, b in floor]
    lines += ["", "| task | seeds | fp32 mean ± sd | bf16 mean ± sd | bf16 - fp32 (paired) mean ± s.e. | "
              "bf16 better / worse | Fisher pass fp32 / bf16 time (medians) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for t, s in summary.items():
        lines.append(f"| {t} | {s['n']} | {s['fp32_mean']:.2f} ± {s['fp32_sd']:.2f} | {s['bf16_mean']:.2f} ± "
                     f"{s['bf16_sd']:.2f} | {s['diff_mean']:+.2f} ± {s['diff_se']:.2f} | {s['bf16_better']} / "
                     f"{s['bf16_worse']} | {s['fisher_speedup']:.2f}× |")
    return "\n".join(lines) + "\n", summary


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--macs", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--other-threads", type=int, help="also run fp32, seed 0, with this many threads (the noise "
                   "floor: what a change of summation order alone does to the masks)")
    p.add_argument("--report-only", action="store_true", help="only write the tables from the runs logged so far")
    add_glue_dir_option(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    have = done()
    if not args.report_only:
        glue_dir = require_glue_dir(args.glue_dir, args.tasks, "bench/fisher_precision.py")
        LOG.parent.mkdir(exist_ok=True)
        for t in args.tasks:
            run_task(t, args.seeds, args.macs, glue_dir, have, args.other_threads)
    command = "python bench/fisher_precision.py " + " ".join(sys.argv[1:])
    text, summary = summarise(have, args.tasks, args.seeds, command)
    OUT.with_suffix(".md").write_text(text)
    rows = [{k: v for k, v in r.items() if k not in ("z_head", "z_int")} for r in have.values()]
    OUT.with_suffix(".json").write_text(json.dumps({"command": command, "summary": summary, "runs": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()

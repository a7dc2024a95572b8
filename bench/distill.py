"""Post-training pruning + a short distillation (`prunekit compress --method post-training
--distill-steps N`): dev metric and wall time for each task, MAC budget and N.

    python bench/distill.py --glue-dir ../shared/data/glue                    # SST-2, MRPC, RTE; resumable
    python bench/distill.py --tasks sst2 --macs 0.5 --steps 200 --threads 2

For each task the teacher is runs/teacher-<task> (the final checkpoint of `prunekit finetune`, not
picked on the dev set). For each MAC budget, post-training pruning runs once (prunekit's
`posttrain.pipeline.compress`, no evaluations inside it), then each N is a separate distillation
of that compact model (its own learning-rate schedule over N steps: `distill_compact`, the code
behind --distill-steps), so N = 200 is what a user asking for 200 steps gets. Wall time of a row =
the pruning time + that N's distillation time (which ends with one dev evaluation, as
--distill-steps does; no other evaluation counted). Rows are appended to
OUT.json as they finish (a rerun skips them); OUT.md is rewritten from it.
"""
import argparse
import copy
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gluedir import add_glue_dir_option, require_glue_dir  # noqa: E402 (bench/, the script's own folder)
from prunekit.benchmark import environment  # noqa: E402
from prunekit.posttrain.pipeline import (Constraint, PostTrainConfig, compress, default_max_length,  # noqa: E402
                                         distill_compact)
from prunekit.teachers import load_teacher_and_task  # noqa: E402
from prunekit.training import evaluate_task, torch_predictor  # noqa: E402

MAIN = {"sst2": "accuracy", "mrpc": "f1", "rte": "accuracy"}
GOALS = {("sst2", 0.5): (0.0, 5), ("sst2", 0.3): (0.5, 10), ("sst2", 0.2): (1.5, 15)}  # (max drop, minutes)


def load_rows(path: Path) -> list:
    """Earlier rows, each with its precision and thread count."""
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def write(out: Path, rows: list, env: dict, args):
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    lines = ["# Post-training pruning + distillation (`--distill-steps N`)", "",
             f"`python bench/distill.py` (rows from several invocations: tasks, MAC budgets and N as listed); "
             f"{env.get('cpu', '')}, torch {torch.__version__}; threads and the distillation's precision per row. "
             "Teachers: runs/teacher-<task>, the final checkpoint of `prunekit finetune` (not picked on the dev set). "
             "Each N is its own run from the same pruned model (its own schedule over N steps; batch 32, lr 3e-5, "
             "CoFi's losses: KL at T = 2 plus layer distillation). Wall = pruning (Fisher, search, rearrangement, "
             "tuning, surgery) + distillation (which ends with one dev evaluation, as `--distill-steps` does; no "
             "other evaluation is counted); the machine's load average is recorded per row.", "",
             "| task (metric) | MACs kept | N | teacher | pruned + distilled | drop | wall | threads, precision | load | goal |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        goal = GOALS.get((r["task"], r["macs"]))
        verdict = ""
        if goal and r["steps"] > 0:
            ok = r["drop"] <= goal[0] + 1e-9 and r["wall_s"] <= goal[1] * 60
            verdict = f"drop ≤ {goal[0]} in ≤ {goal[1]} min: {'met' if ok else 'missed'}"
        lines.append(f"| {r['task']} ({MAIN[r['task']]}) | {r['macs']:.0%} | {r['steps']} | {100 * r['teacher']:.2f} | "
                     f"{100 * r['metric']:.2f} | {r['drop']:+.2f} | {r['wall_s'] / 60:.1f} min | {r['threads']}, {r['precision']} | "
                     f"{r['load']} | {verdict} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "rte"], choices=sorted(MAIN))
    p.add_argument("--macs", nargs="+", type=float, default=[0.5, 0.3, 0.2])
    p.add_argument("--steps", nargs="+", type=int, default=[200, 500, 2000])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--save", action="store_true", help="keep the N = 0 and largest-N models at 50% MACs in runs/")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill"))
    add_glue_dir_option(p)
    args = p.parse_args()
    glue_dir = require_glue_dir(args.glue_dir, args.tasks, "bench/distill.py")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = load_rows(out.with_suffix(".json"))
    done = {(r["task"], r["macs"], r["steps"], r["precision"], r["threads"]) for r in rows}
    env = environment(args.threads)
    config = PostTrainConfig(evaluate=False, distill_precision=args.precision)
    for name in args.tasks:
        data = {"glue_dir": glue_dir, "max_length": default_max_length(name)}
        teacher, task, _ = load_teacher_and_task(str(ROOT / "runs" / f"teacher-{name}"), name, data,
                                                 purpose="post-training pruning",
                                                 default_max_length=default_max_length(name))
        teacher_metric = evaluate_task(torch_predictor(teacher), task)[MAIN[name]]
        for macs in args.macs:
            wanted = [n for n in [0, *args.steps] if (name, macs, n, args.precision, args.threads) not in done]
            if not wanted:
                continue
            start = time.perf_counter()
            compact = compress(teacher, task, Constraint("macs", macs), config).model
            prune_s = time.perf_counter() - start
            for n in wanted:
                start = time.perf_counter()
                model = compact if n == 0 else distill_compact(teacher, copy.deepcopy(compact), task,
                                                               replace(config, distill_steps=n))
                distill_s = time.perf_counter() - start
                metric = evaluate_task(torch_predictor(model), task)[MAIN[name]]
                if args.save and macs == 0.5 and n in (0, max(args.steps)):
                    model.config.finetuning_task = name
                    model.save_pretrained(ROOT / "runs" / f"pt-{name}-macs0.5-d{n}")
                rows.append({"task": name, "macs": macs, "steps": n, "teacher": teacher_metric, "metric": metric,
                             "drop": round(100 * (teacher_metric - metric), 2), "prune_s": round(prune_s, 1),
                             "distill_s": round(distill_s, 1), "wall_s": round(prune_s + distill_s, 1),
                             "precision": args.precision, "threads": args.threads,
                             "load": " ".join(f"{x:.2f}" for x in os.getloadavg())})
                print(rows[-1], flush=True)
                write(out, rows, env, args)


if __name__ == "__main__":
    main()

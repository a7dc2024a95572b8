"""Post-training pruning + a short distillation (`prunekit compress --method post-training
--distill-steps N`): dev metric and wall time for each task, MAC budget and N.

    python bench/distill.py --glue-dir ../shared/data/glue                    # SST-2, MRPC, RTE; resumable
    python bench/distill.py --tasks sst2 --macs 0.5 --steps 200 --threads 2
    python bench/distill.py --replot bench/results/distill.json              # the table again from the JSON

For each task the teacher is runs/teacher-<task> (the final checkpoint of `prunekit finetune`, not
picked on the dev set). For each MAC budget, post-training pruning runs once (prunekit's
`posttrain.pipeline.compress`, no evaluations inside it), then each N is a separate distillation
of that compact model (its own learning-rate schedule over N steps: `distill_compact`, the code
behind --distill-steps), so N = 200 is what a user asking for 200 steps gets. Wall time of a row =
the pruning time + that N's distillation time (which ends with one dev evaluation, as
--distill-steps does; no other evaluation counted). Rows are appended to OUT.json as they finish
(a rerun skips them); OUT.md is rewritten from it.
"""
import copy
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import COUNT, FRACTION, THREADS, parser, replot
from prunekit.benchmark import (check_out, environment, glue_dir_option, render_results, require_glue_dir,
                                script, suffixed, table, write_results)
from prunekit.budget import Budget
from prunekit.evaluation import evaluate_task, torch_predictor
from prunekit.machine import load_average
from prunekit.metrics import main_metric
from prunekit.posttrain import METHOD, PostTrainConfig, compress
from prunekit.posttrain.pipeline import distill_compact
from prunekit.teachers import load_teacher_and_task

PROG = "bench/distill.py"
TASKS = ("sst2", "mrpc", "rte")
GOALS = {("sst2", 0.5): (0.0, 5), ("sst2", 0.3): (0.5, 10), ("sst2", 0.2): (1.5, 15)}  # (max drop, minutes)


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = ["# Post-training pruning + distillation (`--distill-steps N`)", "",
             f"`python bench/distill.py` (rows from several invocations: tasks, MAC budgets and N as listed); "
             f"{env.get('cpu', '')}, torch {env['torch']}; threads and the distillation's precision per row. "
             "Teachers: runs/teacher-<task>, the final checkpoint of `prunekit finetune` (not picked on the dev set). "
             "Each N is its own run from the same pruned model (its own schedule over N steps; batch 32, lr 3e-5, "
             "CoFi's losses: KL at T = 2 plus layer distillation). Wall = pruning (Fisher, search, rearrangement, "
             "tuning, surgery) + distillation (which ends with one dev evaluation, as `--distill-steps` does; no "
             "other evaluation is counted); the machine's load average is recorded per row.", ""]
    rows = [[f"{r['task']} ({main_metric(r['task'])})", f"{r['macs']:.0%}", r["steps"], f"{100 * r['teacher']:.2f}",
             f"{100 * r['metric']:.2f}", f"{r['drop']:+.2f}", f"{r['wall_s'] / 60:.1f} min",
             f"{r['threads']}, {r['precision']}", r["load"], verdict(r)] for r in doc["rows"]]
    lines.append(table(["task (metric)", "MACs kept", "N", "teacher", "pruned + distilled", "drop", "wall",
                        "threads, precision", "load", "goal"], rows, "lrrrrrrlrl"))
    return "\n".join(lines) + "\n"


def verdict(r: dict) -> str:
    """Whether a row meets the goal set for its task and budget (drop and minutes), if there is one."""
    goal = GOALS.get((r["task"], r["macs"]))
    if not goal or r["steps"] == 0:
        return ""
    ok = r["drop"] <= goal[0] + 1e-9 and r["wall_s"] <= goal[1] * 60
    return f"drop ≤ {goal[0]} in ≤ {goal[1]} min: {'met' if ok else 'missed'}"


def run_task(name: str, args, glue_dir: str, done: set, record):
    """Every missing (MACs, N) row of one task: prune once per budget, then distill each N from it."""
    config = PostTrainConfig(evaluate=False, distill_precision=args.precision)
    teacher, task, _ = load_teacher_and_task(f"runs/teacher-{name}", name, {"glue_dir": glue_dir},
                                             "post-training pruning", METHOD.max_length(name))
    teacher_metric = evaluate_task(torch_predictor(teacher), task)[main_metric(name)]
    for macs in args.macs:
        wanted = [n for n in [0, *args.steps] if (name, macs, n, args.precision, args.threads) not in done]
        if not wanted:
            continue
        start = time.perf_counter()
        compact = compress(teacher, task, Budget("macs", macs), config).model
        prune_s = time.perf_counter() - start
        for n in wanted:
            start = time.perf_counter()
            model = compact if n == 0 else distill_compact(teacher, copy.deepcopy(compact), task,
                                                           replace(config, distill_steps=n))
            distill_s = time.perf_counter() - start
            metric = evaluate_task(torch_predictor(model), task)[main_metric(name)]
            if args.save and macs == 0.5 and n in (0, max(args.steps)):
                model.config.finetuning_task = name
                model.save_pretrained(Path("runs") / f"pt-{name}-macs0.5-d{n}")
            record({"task": name, "macs": macs, "steps": n, "teacher": teacher_metric, "metric": metric,
                    "drop": round(100 * (teacher_metric - metric), 2), "prune_s": round(prune_s, 1),
                    "distill_s": round(distill_s, 1), "wall_s": round(prune_s + distill_s, 1),
                    "precision": args.precision, "threads": args.threads,
                    "load": " ".join(f"{x:.2f}" for x in load_average())})


def build_parser():
    p = parser(PROG, __doc__, out="bench/results/distill", files="OUT.md, OUT.json (rows kept: a rerun skips them)")
    glue_dir_option(p)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--macs", nargs="+", type=FRACTION, default=[0.5, 0.3, 0.2])
    p.add_argument("--steps", nargs="+", type=COUNT, default=[200, 500, 2000])
    p.add_argument("--threads", type=THREADS, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--save", action="store_true", help="keep the N = 0 and largest-N models at 50%% MACs in runs/")
    return p


@script(PROG)
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.replot:
        return replot(args.replot, markdown, needs=("environment", "rows"))
    glue_dir = require_glue_dir(args.glue_dir, args.tasks)
    check_out(args.out)
    torch.set_num_threads(args.threads)
    saved = suffixed(args.out, ".json")
    rows = render_results(saved, lambda doc: list(doc["rows"]), needs=("rows",)) if saved.is_file() else []
    doc = {"environment": environment(args.threads), "rows": rows}

    def record(row):  # each row is kept as soon as it is measured: an interrupted run resumes after it
        rows.append(row)
        print(row, flush=True)
        write_results(args.out, markdown(doc), doc)
    done = {(r["task"], r["macs"], r["steps"], r["precision"], r["threads"]) for r in rows}
    for name in args.tasks:
        run_task(name, args, glue_dir, done, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

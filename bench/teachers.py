"""The MiniLM teachers the other benchmarks prune (runs/teacher-<task>), and their table.

    GLUE_DIR=../shared/data/glue python bench/teachers.py --train           # MRPC, RTE, SST-2, one after another
    GLUE_DIR=../shared/data/glue python bench/teachers.py --train --tasks rte
    python bench/teachers.py                          # the table from runs/: bench/results/teachers.{md,json}
    python bench/teachers.py --replot bench/results/teachers.json           # the table from the JSON alone

--train runs `prunekit finetune` per task (nice'd, --threads torch threads; one thread keeps a nice'd
run from stalling at thread barriers on a busy machine) with a single evaluation at the end, so the
model kept is the final checkpoint, not one picked on the dev set the pruning drops are measured on.
Each run leaves runs/teacher-<task>/, its log runs/teacher-<task>.log and runs/teacher-<task>.wall
(the command and its wall time). The table adds the training-speed measurements of
bench/results/train_speed.json (SPEED_STUDY).
"""
import json
import os
import platform
import sys
from pathlib import Path

from common import THREADS, parser, replot
from prunekit.benchmark import (check_out, glue_dir_option, prunekit_command, render_results, require_glue_dir,
                                run_logged, script, suffixed, table, write_results)
from prunekit.errors import PrunekitError
from prunekit.io import write_json

PROG = "bench/teachers.py"
RUNS = Path("runs")
EPOCHS = {"mrpc": 3, "rte": 5, "sst2": 1}  # the small tasks get more passes over their data
SPEED_STUDY = "bench/studies/length_grouping.py"  # what made bench/results/train_speed.json
SETTINGS = ("epochs", "lr", "batch_size", "weight_decay", "warmup_ratio", "seed", "eval_every", "group_by_length")


def train(task: str, glue_dir: str, threads: int):
    """Fine-tune runs/teacher-<task> (replacing it), then record the command and its wall time beside it."""
    out = RUNS / f"teacher-{task}"
    args = ["finetune", "--model", "minilm", "--task", task, "--output", str(out), "--epochs", str(EPOCHS[task]),
            "--eval-every", "1000000", "--threads", str(threads)] + (["--overwrite"] if out.exists() else [])
    timing = run_logged(prunekit_command(*args), RUNS / f"teacher-{task}.log", nice=10, env={"GLUE_DIR": glue_dir})
    load = " ".join(f"{x:.2f}" for x in timing["load_after"] or [])
    write_json(RUNS / f"teacher-{task}.wall", {"command": " ".join(["prunekit", *args]),
                                               "wall_seconds": timing["wall_seconds"],
                                               "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {load} "
                                                          "at the end"})


def collect() -> list[dict]:
    """The finished teacher runs under runs/, with their command, wall time, metrics and settings."""
    teachers = []
    for wall in sorted(RUNS.glob("teacher-*.wall")):
        run = wall.with_suffix("")
        if not (run / "metrics.json").is_file():
            continue
        m, w = json.loads((run / "metrics.json").read_text()), json.loads(wall.read_text())
        args = json.loads((run / "train_args.json").read_text())
        teachers.append({"run": f"runs/{run.name}", "task": m["task"], "command": w["command"],
                         "wall_seconds": w["wall_seconds"], "machine": w["machine"], "main_metric": m["main_metric"],
                         "best": m["best"], "final": m["final"], "steps": m["steps"],
                         "seconds_per_step": m["seconds_per_step"], "train_examples": args["train_examples"],
                         "settings": {k: args[k] for k in SETTINGS}})
    return teachers


def markdown(doc: dict) -> str:
    teachers, speed = doc["teachers"], doc["train_speed"]
    fmt = lambda rec: ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k not in ("step", "epoch", "train_loss"))
    lines = ["# MiniLM teachers (all-MiniLM-L6-v2 fine-tuned on GLUE dev sets)", "",
             f"Command: `python {PROG} --train`", "",
             "Best = the evaluation with the highest main metric (that checkpoint is the one saved, so it is chosen "
             "on the dev set it is scored on); final = the last evaluation. The teachers are evaluated once, at the "
             "end (`--eval-every 1000000`), so best = final and no checkpoint is picked on the dev set."
             + (" " + doc["note"] if doc.get("note") else ""), "",
             table(["run", "task", "lr", "epochs", "best (step)", "final", "steps", "s/step", "wall"],
                   [[t["run"], t["task"], f"{t['settings']['lr']:g}", f"{t['settings']['epochs']:g}",
                     f"{fmt(t['best'])} ({t['best']['step']})", fmt(t["final"]), t["steps"],
                     f"{t['seconds_per_step']:.2f}", f"{t['wall_seconds'] / 60:.1f} min"] for t in teachers], "l" * 9)]
    lines += ["", "Settings: the `prunekit finetune` defaults (AdamW, lr 5e-5, batch 32, weight decay 0.01, linear "
              "warm-up over 10% of the steps then linear decay, gradient clipping at 1.0, max length 128, "
              "length-grouped batches, seed 42) with 3 epochs for MRPC, 5 for RTE and 1 for SST-2. For RTE a second "
              "run with lr 1e-4 was tried and was no better; the teacher the other tools use is runs/teacher-<task>. "
              "Wall times include loading, tokenising and every dev evaluation, and were taken on a 2-core machine "
              "shared with other developers' jobs (load average at the end of each run is given), with one torch "
              "thread (`OMP_NUM_THREADS=1`), which is much faster than two when the other core is busy (see below).",
              "", f"Commands (from the repository root, `GLUE_DIR=../shared/data/glue`, via `python {PROG} --train`):", ""]
    lines += [f"- {t['run']}: `{t['command']}` ({t['machine']})" for t in teachers]
    if speed:
        lines += ["", "## Training speed, SST-2, batch 32", "",
                  f"Each row is one run of {SPEED_STUDY}; the machine is shared with other developers' jobs, "
                  "so the load average is given with each.", "", speed_table(speed)]
    return "\n".join(lines) + "\n"


def speed_table(speed: list[dict]) -> str:
    return table(["command", "machine", "load before", "batches", "s/step mean", "s/step median", "CPU s/step",
                  "mean padded length", "epoch estimate", "note"],
                 [[f"`{m['command']}`", m["machine"], " ".join(m["load_before"]),
                   "length-grouped" if r["group_by_length"] else "plain shuffled", f"{r['seconds_per_step']:.3f}",
                   f"{r['median_seconds_per_step']:.3f}", r.get("cpu_seconds_per_step", ""), r["mean_padded_length"],
                   f"{r['epoch_minutes_estimate']} min", m.get("note", "")] for m in speed for r in m["rows"]],
                 "l" * 10)


def build_parser():
    p = parser(PROG, __doc__, out="bench/results/teachers")
    glue_dir_option(p)
    p.add_argument("--train", action="store_true", help="fine-tune the teachers of --tasks (replacing them) first")
    p.add_argument("--tasks", nargs="+", default=list(EPOCHS), choices=list(EPOCHS))
    p.add_argument("--threads", type=THREADS, default=1, help="torch threads of each fine-tuning (default 1)")
    p.add_argument("--speed", default="bench/results/train_speed.json",
                   help="the training-speed measurements added to the table")
    return p


@script(PROG)
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.replot:
        return replot(args.replot, markdown, needs=("teachers", "train_speed"))
    check_out(args.out)
    if args.train:
        glue_dir = str(Path(require_glue_dir(args.glue_dir, args.tasks)).resolve())
        for task in args.tasks:
            train(task, glue_dir, args.threads)
    teachers = collect()
    if not teachers:
        raise PrunekitError(f"no finished teacher run under {RUNS}/ (make them with --train)")
    saved = suffixed(args.out, ".json")
    note = render_results(saved, lambda doc: doc.get("note"), needs=()) if saved.is_file() else None
    speed = render_results(args.speed, lambda doc: doc, needs=()) if Path(args.speed).is_file() else None
    doc = {"teachers": teachers, "train_speed": speed, "note": note}
    write_results(args.out, markdown(doc), doc)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

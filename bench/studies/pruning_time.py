"""Study (finished): wall time of post-training pruning as users run it: one `prunekit compress
--method post-training --macs 0.5 --no-eval` process per run, Fisher pass in fp32 and in bf16, on
SST-2, MRPC and RTE. It measured what `--fisher-precision bf16` saves (bench/results/pruning_time.md).

    GLUE_DIR=../shared/data/glue python bench/studies/pruning_time.py --teacher sst2=runs/teacher-sst2 \
        mrpc=runs/teacher-mrpc rte=runs/minilm-2labels --repeats 2
    python bench/studies/pruning_time.py --replot bench/results/pruning_time.json

Recorded per run: the pruning time (Fisher + search + rearrange + tune, from report.json), each
stage, and the whole command's wall time (start-up, loading and tokenising included). The time does
not depend on the weights, so a task without a fine-tuned teacher can be timed with any MiniLM
checkpoint that has the task's label count (say which in the note). Runs alternate fp32 / bf16 so
that a change of load hits both. Output: OUT.md and OUT.json (default bench/results/pruning_time).
"""
import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from prunekit.benchmark import (environment, glue_dir_option, prunekit_command, require_glue_dir, rewrite_table,
                                run_logged, run_script, table, write_results)

STAGES = ("fisher", "search", "rearrange", "tune")

PROG = "bench/studies/pruning_time.py"


def one(task: str, teacher: str, precision: str, threads: int, glue_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cmd = prunekit_command("compress", "--method", "post-training", "--teacher", teacher, "--task", task, "--macs",
                               "0.5", "--no-eval", "--fisher-precision", precision, "--threads", threads, "--glue-dir",
                               glue_dir, "--output", Path(tmp) / "pt")
        timing = run_logged(cmd, Path("runs") / "pruning_time.log")
        wall = time.perf_counter() - start
        report = json.loads((Path(tmp) / "pt" / "report.json").read_text())
    return {"task": task, "teacher": teacher, "precision": precision, "threads": threads, "wall_s": wall,
            "pruning_s": report["seconds"]["pruning"],
            **{f"{s}_s": report["seconds"].get(s, float("nan")) for s in STAGES},
            "fisher_precision": report["fisher_precision"], "load_average_before": timing["load_before"],
            "load_average_after": timing["load_after"]}


def markdown(doc: dict) -> str:
    env = doc["environment"]
    rows = [[r["task"], r["teacher"], r["precision"], r["repeat"], f"{r['pruning_s']:.1f}",
             *(f"{r[s + '_s']:.2f}" for s in STAGES), f"{r['wall_s']:.1f}",
             f"{r['load_average_before'][0]:.2f} / {r['load_average_after'][0]:.2f}"] for r in doc["rows"]]
    return "\n".join(["# Post-training pruning time, one CLI process per run (50% MACs, 2048 samples, --no-eval)", "",
                      f"Command: `{doc['command']}`  ", f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch "
                      f"{env['torch']}, {env['threads']} threads; the load average before/after each run is in the table.",
                      "", table(["task", "teacher", "Fisher in", "run", "pruning s", "fisher", "search", "rearrange",
                                 "tune", "command wall s", "load before / after"], rows, "lllrrrrrrrl")]) + "\n"


def main(argv=None) -> int:
    return run_script(PROG, body, argv)


def body(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", nargs="+", metavar="TASK=DIR")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/results/pruning_time")
    p.add_argument("--replot", metavar="JSON", help="only write the table of an earlier OUT.json again")
    glue_dir_option(p)
    a = p.parse_args(argv)
    if a.replot:
        print("\n".join(rewrite_table(a.replot, markdown)))
        return 0
    if not a.teacher or not all("=" in t for t in a.teacher):
        p.error("--teacher takes TASK=DIR pairs, e.g. sst2=runs/teacher-sst2")
    teachers = dict(t.split("=", 1) for t in a.teacher)
    glue_dir = require_glue_dir(a.glue_dir, list(teachers))
    rows = []
    for task, teacher in teachers.items():
        for i in range(a.repeats):
            for precision in ("fp32", "bf16"):
                rows.append({**one(task, teacher, precision, a.threads, glue_dir), "repeat": i})
                r = rows[-1]
                print(f"{task} {precision} #{i}: pruning {r['pruning_s']:.1f} s, wall {r['wall_s']:.1f} s", flush=True)
    doc = {"command": shlex.join(["python", PROG, *argv]),
           "environment": environment(a.threads), "rows": rows}
    write_results(a.out, markdown(doc), doc)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of post-training pruning as users run it: one `prunekit compress --method post-training
--macs 0.5 --no-eval` process per run, Fisher pass in fp32 and in bf16, on SST-2, MRPC and RTE.

    GLUE_DIR=../shared/data/glue python bench/pruning_time.py --teacher sst2=runs/teacher-sst2 \
        mrpc=runs/teacher-mrpc rte=runs/minilm-2labels --repeats 2

Recorded per run: the pruning time (Fisher + search + rearrange + tune, from report.json), each
stage, and the whole command's wall time (start-up, loading and tokenising included). The time does
not depend on the weights, so a task without a fine-tuned teacher can be timed with any MiniLM
checkpoint that has the task's label count (say which in the note). Runs alternate fp32 / bf16 so
that a change of load hits both. Output: OUT.md and OUT.json (default bench/results/pruning_time).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gluedir import add_glue_dir_option, require_glue_dir  # noqa: E402 (bench/, the script's own folder)
from prunekit.benchmark import environment  # noqa: E402

STAGES = ("fisher", "search", "rearrange", "tune")


def one(task: str, teacher: str, precision: str, threads: int, glue_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "prunekit.cli", "compress", "--method", "post-training", "--teacher", teacher,
               "--task", task, "--macs", "0.5", "--no-eval", "--fisher-precision", precision, "--threads",
               str(threads), "--glue-dir", glue_dir, "--output", str(Path(tmp) / "pt")]
        load = os.getloadavg()
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench/pruning_time.py: error: {' '.join(cmd[1:])} failed:\n{done.stderr[-2000:]}")
        wall = time.perf_counter() - start
        report = json.loads((Path(tmp) / "pt" / "report.json").read_text())
    return {"task": task, "teacher": teacher, "precision": precision, "threads": threads, "wall_s": wall,
            "pruning_s": report["seconds"]["pruning"],
            **{f"{s}_s": report["seconds"].get(s, float("nan")) for s in STAGES},
            "fisher_precision": report["fisher_precision"], "load_average_before": load,
            "load_average_after": os.getloadavg()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", nargs="+", required=True, metavar="TASK=DIR")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "pruning_time"))
    add_glue_dir_option(p)
    a = p.parse_args()
    if not all("=" in t for t in a.teacher):
        p.error("--teacher takes TASK=DIR pairs, e.g. sst2=runs/teacher-sst2")
    teachers = dict(t.split("=", 1) for t in a.teacher)
    glue_dir = require_glue_dir(a.glue_dir, list(teachers), "bench/pruning_time.py")
    rows = []
    for task, teacher in teachers.items():
        for i in range(a.repeats):
            for precision in ("fp32", "bf16"):
                rows.append({**one(task, teacher, precision, a.threads, glue_dir), "repeat": i})
                r = rows[-1]
                print(f"{task} {precision} #{i}: pruning {r['pruning_s']:.1f} s, wall {r['wall_s']:.1f} s", flush=True)
    env = environment(a.threads)
    command = "python bench/pruning_time.py " + " ".join(sys.argv[1:])
    lines = ["# Post-training pruning time, one CLI process per run (50% MACs, 2048 samples, --no-eval)", "",
             f"Command: `{command}`  ", f"Machine: {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, "
             f"{a.threads} threads; the load average before/after each run is in the table.", "",
             "| task | teacher | Fisher in | run | pruning s | fisher | search | rearrange | tune | command wall s | "
             "load before / after |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['teacher']} | {r['precision']} | {r['repeat']} | {r['pruning_s']:.1f} | "
                     + " | ".join(f"{r[s + '_s']:.2f}" for s in STAGES) + f" | {r['wall_s']:.1f} | "
                     f"{r['load_average_before'][0]:.2f} / {r['load_average_after'][0]:.2f} |")
    Path(a.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps({"command": command, "environment": env, "rows": rows},
                                                           indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

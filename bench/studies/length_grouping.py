"""Study (finished): training speed of MiniLM on SST-2 with plain shuffled batches vs length-grouped
batches (both with dynamic padding), and the epoch time each implies. It is why `prunekit finetune`
groups batches by length; the measurements are the training-speed table of bench/results/teachers.md.

    GLUE_DIR=../shared/data/glue python bench/studies/length_grouping.py --steps 40 --batch-size 32
    # appends to bench/results/train_speed.json; then `python bench/teachers.py` writes the table

Steps are sampled evenly across one epoch's batch plan, so their lengths follow the epoch's; each
is a full train_step (forward, backward, clipping, AdamW, schedule) of prunekit's Trainer. Threads:
set OMP_NUM_THREADS (recorded with the command). The file keeps every measurement: on a shared
machine the load changes the figures, so each comes with the load average before it.
"""
import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import prunekit
from prunekit.benchmark import glue_dir_option, render_results, require_glue_dir, run_script
from prunekit.data import batch_indices, collate, load_task
from prunekit.io import write_text
from prunekit.machine import load_average
from prunekit.training import Trainer, TrainArgs

PROG = "bench/studies/length_grouping.py"
WARMUP = 3  # steps before the timed ones: the first steps allocate and pick kernels


def measure(task, group_by_length: bool, steps: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    model = prunekit.load_model("minilm", num_labels=task.num_labels)
    trainer = Trainer(model, task, TrainArgs(output=None, batch_size=batch_size))  # only train_step is used
    model.train()
    plan = batch_indices(task.train, batch_size, shuffle=True, seed=0, group_by_length=group_by_length)
    picked = [plan[round(i * (len(plan) - 1) / (steps - 1))] for i in range(steps)]  # spread over the epoch
    for idx in plan[:WARMUP]:
        trainer.train_step(collate([task.train[i] for i in idx]))
    times, cpu, padded = [], [], []
    for idx in picked:
        batch = collate([task.train[i] for i in idx])
        start, start_cpu = time.perf_counter(), time.process_time()
        trainer.train_step(batch)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        padded.append(batch["input_ids"].shape[1])
    sps = sum(times) / len(times)
    return {"group_by_length": group_by_length, "steps_timed": steps, "seconds_per_step": round(sps, 4),
            "median_seconds_per_step": round(sorted(times)[len(times) // 2], 4),
            # CPU seconds of this process: with one thread, about what a step takes on an idle core
            "cpu_seconds_per_step": round(sum(cpu) / len(cpu), 4),
            "mean_padded_length": round(sum(padded) / len(padded), 1), "steps_per_epoch": len(plan),
            "epoch_minutes_estimate": round(sps * len(plan) / 60, 1)}


def main(argv=None) -> int:
    return run_script(PROG, body, argv)


def body(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps per batching (default 40)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="bench/results/train_speed.json", help="the JSON list this run is appended to")
    glue_dir_option(p)
    a = p.parse_args(argv)
    glue_dir = require_glue_dir(a.glue_dir, ["sst2"])
    load_before = [f"{x:.2f}" for x in load_average() or []]  # other processes on the machine slow every step
    task = load_task("sst2", prunekit.load_model("minilm").tokenizer, glue_dir=glue_dir)
    rows = [measure(task, g, a.steps, a.batch_size) for g in (False, True)]
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = shlex.join(["python", PROG, "--steps", str(a.steps), "--batch-size", str(a.batch_size)])
    result = {"command": threads + command,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads", "load_before": load_before, "rows": rows}
    old = render_results(a.out, list, needs=()) if Path(a.out).is_file() else []
    write_text(a.out, json.dumps(old + [result], indent=2))
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training speed of MiniLM on SST-2: seconds per step with plain shuffled batches vs length-grouped
batches (both with dynamic padding), and the epoch time each implies.

Steps are sampled evenly across one epoch's batch plan, so their lengths follow the epoch's; each
is a full train_step (forward, backward, clipping, AdamW, schedule) of prunekit's Trainer.
    GLUE_DIR=../shared/data/glue python bench/train_speed.py --steps 40 --out bench/results/train_speed.json
(--out appends to the file's list of measurements). Threads: set OMP_NUM_THREADS. The data: --glue-dir
or $GLUE_DIR (the script stops with one line without it).
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import prunekit
from gluedir import add_glue_dir_option, require_glue_dir  # bench/, the script's own folder
from prunekit.data import batch_indices, collate, load_task
from prunekit.training import Trainer, TrainArgs


def measure(task, group_by_length: bool, steps: int, batch_size: int, warmup: int = 3) -> dict:
    torch.manual_seed(0)
    model = prunekit.load_model("minilm", num_labels=task.num_labels)
    trainer = Trainer(model, task, TrainArgs(output="unused", batch_size=batch_size))  # only train_step is used
    model.train()
    plan = batch_indices(task.train, batch_size, shuffle=True, seed=0, group_by_length=group_by_length)
    picked = [plan[round(i * (len(plan) - 1) / (steps - 1))] for i in range(steps)]  # spread over the epoch
    for idx in plan[:warmup]:
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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps per mode (default 40)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", help="write the results as JSON here")
    add_glue_dir_option(p)
    a = p.parse_args()
    glue_dir = require_glue_dir(a.glue_dir, ["sst2"], "bench/train_speed.py")
    load_before = open("/proc/loadavg").read().split()[:3]  # other processes on the machine slow every step
    tok = prunekit.load_model("minilm").tokenizer
    task = load_task("sst2", tok, glue_dir=glue_dir)
    rows = [measure(task, g, a.steps, a.batch_size) for g in (False, True)]
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    result = {"command": threads + "python bench/train_speed.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                                                                   if v is not None and k not in ("out", "glue_dir")),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads", "load_before": load_before,
              "rows": rows}
    print(json.dumps(result, indent=2))
    if a.out:  # the file keeps every measurement: the machine is shared and its load changes the figures
        old = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else []
        Path(a.out).write_text(json.dumps(old + [result], indent=2) + "\n")


if __name__ == "__main__":
    main()

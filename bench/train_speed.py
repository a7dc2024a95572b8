"""Training speed of MiniLM on SST-2: seconds per step with plain shuffled batches vs length-grouped
batches (both with dynamic padding), and the epoch time each implies; with --paths, the training
paths (kernels x precision) against eager fp32 on fixed shapes.

    python bench/train_speed.py --paths --out bench/results/train_speed      # -> train_speed_paths.{md,json}

--path restricts --paths to some paths, --seq sets its lengths; --malloc default times under glibc's
own allocator instead of prunekit.machine.keep_freed_memory (process-wide, so an A/B is two processes
run alternately); --malloc-summary FILES... --out OUT tabulates such _paths.json files.

--paths: a fine-tuning step (Trainer.train_step) and a CoFi pruning step (CoFiTrainer.train_step: teacher
forward, student forward under a fresh sample of all five masks, distillation, backward, three
optimiser steps) of MiniLM at batch 32 and sequence 64 and 128 (every token real), for eager fp32
(kernels=torch, the exact reference), sdpa fp32, eager bf16 and sdpa bf16, one step of each in turn
per round (interleaved), median of the rounds.

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


PATHS = [("torch", "fp32"), ("sdpa", "fp32"), ("torch", "bf16"), ("sdpa", "bf16")]
DEFAULT, KEEP = "glibc's default", "keep freed memory"  # the allocator a --paths run timed under


def paths(rounds: int, batch_size: int, seqs=(64, 128), out=None, only=None):
    """Seconds per step of each (kernels, precision) path; see the module docstring."""
    import copy
    import statistics
    from prunekit.cofi import CoFiConfig, ExpectedCost, Gates, Target
    from prunekit.cofi.distill import LayerDistiller, teacher_layers
    from prunekit.cofi.pipeline import train_args
    from prunekit.cofi.trainer import CoFiTrainer
    from prunekit.data import Task
    from prunekit.machine import cpu_flags, keep_freed_memory, load_average
    base = prunekit.load_model("minilm", num_labels=2)
    g = torch.Generator().manual_seed(0)
    rows, load = [], load_average()
    for S in seqs:
        ex = [{"input_ids": torch.randint(1000, 20000, (S,), generator=g).tolist(), "token_type_ids": [0] * S,
               "label": i % 2} for i in range(batch_size)]
        task = Task("synthetic", 2, False, ["a", "b"], ex, {"dev": ex[:4]})
        batch = collate(ex)
        trainers = {}
        for kernels, precision in only or PATHS:
            args = TrainArgs(output="unused", batch_size=batch_size, kernels=kernels, precision=precision)
            trainers["finetune", kernels, precision] = Trainer(copy.deepcopy(base).train(), task, args)
            cfg = CoFiConfig(kernels=kernels, precision=precision, progress=False)
            teacher = copy.deepcopy(base).set_kernels(kernels)
            trainers["cofi", kernels, precision] = CoFiTrainer(
                copy.deepcopy(base).train(), teacher, task, train_args(cfg, Path("unused"), 1000, 10, 2e-5), cfg,
                LayerDistiller(384, teacher_layers(6)), Gates(base.config), ExpectedCost(base.config, "sparsity"),
                Target("sparsity", 0.6), 0, 100)
        for t in trainers.values():  # warm-up
            t.train_step(batch)
        times = {k: [] for k in trainers}
        for r in range(rounds):
            keys = list(trainers)
            keys = keys[r % len(keys):] + keys[:r % len(keys)]
            for k in keys:
                start = time.perf_counter()
                trainers[k].train_step(batch)
                times[k].append(time.perf_counter() - start)
        for (step, kernels, precision), t in times.items():
            med = statistics.median(t)
            rows.append({"seq": S, "step": step, "kernels": kernels, "precision": precision, "median_s": med,
                         "speedup_vs_eager_fp32": statistics.median(times[step, "torch", "fp32"]) / med})
    info = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads, native bf16: {bool(cpu_flags() & {'avx512_bf16', 'amx_bf16'})}",
            "load_before": load, "load_after": load_average(), "rounds": rounds, "batch_size": batch_size, "rows": rows}
    kept = keep_freed_memory()  # what the Trainers above ran under
    info["malloc"] = KEEP if kept else DEFAULT
    command = (f"python bench/train_speed.py --paths --rounds {rounds} --batch-size {batch_size} --seq "
               f"{' '.join(map(str, seqs))} --malloc {'keep' if kept else 'default'}") + (
        " --path " + " --path ".join(f"{k}:{p}" for k, p in only) if only else "")
    lines = ["# Training step speed by path (MiniLM, batch {}, every token real)".format(batch_size), "",
             f"`{command}`; {info['machine']}; allocator: {info['malloc']}; load average before "
             f"{load}, after {info['load_after']}. Median of {rounds} interleaved rounds.", "",
             "| seq | step | kernels | precision | s/step | speed-up vs eager fp32 |", "|---:|---|---|---|---:|---:|"]
    lines += [f"| {r['seq']} | {r['step']} | {r['kernels']} | {r['precision']} | {r['median_s']:.3f} | "
              f"{r['speedup_vs_eager_fp32']:.2f}× |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).with_name(Path(out).name + "_paths.md").write_text(text)
        Path(out).with_name(Path(out).name + "_paths.json").write_text(json.dumps(info, indent=1) + "\n")


def malloc_summary(files: list[str], out: str):
    """One table from --paths runs made alternately with --malloc default and --malloc keep (separate
    processes, the setting being process-wide): median s/step per path and allocator, and each path
    against eager fp32 under glibc's default allocator (the reference before the setting existed)."""
    import statistics
    runs = [json.loads(Path(f).read_text()) for f in files]
    if len({r["batch_size"] for r in runs}) > 1:
        raise SystemExit("bench/train_speed.py: error: the runs differ in batch size")
    by = {}
    for r in runs:
        for row in r["rows"]:
            by.setdefault((row["seq"], row["step"], row["kernels"], row["precision"], r.get("malloc", DEFAULT)),
                          []).append(row["median_s"])
    med = {k: statistics.median(v) for k, v in by.items()}
    lines = ["# Training step speed: glibc's default allocator vs keeping freed memory (prunekit.machine."
             "keep_freed_memory)", "",
             f"Runs (one process each): {', '.join(Path(f).name for f in files)}; "
             f"{runs[0]['machine']}; load averages before/after each run in the JSON. Each cell: median over the "
             "runs of each run's median of its interleaved rounds.", "",
             "| seq | step | kernels | precision | s/step, default malloc | s/step, kept memory | kept vs default | "
             "vs eager fp32 with default malloc |", "|---:|---|---|---|---:|---:|---:|---:|"]
    for seq, step, kernels, precision, _ in sorted(k for k in med if k[4] == DEFAULT):
        d, k = med[seq, step, kernels, precision, DEFAULT], med.get((seq, step, kernels, precision, KEEP))
        cells = f"| {seq} | {step} | {kernels} | {precision} | {d:.3f} |"
        ref = med[seq, step, "torch", "fp32", DEFAULT]
        lines.append(cells + (f" {k:.3f} | {d / k:.2f}× | {ref / k:.2f}× |" if k else " | | |"))
    Path(out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    Path(out).with_suffix(".json").write_text(json.dumps({"files": [Path(f).name for f in files], "runs": runs},
                                                         indent=1) + "\n")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paths", action="store_true", help="time the training paths (kernels x precision) instead")
    p.add_argument("--rounds", type=int, default=8, help="--paths: interleaved rounds (default 8)")
    p.add_argument("--seq", type=int, nargs="+", default=[64, 128], help="--paths: sequence lengths (default 64 128)")
    p.add_argument("--path", action="append", choices=[f"{k}:{p}" for k, p in PATHS],
                   help="--paths: time only these paths (repeatable; eager fp32, torch:fp32, is always timed)")
    p.add_argument("--malloc", choices=("keep", "default"), default="keep",
                   help="keep: the Trainer's allocator setting (prunekit.machine.keep_freed_memory); default: glibc's "
                        "own, as before that setting existed (for an A/B in two processes)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per mode (default 40)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--malloc-summary", nargs="+", metavar="JSON", help="write --out (.md, .json) from --paths "
                   "runs' _paths.json files made with both --malloc settings, and stop")
    add_glue_dir_option(p)
    a = p.parse_args()
    if a.malloc_summary:
        if not a.out:
            p.error("--malloc-summary needs --out")
        return malloc_summary(a.malloc_summary, a.out)
    os.environ["PRUNEKIT_MALLOC"] = "default" if a.malloc == "default" else "keep"  # read at the first Trainer
    if a.paths:
        only = None if not a.path else [("torch", "fp32")] + [tuple(x.split(":")) for x in a.path if x != "torch:fp32"]
        return paths(a.rounds, a.batch_size, seqs=a.seq, out=a.out, only=only)
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

"""Training step speed by path: seconds per fine-tuning step and per CoFi pruning step of MiniLM for
each training path (kernels x precision), against eager fp32, on fixed shapes.

    python bench/train_speed.py --rounds 8                  # -> bench/results/train_speed_paths.{md,json}
    python bench/train_speed.py --path torch:bf16 --seq 16  # eager fp32 and one other path, at seq 16
    PRUNEKIT_MALLOC=default python bench/train_speed.py ... # under glibc's own allocator (recorded)
    python bench/train_speed.py --replot bench/results/train_speed_paths.json   # the table again

A fine-tuning step (Trainer.train_step) and a CoFi pruning step (CoFiTrainer.train_step: teacher
forward, student forward under a fresh sample of all five masks, distillation, backward, three
optimiser steps) of MiniLM at batch 32 and sequence 64 and 128 (every token real), for eager fp32
(kernels=torch, the exact reference), sdpa fp32, eager bf16 and sdpa bf16, one step of each in turn
per round (interleaved), median of the rounds. The allocator the steps ran under
(prunekit.machine.keep_freed_memory, switched off by PRUNEKIT_MALLOC=default) is recorded.
"""
import copy
import itertools
import os
import platform
import statistics
import sys

import torch

import prunekit
from common import COUNT, cofi_trainer, command_line, parser, replot
from prunekit.benchmark import (check_out, environment, script, table, time_interleaved, timed_calls,
                                write_results)
from prunekit.budget import Budget
from prunekit.cofi import CoFiConfig
from prunekit.data import Task, collate
from prunekit.machine import keep_freed_memory, load_average, native_bf16
from prunekit.training import Trainer, TrainArgs

PROG = "bench/train_speed.py"
PATHS = [("torch", "fp32"), ("sdpa", "fp32"), ("torch", "bf16"), ("sdpa", "bf16")]
DEFAULT, KEEP = "glibc's default", "keep freed memory"  # the allocator a run timed under


def synthetic_task(batch_size: int, seq: int, generator) -> Task:
    """batch_size examples of `seq` random tokens (every token real), two labels."""
    ex = [{"input_ids": torch.randint(1000, 20000, (seq,), generator=generator).tolist(), "token_type_ids": [0] * seq,
           "label": i % 2} for i in range(batch_size)]
    return Task("synthetic", 2, False, ["a", "b"], ex, {"dev": ex[:4]})


def trainers_for(base, task: Task, batch_size: int, paths) -> dict:
    """(step, kernels, precision) -> a trainer of a fresh copy of `base`, for each path."""
    trainers = {}
    for kernels, precision in paths:
        args = TrainArgs(output=None, batch_size=batch_size, kernels=kernels, precision=precision)
        trainers["finetune", kernels, precision] = Trainer(copy.deepcopy(base).train(), task, args)
        cfg = CoFiConfig(kernels=kernels, precision=precision, batch_size=batch_size, progress=False)
        trainers["cofi", kernels, precision] = cofi_trainer(copy.deepcopy(base).set_kernels(kernels), task, cfg,
                                                            Budget("sparsity", 0.6))
    return trainers


def measure(rounds: int, batch_size: int, seqs, paths) -> list[dict]:
    """Median seconds per step of every (seq, step, path), and its speed-up over eager fp32."""
    base = prunekit.load_model("minilm", num_labels=2)
    g = torch.Generator().manual_seed(0)
    rows = []
    for seq in seqs:
        task = synthetic_task(batch_size, seq, g)
        batch = collate(task.train)
        trainers = trainers_for(base, task, batch_size, paths)
        runners = {k: timed_calls(t.train_step, itertools.repeat(batch)) for k, t in trainers.items()}
        time_interleaved(runners, 1)  # warm-up: one step each
        times = time_interleaved(runners, rounds)
        for (step, kernels, precision), t in times.items():
            med = statistics.median(t)
            rows.append({"seq": seq, "step": step, "kernels": kernels, "precision": precision, "median_s": med,
                         "speedup_vs_eager_fp32": statistics.median(times[step, "torch", "fp32"]) / med})
    return rows


def markdown(doc: dict) -> str:
    allocator = f"; allocator: {doc['malloc']}" if "malloc" in doc else ""
    rows = [[r["seq"], r["step"], r["kernels"], r["precision"], f"{r['median_s']:.3f}",
             f"{r['speedup_vs_eager_fp32']:.2f}×"] for r in doc["rows"]]
    return "\n".join([f"# Training step speed by path (MiniLM, batch {doc['batch_size']}, every token real)", "",
                      f"`{doc['command']}`; {doc['machine']}{allocator}; load average before {doc['load_before']}, "
                      f"after {doc['load_after']}. Median of {doc['rounds']} interleaved rounds.", "",
                      table(["seq", "step", "kernels", "precision", "s/step", "speed-up vs eager fp32"], rows,
                            "rlllrr")]) + "\n"


def build_parser():
    p = parser(PROG, __doc__, out="bench/results/train_speed_paths")
    p.add_argument("--rounds", type=COUNT, default=8, help="interleaved rounds (default 8)")
    p.add_argument("--seq", type=COUNT, nargs="+", default=[64, 128], help="sequence lengths (default 64 128)")
    p.add_argument("--path", action="append", choices=[f"{k}:{p}" for k, p in PATHS],
                   help="time only these paths (repeatable; eager fp32, torch:fp32, is always timed)")
    p.add_argument("--batch-size", type=COUNT, default=32)
    return p


@script(PROG)
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.replot:
        return replot(args.replot, markdown, needs=("command", "machine", "load_before", "load_after", "rounds",
                                                    "batch_size", "rows"))
    check_out(args.out)
    paths = PATHS if not args.path else [("torch", "fp32")] + [tuple(x.split(":")) for x in args.path
                                                             if x != "torch:fp32"]
    load = load_average()
    rows = measure(args.rounds, args.batch_size, args.seq, paths)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
               f"threads, native bf16: {native_bf16('cpu')}")
    malloc = "PRUNEKIT_MALLOC=default " if os.environ.get("PRUNEKIT_MALLOC") == "default" else ""
    doc = {"command": malloc + command_line(PROG, argv), "machine": machine,
           "environment": environment(torch.get_num_threads()), "load_before": load, "load_after": load_average(), "rounds": args.rounds, "batch_size": args.batch_size,
           "malloc": KEEP if keep_freed_memory() else DEFAULT, "rows": rows}  # the Trainers called it: as they ran
    write_results(args.out, markdown(doc), doc)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

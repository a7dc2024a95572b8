"""Study (finished): does torch.compile pay for MiniLM training on this CPU? One fine-tuning step
(forward, backward, AdamW) at batch 32, every token real, eager vs torch.compile, both under bf16
autocast (the fast CPU path) and in fp32; compile time (the first compiled step) reported apart from
the steady state. The answer is in bench/results/compile_probe.md; prunekit does not compile.

    python bench/studies/compile_probe.py --seq 128 --rounds 6   # -> bench/results/compile_probe.{md,json}
    python bench/studies/compile_probe.py --replot bench/results/compile_probe.json

Steady state: median of interleaved rounds after one warm-up step each. Shapes are fixed here; real
SST-2 batches vary in length (length-grouped), so a compiled model recompiles per new shape unless
compiled with dynamic shapes (`--dynamic`), which is also timed when given.
"""
import argparse
import copy
import itertools
import shlex
import statistics
import sys
import time

import torch

import prunekit
from prunekit.benchmark import rewrite_table, run_script, table, time_interleaved, timed_calls, write_results
from prunekit.machine import load_average

PROG = "bench/studies/compile_probe.py"


def step_of(model, compiled: bool, dynamic: bool, precision: str):
    """A training step of (a compiled view of) `model` on a batch: forward, backward, AdamW."""
    run = torch.compile(model, dynamic=dynamic) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = run(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def markdown(doc: dict) -> str:
    rows = [[r["mode"], r["precision"], f"{r['first_step_s']:.1f}", f"{r['median_s']:.3f}",
             f"{r['speedup_vs_eager_fp32']:.2f}×"] for r in doc["rows"]]
    return "\n".join(["# torch.compile for a MiniLM fine-tuning step (CPU)", "",
                      f"`{doc['command']}`; torch {doc['torch']}, {doc['threads']} threads, batch {doc['batch_size']}, "
                      f"seq {doc['seq']}, every token real; median of {doc['rounds']} interleaved rounds; load average "
                      f"after {doc['load_after']}.", "",
                      table(["mode", "precision", "first step (compile) s", "s/step", "speed-up vs eager fp32"], rows,
                            "llrrr")]) + "\n"


def main(argv=None) -> int:
    return run_script(PROG, body, argv)


def body(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--dynamic", action="store_true", help="also torch.compile(dynamic=True)")
    p.add_argument("--out", default="bench/results/compile_probe")
    p.add_argument("--replot", metavar="JSON", help="only write the table of an earlier OUT.json again")
    args = p.parse_args(argv)
    if args.replot:
        print("\n".join(rewrite_table(args.replot, markdown)))
        return 0
    base = prunekit.load_model("minilm", num_labels=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (args.batch_size, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": torch.arange(args.batch_size) % 2}
    modes = ["eager", "compiled"] + (["compiled-dynamic"] if args.dynamic else [])
    runners = {(mode, precision): timed_calls(step_of(copy.deepcopy(base).train(), mode != "eager",
                                                      mode == "compiled-dynamic", precision), itertools.repeat(batch))
               for precision in ("fp32", "bf16") for mode in modes}
    first = {}
    for key, run in runners.items():  # the first step: compilation for the compiled variants
        start = time.perf_counter()
        run()
        first[key] = time.perf_counter() - start
        print(f"{key}: first step {first[key]:.1f} s", file=sys.stderr, flush=True)
    times = time_interleaved(runners, args.rounds)
    eager = statistics.median(times["eager", "fp32"])
    rows = [{"mode": mode, "precision": precision, "first_step_s": round(first[mode, precision], 2),
             "median_s": round(statistics.median(t), 4),
             "speedup_vs_eager_fp32": round(eager / statistics.median(t), 3)}
            for (mode, precision), t in times.items()]
    doc = {"command": shlex.join(["python", PROG, *argv]), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "seq": args.seq, "batch_size": args.batch_size, "rounds": args.rounds,
           "load_after": load_average(), "rows": rows}
    write_results(args.out, markdown(doc), doc)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Study (finished): training step speed under glibc's default allocator vs keeping freed memory
(prunekit.machine.keep_freed_memory), from bench/train_speed.py runs made alternately under each,
one process per run (the setting is process-wide). Why the Trainer keeps freed memory; the table is
bench/results/train_speed_malloc.md, the reading bench/results/train_speed.md.

    PRUNEKIT_MALLOC=default python bench/train_speed.py --rounds 4 --path torch:bf16 --out runs/ab-default-1
    python bench/train_speed.py --rounds 4 --path torch:bf16 --out runs/ab-keep-1        # and so on, alternating
    python bench/studies/malloc_ab.py runs/ab-default-1.json runs/ab-keep-1.json ... --out bench/results/train_speed_malloc
    python bench/studies/malloc_ab.py --replot bench/results/train_speed_malloc.json

Each cell: the median over the runs of each run's median s/step, per path and allocator, and each
path against eager fp32 under glibc's default allocator (the reference before the setting existed).
"""
import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from prunekit.benchmark import rewrite_table, run_script, table, write_results
from prunekit.errors import PrunekitError

PROG = "bench/studies/malloc_ab.py"
DEFAULT, KEEP = "glibc's default", "keep freed memory"  # the allocator labels bench/train_speed.py records


def markdown(doc: dict) -> str:
    runs = doc["runs"]
    if len({r["batch_size"] for r in runs}) > 1:
        raise PrunekitError("the runs differ in batch size")
    by = {}
    for r in runs:
        for row in r["rows"]:
            by.setdefault((row["seq"], row["step"], row["kernels"], row["precision"], r.get("malloc", DEFAULT)),
                          []).append(row["median_s"])
    med = {k: statistics.median(v) for k, v in by.items()}
    rows = []
    for seq, step, kernels, precision, _ in sorted(k for k in med if k[4] == DEFAULT):
        d, k = med[seq, step, kernels, precision, DEFAULT], med.get((seq, step, kernels, precision, KEEP))
        ref = med[seq, step, "torch", "fp32", DEFAULT]
        rows.append([seq, step, kernels, precision, f"{d:.3f}", *([f"{k:.3f}", f"{d / k:.2f}×", f"{ref / k:.2f}×"]
                                                                  if k else ["", "", ""])])
    return "\n".join(["# Training step speed: glibc's default allocator vs keeping freed memory (prunekit.machine."
                      "keep_freed_memory)", "", f"Command: `{doc['command']}`  ",
                      f"Runs (one process each): {', '.join(doc['files'])}; {runs[0]['machine']}; load averages "
                      "before/after each run in the JSON. Each cell: median over the runs of each run's median of its "
                      "interleaved rounds.", "",
                      table(["seq", "step", "kernels", "precision", "s/step, default malloc", "s/step, kept memory",
                             "kept vs default", "vs eager fp32 with default malloc"], rows, "rlllrrrr")]) + "\n"


def main(argv=None) -> int:
    return run_script(PROG, body, argv)


def body(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", metavar="JSON", help="bench/train_speed.py results (OUT.json), both allocators")
    p.add_argument("--out", default="bench/results/train_speed_malloc")
    p.add_argument("--replot", metavar="JSON", help="only write the table of an earlier OUT.json again")
    args = p.parse_args(argv)
    if args.replot:
        print("\n".join(rewrite_table(args.replot, markdown, needs=("command", "files", "runs"))))
        return 0
    if not args.runs:
        p.error("give the bench/train_speed.py results to compare")
    doc = {"command": shlex.join(["python", PROG, *argv]),
           "files": [Path(f).name for f in args.runs], "runs": [json.loads(Path(f).read_text()) for f in args.runs]}
    write_results(args.out, markdown(doc), doc)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

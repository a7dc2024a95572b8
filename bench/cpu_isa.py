"""Training speed and `make demo` on this CPU as it is and as an AVX2-only CPU (emulated), side by side.

    python bench/cpu_isa.py --steps --rounds 3                   # -> bench/results/cpu_isa.{md,json}
    python bench/cpu_isa.py --demo --out bench/results/cpu_isa_demo   # bench/demo.py --fresh, each way
    python bench/cpu_isa.py --replot bench/results/cpu_isa.json  # the table again from the JSON

The AVX2 emulation runs everything in a child process with PRUNEKIT_CPU_FEATURES="avx avx2 fma f16c"
(prunekit's own dispatch: no native bf16) and ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2,
MKL_ENABLE_INSTRUCTIONS=AVX2 (torch's kernels); the cores, caches and clock stay this machine's, and
ONNX Runtime cannot be capped (it reads cpuid), so an AVX2 machine's figures will differ. The two
ways alternate (native, AVX2, native, ...) and the load average is recorded with every run: compare
only figures from the same file.

--steps: `bench/train_speed.py` (a fine-tuning step and a CoFi pruning step of MiniLM, batch 32, every
token real) for each path of --paths at each --seq, one process per way and round.
--demo: `bench/demo.py --fresh` into WORK/cpu_isa-WAY, its wall time and per-step times (demo.md).
The child processes write under --work (default runs/) and log their output to WORK/cpu_isa.log.
"""
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from common import COUNT, command_line, parser, replot
from prunekit.benchmark import check_out, render_results, run_logged, script, table, write_results
from prunekit.machine import cpu_flags, cpu_name
from train_speed import PATHS

PROG = "bench/cpu_isa.py"
BENCH = Path(__file__).resolve().parent
AVX2 = {"PRUNEKIT_CPU_FEATURES": "avx avx2 fma f16c", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
WAYS = {"native": {}, "avx2 (emulated)": AVX2}
EMULATION = ("the AVX2 way is emulated (see bench/cpu_isa.py: torch's kernels capped at AVX2, prunekit told the CPU "
             "has no bf16; same cores and clock; ONNX Runtime not capped)")


def ways(r: int):
    """(way, its environment, its short name) in round r's order: the order alternates every round."""
    order = list(WAYS.items()) if r % 2 == 0 else list(reversed(WAYS.items()))
    return [(way, env, "avx2" if env else "native") for way, env in order]


def child(cmd: list[str], env: dict, log: Path) -> dict:
    """Run a bench script in a child process under env; its wall time and the load around it."""
    timing = run_logged([sys.executable, *map(str, cmd)], log, env=env)
    return {"seconds": timing["wall_seconds"], "load_before": timing["load_before"], "load_after": timing["load_after"]}


def steps(args) -> dict:
    runs = []
    for r in range(args.rounds):
        for way, env, short in ways(r):
            out = Path(args.work) / f"cpu_isa_steps_{r}_{short}"
            cmd = [BENCH / "train_speed.py", "--rounds", args.inner_rounds, "--seq", *args.seq, "--out", out]
            timing = child(cmd + [a for p in args.paths for a in ("--path", p)], env, Path(args.work) / "cpu_isa.log")
            rows = render_results(out.with_name(out.name + ".json"), lambda doc: doc["rows"])
            runs.append({"way": way, "round": r, "load_before": timing["load_before"],
                         "load_after": timing["load_after"], "rows": rows})
    cells = {}
    for run in runs:
        for row in run["rows"]:
            cells.setdefault((row["seq"], row["step"], row["kernels"], row["precision"], run["way"]), []).append(
                row["median_s"])
    return {"runs": runs, "median_s": [{"seq": k[0], "step": k[1], "kernels": k[2], "precision": k[3], "way": k[4],
                                        "median_s": statistics.median(v)} for k, v in sorted(cells.items())]}


def demo(args) -> dict:
    runs = []
    for r in range(args.rounds):
        for way, env, short in ways(r):
            out = Path(args.work) / f"cpu_isa-{short}"
            timing = child([BENCH / "demo.py", "--fresh", "--out", out], env, Path(args.work) / "cpu_isa.log")
            last = (out / "demo.md").read_text().split("demo wall time", 1)[1].splitlines()[0]
            runs.append({"way": way, "round": r, **timing, "demo_line": "demo wall time" + last})
    return {"runs": runs}


def machine() -> str:
    """The CPU, the newest of its vector extensions that matters here, its cores and torch."""
    flags = cpu_flags()
    isa = ("AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags
           else "AVX2" if "avx2" in flags else "no AVX2")
    return f"{cpu_name()} ({isa}), {os.cpu_count()} cores, torch {torch.__version__}"


def markdown(doc: dict) -> str:
    """OUT.md from the results document: --steps' table (a `median_s` per cell) or --demo's runs."""
    kind = "steps" if "median_s" in doc else "demo"
    threads = f" with OMP_NUM_THREADS={doc['omp_num_threads']}" if doc.get("omp_num_threads") else ""
    note = f": {doc['note']}" if doc.get("note") else "."
    lines = [f"# This CPU natively vs as an AVX2-only CPU (emulated): "
             f"{'training steps' if kind == 'steps' else '`make demo`'}", "",
             f"`{doc['command']}`{threads}, {doc['date']}; {doc['machine']}; {EMULATION}. Load averages (1, 5, 15 min) "
             f"before and after each run{note}", ""]
    if kind == "steps":
        lines += [table(["seq", "step", "kernels", "precision", "way", "median s/step"],
                        [[c["seq"], c["step"], c["kernels"], c["precision"], c["way"], f"{c['median_s']:.3f}"]
                         for c in doc["median_s"]], "rllllr")]
        lines += ["", "Runs: " + "; ".join(f"{r['way']} (round {r['round']}): load {r['load_before']} -> "
                                          f"{r['load_after']}" for r in doc["runs"])]
    else:
        lines += [table(["round", "way", "wall s", "load before", "load after", "per step (demo.md)"],
                        [[r["round"], r["way"], f"{r['seconds']:.0f}", r["load_before"], r["load_after"],
                          r["demo_line"]] for r in doc["runs"]], "rlrlll")]
    analysis = doc.get("analysis")  # a reading of the run written afterwards, if any
    return "\n".join(lines) + "\n" + (f"\n{analysis}" if analysis else "")


def build_parser():
    p = parser(PROG, __doc__, out="bench/results/cpu_isa")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--steps", action="store_true", help="training steps per path (bench/train_speed.py)")
    what.add_argument("--demo", action="store_true", help="bench/demo.py --fresh")
    p.add_argument("--rounds", type=COUNT, default=2, help="rounds of (native, AVX2) alternating (default 2)")
    p.add_argument("--inner-rounds", type=COUNT, default=4,
                   help="--steps: interleaved rounds within each process (default 4)")
    p.add_argument("--seq", type=COUNT, nargs="+", default=[32, 64], help="--steps: sequence lengths (default 32 64)")
    p.add_argument("--paths", nargs="+", default=["torch:fp32", "sdpa:fp32", "torch:bf16"],
                   choices=[f"{k}:{p}" for k, p in PATHS],
                   help="--steps: kernels:precision paths (default torch:fp32 sdpa:fp32 torch:bf16)")
    p.add_argument("--work", default="runs", help="where the child processes write (default runs)")
    return p


@script(PROG)
def main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.replot:
        return replot(args.replot, markdown, needs=("command", "date", "machine", "runs"))
    if not (args.steps or args.demo):
        p.error("one of the arguments --steps --demo is required")
    check_out(args.out)
    doc = {"command": command_line(PROG, argv), "date": time.strftime("%Y-%m-%d"), "machine": machine(),
           "omp_num_threads": int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit()
           else None, **(steps(args) if args.steps else demo(args))}
    write_results(args.out, markdown(doc), doc)
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

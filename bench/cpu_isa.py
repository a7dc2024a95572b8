"""Training speed and `make demo` on this CPU as it is and as an AVX2-only CPU (emulated), side by side.

    python bench/cpu_isa.py --steps --rounds 3 --out bench/results/cpu_isa       # training steps per path
    python bench/cpu_isa.py --demo --out bench/results/cpu_isa_demo              # bench/demo.py --fresh, each way

The AVX2 emulation runs everything in a child process with PRUNEKIT_CPU_FEATURES="avx avx2 fma f16c"
(prunekit's own dispatch: no native bf16) and ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2,
MKL_ENABLE_INSTRUCTIONS=AVX2 (torch's kernels); the cores, caches and clock stay this machine's, and
ONNX Runtime cannot be capped (it reads cpuid), so an AVX2 machine's figures will differ. The two
ways alternate (native, AVX2, native, ...) and the load average is recorded with every run: compare
only figures from the same file.

--steps: `bench/train_speed.py --paths` (a fine-tuning step and a CoFi pruning step of MiniLM, batch
32, every token real) for each path of --paths at each --seq, one process per way and round.
--demo: `bench/demo.py --fresh` into runs/cpu_isa-WAY, its wall time and per-step times (demo.md).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"PRUNEKIT_CPU_FEATURES": "avx avx2 fma f16c", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
WAYS = {"native": {}, "avx2 (emulated)": AVX2}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(cmd: list[str], env: dict) -> float:
    """Run cmd from the repository root under env (on top of this one); its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, check=True)
    return time.perf_counter() - start


def steps(args) -> dict:
    runs = []
    for r in range(args.rounds):
        for way, env in (WAYS.items() if r % 2 == 0 else reversed(WAYS.items())):
            out = ROOT / "runs" / f"cpu_isa_steps_{r}_{'avx2' if env else 'native'}"
            out.parent.mkdir(exist_ok=True)
            before = load()
            cmd = [sys.executable, "bench/train_speed.py", "--paths", "--rounds", str(args.inner_rounds), "--seq",
                   *map(str, args.seq), "--out", str(out)] + [a for p in args.paths for a in ("--path", p)]
            run(cmd, env)
            info = json.loads(out.with_name(out.name + "_paths.json").read_text())
            runs.append({"way": way, "round": r, "load_before": before, "load_after": load(), "rows": info["rows"]})
    cells = {}
    for run_ in runs:
        for row in run_["rows"]:
            cells.setdefault((row["seq"], row["step"], row["kernels"], row["precision"], run_["way"]), []).append(
                row["median_s"])
    med = {k: statistics.median(v) for k, v in cells.items()}
    return {"runs": runs, "median_s": [{"seq": k[0], "step": k[1], "kernels": k[2], "precision": k[3], "way": k[4],
                                        "median_s": v} for k, v in sorted(med.items())]}


def demo(args) -> dict:
    runs = []
    for r in range(args.rounds):
        for way, env in (WAYS.items() if r % 2 == 0 else reversed(WAYS.items())):
            out = f"runs/cpu_isa-{'avx2' if env else 'native'}"
            before = load()
            seconds = run([sys.executable, "bench/demo.py", "--fresh", "--out", out], env)
            last = (ROOT / out / "demo.md").read_text().split("demo wall time", 1)[1].splitlines()[0]
            runs.append({"way": way, "round": r, "seconds": round(seconds, 1), "load_before": before,
                         "load_after": load(), "demo_line": "demo wall time" + last})
    return {"runs": runs}


def table(kind: str, result: dict, command: str) -> str:
    lines = [f"# {'Training steps' if kind == 'steps' else 'make demo'}: this CPU natively vs as an AVX2-only CPU "
             "(emulated)", "", f"`{command}`; {os.cpu_count()} cores; the AVX2 way is emulated (see "
             "bench/cpu_isa.py: torch's kernels capped at AVX2, prunekit told the CPU has no bf16; same cores "
             "and clock; ONNX Runtime not capped). Load averages (1, 5, 15 min) before and after each run.", ""]
    if kind == "steps":
        lines += ["| seq | step | kernels | precision | way | median s/step |", "|---:|---|---|---|---|---:|"]
        lines += [f"| {c['seq']} | {c['step']} | {c['kernels']} | {c['precision']} | {c['way']} | "
                  f"{c['median_s']:.3f} |" for c in result["median_s"]]
        lines += ["", "Runs: " + "; ".join(f"{r['way']} (round {r['round']}): load {r['load_before']} -> "
                                          f"{r['load_after']}" for r in result["runs"])]
    else:
        lines += ["| round | way | wall s | load before | load after | per step (demo.md) |",
                  "|---:|---|---:|---|---|---|"]
        lines += [f"| {r['round']} | {r['way']} | {r['seconds']:.0f} | {r['load_before']} | {r['load_after']} | "
                  f"{r['demo_line']} |" for r in result["runs"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--steps", action="store_true", help="training steps per path (bench/train_speed.py --paths)")
    what.add_argument("--demo", action="store_true", help="bench/demo.py --fresh")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (native, AVX2) alternating (default 2)")
    p.add_argument("--inner-rounds", type=int, default=4, help="--steps: interleaved rounds within each process")
    p.add_argument("--seq", type=int, nargs="+", default=[32, 64], help="--steps: sequence lengths (default 32 64)")
    p.add_argument("--paths", nargs="+", default=["torch:fp32", "sdpa:fp32", "torch:bf16"],
                   help="--steps: kernels:precision paths (default torch:fp32 sdpa:fp32 torch:bf16)")
    p.add_argument("--out", required=True, help="write OUT.md and OUT.json")
    args = p.parse_args(argv)
    kind = "steps" if args.steps else "demo"
    result = steps(args) if args.steps else demo(args)
    command = "python bench/cpu_isa.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result.update({"command": command, "cores": os.cpu_count()})
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(args.out).with_suffix(".md").write_text(table(kind, result, command))
    print(table(kind, result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())

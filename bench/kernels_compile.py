"""The Triton kernels compiled for GPUs on a machine without one, as a table (prunekit.kernels.compile_check).

    python bench/kernels_compile.py                 # -> bench/results/kernels_compile.{md,json}
    python bench/kernels_compile.py --cache .pytest_cache/d/kernels_compile/results.json   # what the tests compiled
    python bench/kernels_compile.py --replot bench/results/kernels_compile.json            # the table again

Every launch a masked training step makes (attention forward and backward, the FFN's GEMMs; BERT-base
and MiniLM shapes; fp32, bf16, fp16; every autotuning config) compiled for sm_80 and sm_90, with the
tensor-core instructions, registers, spills and shared memory of each, and the problems
tests/test_kernels_compile.py asserts there are none of. Needs TRITON_INTERPRET unset. Exits 1 when
there is a problem (the table is written all the same).
"""
import os
import sys
from pathlib import Path

from common import COUNT, command_line, parser, replot
from prunekit.benchmark import check_out, script, table, write_results
from prunekit.kernels import compile_check
from prunekit.machine import load_average

PROG = "bench/kernels_compile.py"


def markdown(doc: dict) -> str:
    results, seconds = doc["results"], doc["seconds"]
    load = ", ".join(f"{x:.1f}" for x in doc["load_average"]) if doc["load_average"] else "unknown"
    lines = [f"# Triton kernels compiled for GPUs (triton {doc['triton']}, no GPU needed)", "",
             f"Written by `{doc['command']}` (tests/test_kernels_compile.py runs the same checks). One row per "
             "kernel × target × dtype × shape × autotuning config the launchers use (identical specialisations once). "
             "fp32 runs its dots in TF32. mma / wgmma: tensor-core instructions in the PTX; regs, spills (stores/loads "
             f"bytes): ptxas -v; shared: bytes Triton allocates (limit sm_80 {compile_check.SHARED_LIMIT[80]}, sm_90 "
             f"{compile_check.SHARED_LIMIT[90]}). {len(results)} compilations took "
             f"{sum(r['seconds'] for r in results):.0f} s of compile time (each timed when it ran, cached ones in an "
             f"earlier run); this run {seconds:.0f} s with load average {load} at its end."]
    lines += ["", doc["note"]] if doc.get("note") else []
    lines += ["", table(["kernel", "target", "dtype", "shape", "config", "compiled", "mma.sync", "wgmma", "regs",
                         "spills", "shared"],
                        [[r["kernel"], f"sm_{r['target']}", r["dtype"], r["shape"], r["config"],
                          "yes" if r["ok"] else "NO: " + r["error"][:80], r["mma_sync"], r["wgmma"], r["registers"],
                          f"{r['spill_stores']}/{r['spill_loads']}", r["shared"]] for r in results], "llllllrrrrr")]
    bad = compile_check.problems(results) + [f"{name}: compiled by no launch" for name in doc.get("uncovered", [])]
    lines += ["", f"Problems: {len(bad)}" + ("" if not bad else "\n\n" + "\n".join(f"- {b}" for b in bad))]
    return "\n".join(lines) + "\n"


def build_parser():
    p = parser(PROG, __doc__, out="bench/results/kernels_compile")
    p.add_argument("--cache", help="JSON file of earlier compile results, read and updated (default: none, "
                   "every kernel is compiled)")
    p.add_argument("--jobs", type=COUNT, default=os.cpu_count() or 1, help="compile processes (default: one per core)")
    p.add_argument("--kernels", type=lambda t: t.split(","), help="only these kernels (comma-separated names)")
    return p


@script(PROG)
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.replot:
        return replot(args.replot, markdown, needs=("command", "triton", "seconds", "load_average", "results"))
    check_out(args.out)
    compile_check.check_environment()
    import triton
    done = compile_check.run(args.kernels, Path(args.cache) if args.cache else None, args.jobs)
    doc = {"command": command_line(PROG, argv), "triton": triton.__version__, "load_average": load_average(), **done}
    write_results(args.out, markdown(doc), doc)
    print(markdown(doc))
    return 1 if compile_check.problems(done["results"]) or done["uncovered"] else 0


if __name__ == "__main__":
    sys.exit(main())

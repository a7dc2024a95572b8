"""Does torch.compile pay for MiniLM training on this CPU? One fine-tuning step (forward, backward,
AdamW) at batch 32, every token real, eager vs torch.compile, both under bf16 autocast (the fast CPU
path) and in fp32; compile time (the first compiled step) reported apart from the steady state.

    python bench/compile_probe.py --seq 128 --rounds 6      # writes bench/results/compile_probe.{md,json}

Steady state: median of interleaved rounds after one warm-up step each. Shapes are fixed here; real
SST-2 batches vary in length (length-grouped), so a compiled model recompiles per new shape unless
compiled with dynamic shapes (`--dynamic`), which is also timed when given.
"""
import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prunekit  # noqa: E402
from prunekit.machine import load_average  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--dynamic", action="store_true", help="also torch.compile(dynamic=True)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "compile_probe"))
    args = p.parse_args()
    base = prunekit.load_model("minilm", num_labels=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (args.batch_size, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
             "labels": torch.arange(args.batch_size) % 2}
    variants = {}
    for precision in ("fp32", "bf16"):
        for mode in ["eager", "compiled"] + (["compiled-dynamic"] if args.dynamic else []):
            model = copy.deepcopy(base).train()
            run = model if mode == "eager" else torch.compile(model, dynamic=mode == "compiled-dynamic")
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

            def step(run=run, opt=opt, precision=precision):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = run(**batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss.item()
            variants[mode, precision] = step
    first = {}
    for key, step in variants.items():  # the first step: compilation for the compiled variants
        start = time.perf_counter()
        step()
        first[key] = time.perf_counter() - start
        print(f"{key}: first step {first[key]:.1f} s", file=sys.stderr, flush=True)
    times = {k: [] for k in variants}
    keys = list(variants)
    for r in range(args.rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            start = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - start)
    rows = []
    for (mode, precision), t in times.items():
        med = statistics.median(t)
        rows.append({"mode": mode, "precision": precision, "first_step_s": round(first[mode, precision], 2),
                     "median_s": round(med, 4),
                     "speedup_vs_eager_fp32": round(statistics.median(times["eager", "fp32"]) / med, 3)})
    info = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "seq": args.seq, "batch_size": args.batch_size, "rounds": args.rounds, "load_after": load_average(),
            "rows": rows}
    Path(args.out).with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    lines = ["# torch.compile for a MiniLM fine-tuning step (CPU)", "",
             f"`{info['command']}`; torch {torch.__version__}, {info['threads']} threads, batch {args.batch_size}, "
             f"seq {args.seq}, every token real; median of {args.rounds} interleaved rounds; load average after "
             f"{info['load_after']}.", "", "| mode | precision | first step (compile) s | s/step | speed-up vs eager fp32 |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['precision']} | {r['first_step_s']:.1f} | {r['median_s']:.3f} | "
              f"{r['speedup_vs_eager_fp32']:.2f}× |" for r in rows]
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Study (finished): ORT-CPU latency of exported models: dense MiniLM vs a pruned MiniLM, plain vs
optimised graph, fp32 vs int8, at batch {1, 32} x seq {32, 128}, with a fixed thread count. It came
before the compress runs existed; bench/latency.py times real compact models the same way.

    python bench/studies/export_latency.py              # writes bench/results/export.{md,json}
    python bench/studies/export_latency.py --batches 1 8 32 --seqs 32 128 384 --threads 2 --budget 40
    python bench/studies/export_latency.py --replot bench/results/export.json

The pruned model is a stand-in built here: in every layer it keeps the 6 of 12 heads and the 768 of
1536 FFN units with the largest weight norms (no training, so its accuracy means nothing; only its
shape and speed do). Real masks come from `prunekit compress` / post-training pruning.
Every model variant is exported with prunekit.export (so each graph timed here passed the parity
check), loaded once in an ORT CPU session with intra-op threads fixed, warmed up by count and time,
and then, per (batch, seq) cell, all eight sessions are timed round-robin with the order rotating
every round, so that machine drift falls on dense and pruned alike. Sessions run with intra-op
spinning off: with spinning on, the idle threads of the session that just ran busy-wait on the same
cores the next session needs.
"""
import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import prunekit
from prunekit.benchmark import (environment, rewrite_table, rounds_for, run_script, summarise, time_interleaved,
                                warm_up, write_results)
from prunekit.export import OnnxClassifier, export_onnx
from prunekit.machine import load_average

PROG = "bench/studies/export_latency.py"
VARIANTS = {  # name -> export_onnx keyword arguments
    "fp32": {}, "fp32 optimised": {"optimize": True},
    "int8": {"quantize": "int8"}, "int8 optimised": {"optimize": True, "quantize": "int8"},
}
PRUNED_LABEL = "MiniLM magnitude-pruned (50% heads, 50% FFN per layer; stand-in, untrained)"


@torch.no_grad()
def magnitude_pruned(dense, keep: float = 0.5):
    """Keep, in every layer, the heads and FFN units whose weights have the largest L2 norm."""
    cfg = dense.config
    H, Fw, dh = cfg.num_heads[0], cfg.ffn_dim[0], cfg.head_dim
    z_head, z_int = torch.zeros(cfg.num_layers, H), torch.zeros(cfg.num_layers, Fw)
    for l, layer in enumerate(dense.bert.layers):
        a, f = layer.attention, layer.ffn
        rows = lambda w: w.view(H, dh, -1).pow(2).sum((1, 2))                          # (H,) per-head row norms
        score = rows(a.query.weight) + rows(a.key.weight) + rows(a.value.weight) + \
            a.output.weight.view(-1, H, dh).pow(2).sum((0, 2))                           # O: columns of head h
        z_head[l, score.topk(int(H * keep)).indices] = 1
        unit = f.up.weight.pow(2).sum(1) + f.down.weight.pow(2).sum(0)                  # (F,) up rows, down cols
        z_int[l, unit.topk(int(Fw * keep)).indices] = 1
    return prunekit.prune(dense, prunekit.Masks(z_head=z_head, z_int=z_int))


def fixed_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def runner(clf, batch):
    def run():
        clf(batch)  # returns None: time_interleaved then times the call with its own clock
    return run


def main(argv=None) -> int:
    return run_script(PROG, body, argv)


def body(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seqs", type=int, nargs="+", default=[32, 128])
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    p.add_argument("--budget", type=float, default=30.0, help="seconds of timed rounds per cell (default 30)")
    p.add_argument("--min-rounds", type=int, default=15)
    p.add_argument("--max-rounds", type=int, default=200)
    p.add_argument("--cache", default="runs/export-bench", help="where the exports are written")
    p.add_argument("--out", default="bench/results/export", help="writes OUT.md and OUT.json")
    p.add_argument("--replot", metavar="JSON", help="only write the table of an earlier OUT.json again")
    args = p.parse_args(argv)
    if args.replot:
        print("\n".join(rewrite_table(args.replot, lambda doc: markdown(doc) + "\n" + doc.get("analysis", ""))))
        return 0
    command = shlex.join(["python", PROG, *argv])
    load_start = load_average()

    dense = prunekit.load_model("minilm", num_labels=2)
    models = {"dense": dense, "pruned": magnitude_pruned(dense)}
    cache = Path(args.cache)
    exports, sessions = {}, {}
    for (name, model) in tqdm(models.items(), desc="export", leave=False):
        for variant, kwargs in VARIANTS.items():
            out = cache / name / variant.replace(" ", "-")
            report = export_onnx(model, out, overwrite=True, source=name, **kwargs)
            exports[name, variant] = {
                "size_mb": report["size_bytes"] / 2**20,
                "parity": {k: v["max_abs_diff"] for k, v in report["parity"].items()},
                "int8_drift": report.get("quantized", {}).get("max_abs_diff"),
                "attention_nodes": report.get("fusion", {}).get("attention_nodes"),
                "nodes": sum(report["node_counts"]["final"].values())}
            # no spinning: eight sessions share two cores, and idle spinning threads of one would slow the next
            sessions[name, variant] = OnnxClassifier(out, threads=args.threads, spinning=False)

    rows = []
    cells = [(b, s) for b in args.batches for s in args.seqs]
    for b, s in tqdm(cells, desc="cells"):
        batch = fixed_batch(b, s, dense.config.vocab_size)
        runners = {key: runner(clf, batch) for key, clf in sessions.items()}
        for fn in runners.values():
            warm_up(fn, min_calls=3, min_seconds=0.3)
        start = time.perf_counter()
        time_interleaved(runners, 1)
        rounds = rounds_for(time.perf_counter() - start, args.budget, args.min_rounds, args.max_rounds)
        times = time_interleaved(runners, rounds)
        stats = {key: summarise(t, b) for key, t in times.items()}
        for (name, variant), st in stats.items():
            rows.append({"model": name, "variant": variant, "batch": b, "seq": s, "rounds": rounds,
                         "p50_ms": st.p50_ms, "p90_ms": st.p90_ms, "seq_per_s": st.throughput,
                         "speedup_vs_dense_same_variant": stats["dense", variant].p50_ms / st.p50_ms,
                         "speedup_vs_dense_fp32_plain": stats["dense", "fp32"].p50_ms / st.p50_ms})

    env = {**environment(args.threads), "loadavg_start": load_start, "loadavg_end": load_average()}
    cfg = models["pruned"].config
    result = {"command": command, "environment": env, "pruned_model": PRUNED_LABEL,
              "pruned_structure": {"num_heads": cfg.num_heads, "ffn_dim": cfg.ffn_dim, "hidden_size": cfg.hidden_size},
              "exports": [{"model": m, "variant": v, **e} for (m, v), e in exports.items()], "rows": rows}
    write_results(args.out, markdown(result) + "\n", result)
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    env = r["environment"]
    lines = ["# ORT-CPU latency of exported models: dense vs pruned MiniLM, plain vs optimised, fp32 vs int8", "",
             f"Command: `{r['command']}`  ",
             f"Machine: {env['cpu']}, {env['cpu_count']} cores, ORT intra-op threads {env['threads']} (spinning off), "
             "inter-op 1, graph optimisation level ALL; "
             f"onnxruntime {env['onnxruntime']}, torch {env['torch']}; load average {env['loadavg_start']} at the start, "
             f"{env['loadavg_end']} at the end (other jobs shared the machine; dense and pruned were interleaved, "
             "so ratios are fairer than absolute times).", "",
             f"dense: all-MiniLM-L6-v2 (6 layers, 12 heads, FFN 1536). pruned: {r['pruned_model']}, "
             f"heads {r['pruned_structure']['num_heads']}, FFN {r['pruned_structure']['ffn_dim']}.", "",
             "Inputs: random token ids, no padding. P50/P90 over the timed rounds of one session call (B sequences).", "",
             "| model | variant | batch | seq | P50 ms | P90 ms | seq/s | pruned speed-up (same variant) | speed-up vs dense fp32 plain |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        same = "" if x["model"] == "dense" else f"{x['speedup_vs_dense_same_variant']:.2f}×"
        lines.append(f"| {x['model']} | {x['variant']} | {x['batch']} | {x['seq']} | {x['p50_ms']:.2f} | "
                     f"{x['p90_ms']:.2f} | {x['seq_per_s']:.1f} | {same} | {x['speedup_vs_dense_fp32_plain']:.2f}× |")
    lines += ["", "Exports (each passed prunekit's parity check; int8 drift = max abs logit diff vs PyTorch on the "
              "validation inputs):", "",
              "| model | variant | size MB | nodes | fused Attention | fp32 parity (max abs diff) | int8 drift |",
              "|---|---|---:|---:|---:|---|---:|"]
    for e in r["exports"]:
        parity = ", ".join(f"{k} {v:.1e}" for k, v in e["parity"].items())
        drift = "" if e["int8_drift"] is None else f"{e['int8_drift']:.1e}"
        lines.append(f"| {e['model']} | {e['variant']} | {e['size_mb']:.1f} | {e['nodes']} | "
                     f"{'' if e['attention_nodes'] is None else e['attention_nodes']} | {parity} | {drift} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

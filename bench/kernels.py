"""The fused Triton kernels against the PyTorch paths they replace, on a CUDA GPU.

    python bench/kernels.py                       # BERT-base and MiniLM shapes, batch 32, seq 128 and 512
    python bench/kernels.py --dtype bf16 --out bench/results/kernels

For each shape, forward + backward time (CUDA events, median over --repeats after warm-up) of
  attention: fused masked attention (prunekit.kernels.attention) | the eager masked path (scores,
             softmax, dropout-free, gate; what prunekit.model runs with kernels="torch") |
             scaled_dot_product_attention + gate (kernels="sdpa")
  FFN:       fused masked FFN (prunekit.kernels.ffn) | eager (Linear, GELU, gates)
with achieved TFLOP/s (counted FLOPs: attention fwd 4*B*H*S^2*d_h, bwd 2.5x that; FFN fwd 4*N*d*F,
bwd 2x) and the bytes each path moves at the least (inputs, outputs and saved tensors, by count).
Without CUDA it says so and exits 0: the kernels are tested in the Triton interpreter on CPU
(tests/test_kernels.py), but their speed only means something on a GPU.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

SHAPES = {"bert-base": dict(H=12, dh=64, d=768, F=3072), "minilm": dict(H=12, dh=32, d=384, F=1536)}


def cuda_time(fn, warmup: int, repeats: int) -> float:
    from prunekit.timing import median_ms
    return median_ms(fn, warmup, repeats, "cuda")


def attention_paths(B, H, S, dh, dtype):
    from prunekit.kernels.attention import attention_reference, masked_attention
    q, k, v = (torch.randn(B, H, S, dh, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    gate = torch.rand(H, device="cuda", dtype=dtype, requires_grad=True)
    key_mask = torch.ones(B, S, device="cuda", dtype=dtype)
    key_mask[:, -S // 8:] = 0                                                  # some padding, as in a ragged batch
    do = torch.randn(B, H, S, dh, device="cuda", dtype=dtype)
    bias = ((1 - key_mask) * torch.finfo(dtype).min)[:, None, None, :]

    def fused():
        masked_attention(q, k, v, key_mask, gate).backward(do)

    def eager():
        attention_reference(q, k, v, key_mask, gate).backward(do)

    def sdpa():
        (torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias) * gate.view(1, -1, 1, 1)).backward(do)

    flops = 4 * B * H * S * S * dh * 3.5                                        # forward + backward (2.5x)
    elem = dtype.itemsize if hasattr(dtype, "itemsize") else torch.finfo(dtype).bits // 8
    qkvo = 4 * B * H * S * dh * elem
    bytes_moved = {"fused": 3 * qkvo + 2 * B * H * S * 4,                     # fwd: q,k,v in, o out, m/l; bwd: again + grads
                   "eager": 3 * qkvo + 3 * B * H * S * S * elem,              # + scores, probabilities written and read
                   "sdpa": 3 * qkvo + 2 * B * H * S * 4}
    return {"fused": fused, "eager": eager, "sdpa": sdpa}, flops, bytes_moved


def ffn_paths(N, d, F, dtype):
    from prunekit.kernels.ffn import ffn_reference, masked_ffn
    x = torch.randn(N, d, device="cuda", dtype=dtype, requires_grad=True)
    w_up = (torch.randn(F, d, device="cuda", dtype=dtype) * 0.02).requires_grad_()
    w_down = (torch.randn(d, F, device="cuda", dtype=dtype) * 0.02).requires_grad_()
    b_up, b_down = (torch.zeros(n, device="cuda", dtype=dtype, requires_grad=True) for n in (F, d))
    z_int = torch.rand(F, device="cuda", dtype=dtype, requires_grad=True)
    z_ffn = torch.tensor(0.9, device="cuda", dtype=dtype, requires_grad=True)
    dy = torch.randn(N, d, device="cuda", dtype=dtype)
    args = (x, w_up, b_up, w_down, b_down, z_int, z_ffn)
    elem = torch.finfo(dtype).bits // 8
    bytes_moved = {"fused": (2 * N * d + 2 * d * F) * elem * 3 + 2 * N * F * elem * 2,   # A and H stored, read back
                   "eager": (2 * N * d + 2 * d * F) * elem * 3 + 4 * N * F * elem * 2}   # + GELU and gate passes
    return ({"fused": lambda: masked_ffn(*args).backward(dy), "eager": lambda: ffn_reference(*args).backward(dy)},
            4 * N * d * F * 3, bytes_moved)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seqs", type=int, nargs="+", default=[128, 512])
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", help="write OUT.md and OUT.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA GPU here; the Triton kernels are timed on GPUs only "
              "(their correctness is tested on CPU in the Triton interpreter: tests/test_kernels.py)")
        return 0
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    rows = []
    for name, s in SHAPES.items():
        for S in args.seqs:
            paths, flops, moved = attention_paths(args.batch, s["H"], S, s["dh"], dtype)
            times = {k: cuda_time(f, args.warmup, args.repeats) for k, f in paths.items()}
            rows += [{"shape": name, "seq": S, "op": "attention", "path": k, "ms": t, "tflops": flops / t / 1e9,
                      "bytes": moved[k], "speedup_vs_eager": times["eager"] / t} for k, t in times.items()]
            paths, flops, moved = ffn_paths(args.batch * S, s["d"], s["F"], dtype)
            times = {k: cuda_time(f, args.warmup, args.repeats) for k, f in paths.items()}
            rows += [{"shape": name, "seq": S, "op": "ffn", "path": k, "ms": t, "tflops": flops / t / 1e9,
                      "bytes": moved[k], "speedup_vs_eager": times["eager"] / t} for k, t in times.items()]
    lines = [f"# Fused kernels on {torch.cuda.get_device_name(0)} ({args.dtype}, batch {args.batch}, forward + backward)",
             "", "| shape | seq | op | path | ms | TFLOP/s | MB moved (by count) | speed-up vs eager |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['shape']} | {r['seq']} | {r['op']} | {r['path']} | {r['ms']:.3f} | {r['tflops']:.1f} | "
              f"{r['bytes'] / 2**20:.0f} | {r['speedup_vs_eager']:.2f}× |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows},
                                                       indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Masked attention as a fused Triton kernel, forward and backward (FlashAttention-2 style).

What it computes, for every batch element b and head h (the PyTorch reference, `attention_reference`,
is at the end of this file):

    S = Q K^T / sqrt(d_h) + bias          bias_j = 0 for a real key, -1e30 for a padded key
    O = gate[h] * softmax(S) V            gate = z_head * z_mha: real-valued, differentiable

Q, K, V: [B, H, S, d_h]; key_mask: [B, S] of 1 (token) / 0 (padding); gate: [H]. The S x S matrix is
never stored: each program owns BLOCK_M query rows, walks the keys BLOCK_N at a time and keeps a
running max m, a running sum l and an accumulator (online softmax). The forward saves the log-sum-
max m and sum l of each row; the backward recomputes P = exp(S - m) / l block by block (m and l
apart, not lse = m + log l: in a row whose keys are all padding m is -1e30, and fp32 would lose
log l against it):

    dO' = gate * dO                         (the gradient reaching the ungated output)
    delta_i = sum_d dO'_id O_u,id = sum_d dO_id O_id      (O is the gated output: no division by gate)
    dV = P^T dO',  dP = dO' V^T,  dS = P * (dP - delta),  dQ = dS K / sqrt(d_h),  dK = dS^T Q / sqrt(d_h)
    dgate[h] = sum_{b,i,j} P_ij (dO_i . V_j)              (accumulated in the dK/dV kernel)

A padded key gets a large finite bias rather than -inf, exactly as the eager model's dtype-min
bias does: a row whose keys are all padding then averages V uniformly instead of producing NaN.
Keys past S (the ragged end of the last block) are -inf: they do not exist. No atomics: the gate
gradient is written per (batch, head, key block) and summed by torch, so results are bit-identical
from run to run.

File layout, as in the Triton tutorials: the kernels, their launchers, the autograd Function, then
the PyTorch reference that tests compare against.
"""
import math

import torch
import triton
import triton.language as tl

PAD_BIAS = -1.0e30  # a padded key's score (finite, like the eager model's dtype-min bias)


# ---------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _attn_fwd(Q, K, V, KEEP, GATE, O, M, L, seq_len, sm_scale, n_heads,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)                       # b * n_heads + h
    b, h = bh // n_heads, bh % n_heads
    base = bh * seq_len * HEAD_DIM              # Q, K, V, O are contiguous [B, H, S, d_h]
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_len
    q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < seq_len
        k = tl.load(K + base + cols[:, None] * HEAD_DIM + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(V + base + cols[:, None] * HEAD_DIM + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        keep = tl.load(KEEP + b * seq_len + cols, mask=col_ok, other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * sm_scale                     # (BLOCK_M, BLOCK_N)
        s = s + tl.where(keep > 0, 0.0, PAD_BIAS)[None, :]
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)                                               # rescales what came before
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        m_i = m_new
    gate = tl.load(GATE + h).to(tl.float32)
    out = acc / l_i[:, None] * gate
    tl.store(O + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(M + bh * seq_len + offs_m, m_i, mask=row_ok)
    tl.store(L + bh * seq_len + offs_m, l_i, mask=row_ok)


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, seq_len, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """delta_i = sum_d dO_id * O_id (O gated, dO the gradient of the gated output)."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_m < seq_len
    ptrs = bh * seq_len * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(O + ptrs, mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + bh * seq_len + offs_m, tl.sum(o * do, 1), mask=ok)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, KEEP, GATE, DO, M, L, DELTA, DK, DV, DGATE, seq_len, sm_scale, n_heads, n_kblocks,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """One program per (key block, b*h): dK and dV of its keys, and its share of dgate[h]."""
    start_n = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // n_heads, bh % n_heads
    base = bh * seq_len * HEAD_DIM
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < seq_len
    k = tl.load(K + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    v = tl.load(V + base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    keep = tl.load(KEEP + b * seq_len + offs_n, mask=col_ok, other=0.0)
    bias = tl.where(keep > 0, 0.0, PAD_BIAS)
    gate = tl.load(GATE + h).to(tl.float32)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dgate = tl.zeros([BLOCK_N], tl.float32)
    for start_m in range(0, seq_len, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < seq_len
        q = tl.load(Q + base + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + base + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        m = tl.load(M + bh * seq_len + rows, mask=row_ok, other=0.0)
        l = tl.load(L + bh * seq_len + rows, mask=row_ok, other=1.0)
        delta = tl.load(DELTA + bh * seq_len + rows, mask=row_ok, other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * sm_scale + bias[None, :]     # (BLOCK_M, BLOCK_N)
        p = tl.exp(s - m[:, None]) / l[:, None]
        p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
        dp_u = tl.dot(do, tl.trans(v)).to(tl.float32)                           # dO V^T, ungated
        dgate += tl.sum(p * dp_u, 0)
        dv += tl.dot(tl.trans(p * gate).to(do.dtype), do).to(tl.float32)        # P^T (gate dO)
        ds = p * (gate * dp_u - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q).to(tl.float32)
    ptrs = base + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + ptrs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DGATE + bh * n_kblocks + start_n, tl.sum(dgate, 0))


@triton.jit
def _attn_bwd_dq(Q, K, V, KEEP, GATE, DO, M, L, DELTA, DQ, seq_len, sm_scale, n_heads,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """One program per (query block, b*h): dQ of its rows."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b, h = bh // n_heads, bh % n_heads
    base = bh * seq_len * HEAD_DIM
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_len
    q = tl.load(Q + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    m = tl.load(M + bh * seq_len + offs_m, mask=row_ok, other=0.0)
    l = tl.load(L + bh * seq_len + offs_m, mask=row_ok, other=1.0)
    delta = tl.load(DELTA + bh * seq_len + offs_m, mask=row_ok, other=0.0)
    gate = tl.load(GATE + h).to(tl.float32)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < seq_len
        k = tl.load(K + base + cols[:, None] * HEAD_DIM + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(V + base + cols[:, None] * HEAD_DIM + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        keep = tl.load(KEEP + b * seq_len + cols, mask=col_ok, other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * sm_scale + tl.where(keep > 0, 0.0, PAD_BIAS)[None, :]
        p = tl.exp(s - m[:, None]) / l[:, None]
        p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
        dp = gate * tl.dot(do, tl.trans(v)).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k).to(tl.float32)
    tl.store(DQ + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None])


# ---------------------------------------------------------------------------------------------
# launchers


def _blocks(seq_len: int, head_dim: int):
    """Block sizes: 64 x 64 tiles (fewer, larger tiles: far faster in the interpreter and fine on GPUs
    for d_h <= 64); short sequences use a smaller tile, never below the 16 that tl.dot needs on GPUs."""
    block = 64 if seq_len > 32 else (32 if seq_len > 16 else 16)
    return block, block


def check_inputs(q, k, v, key_mask, gate):
    B, H, S, D = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if key_mask.shape != (B, S) or gate.shape != (H,):
        raise ValueError(f"key_mask must be {(B, S)} and gate {(H,)}, got {tuple(key_mask.shape)}, {tuple(gate.shape)}")
    if D < 16 or D & (D - 1):
        raise ValueError(f"the Triton attention kernel needs a power-of-two head dim >= 16, got {D}")


def attention_forward(q, k, v, key_mask, gate):
    """(O, m, l): O = gate[h] * softmax(QK^T/sqrt(d) + bias) V; m, l each row's max and sum (fp32)."""
    check_inputs(q, k, v, key_mask, gate)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, H, S, D = q.shape
    keep = key_mask.to(torch.float32).contiguous()
    o = torch.empty_like(q)
    m = torch.empty(B, H, S, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    BM, BN = _blocks(S, D)
    _attn_fwd[(triton.cdiv(S, BM), B * H)](q, k, v, keep, gate.contiguous(), o, m, l, S, 1.0 / math.sqrt(D), H,
                                           BLOCK_M=BM, BLOCK_N=BN, HEAD_DIM=D)
    return o, m, l


def attention_backward(q, k, v, key_mask, gate, o, m, l, do):
    """(dq, dk, dv, dgate) for the gradient do of the gated output o."""
    B, H, S, D = q.shape
    do = do.contiguous()
    keep = key_mask.to(torch.float32).contiguous()
    BM, BN = _blocks(S, D)
    delta = torch.empty(B, H, S, device=q.device, dtype=torch.float32)
    _attn_bwd_delta[(triton.cdiv(S, BM), B * H)](o, do, delta, S, BLOCK_M=BM, HEAD_DIM=D)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    n_kblocks = triton.cdiv(S, BN)
    dgate_parts = torch.empty(B, H, n_kblocks, device=q.device, dtype=torch.float32)
    scale = 1.0 / math.sqrt(D)
    _attn_bwd_dkdv[(n_kblocks, B * H)](q, k, v, keep, gate, do, m, l, delta, dk, dv, dgate_parts, S, scale, H,
                                       n_kblocks, BLOCK_M=BM, BLOCK_N=BN, HEAD_DIM=D)
    _attn_bwd_dq[(triton.cdiv(S, BM), B * H)](q, k, v, keep, gate, do, m, l, delta, dq, S, scale, H,
                                              BLOCK_M=BM, BLOCK_N=BN, HEAD_DIM=D)
    return dq, dk, dv, dgate_parts.sum((0, 2)).to(gate.dtype)


# ---------------------------------------------------------------------------------------------
# autograd


class MaskedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_mask, gate):
        q, k, v, gate = q.contiguous(), k.contiguous(), v.contiguous(), gate.contiguous()
        o, m, l = attention_forward(q, k, v, key_mask, gate)
        ctx.save_for_backward(q, k, v, key_mask, gate, o, m, l)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, key_mask, gate, o, m, l = ctx.saved_tensors
        dq, dk, dv, dgate = attention_backward(q, k, v, key_mask, gate, o, m, l, do)
        return dq, dk, dv, None, dgate


def masked_attention(q, k, v, key_mask, gate=None):
    """Fused masked attention: q, k, v [B, H, S, d_h], key_mask [B, S] (1 = token), gate [H] or None."""
    if gate is None:
        gate = torch.ones(q.shape[1], device=q.device, dtype=q.dtype)
    return MaskedAttention.apply(q, k, v, key_mask, gate)


# ---------------------------------------------------------------------------------------------
# the PyTorch reference


def attention_reference(q, k, v, key_mask, gate=None):
    """The same computation in plain PyTorch (what prunekit's eager model does), any dtype."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])                 # (B, H, S, S)
    pad = max(PAD_BIAS, torch.finfo(scores.dtype).min)                         # fp16 cannot hold -1e30
    bias = torch.where(key_mask[:, None, None, :] > 0, 0.0, pad).to(scores.dtype)
    out = torch.softmax(scores + bias, dim=-1) @ v
    if gate is not None:
        out = out * gate.view(1, -1, 1, 1)
    return out

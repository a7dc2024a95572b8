"""Masked attention as a fused Triton kernel, forward and backward (FlashAttention-2 style).

What it computes, for every batch element b and head h (the PyTorch reference, `attention_reference`,
is at the end of this file):

    S = Q K^T / sqrt(d_h) + bias          bias_j = 0 for a real key, -1e30 for a padded key
    O = gate[h] * softmax(S) V            gate: real-valued, differentiable (the model passes z_head;
                                          z_mha scales the output projection, bias included)

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
gradient is written per (batch, head, key) and summed by torch, so results are bit-identical from run
to run (for a given config: on a GPU, autotuning picks the tiles per shape, kernels/tuning.py).

File layout, as in the Triton tutorials: the kernels, their launchers, the autograd Function, then
the PyTorch reference that tests compare against.
"""
import math

import torch
import triton
import triton.language as tl

from .tuning import DOT_PRECISION, autotune, bucket

PAD_BIAS = tl.constexpr(-1.0e30)  # a padded key's score (finite, like the eager model's dtype-min bias)


# ---------------------------------------------------------------------------------------------
# configs: (BLOCK_M, BLOCK_N, num_warps, num_stages), for d_h 32 / 64 and sequences of 128 to 512


def _configs(shapes):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


FWD_CONFIGS = _configs([(64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 2), (64, 32, 4, 3)])
DKDV_CONFIGS = _configs([(64, 64, 8, 2), (32, 64, 8, 2), (64, 64, 8, 3)])     # BLOCK_N keys held, BLOCK_M rows walked
DQ_CONFIGS = _configs([(64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2)])
INTERPRETER = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64})
DELTA_BLOCK = 64                       # rows per program of the delta kernel (a row-wise sum: no tuning)
ATTN_KEY = ["seq_key", "HEAD_DIM"]      # seq_key = bucket(seq_len)


# ---------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _tile(PTR, base, idx, ok, HEAD_DIM: tl.constexpr):
    """Rows idx of one (b, h) slice of a contiguous [B, H, S, d_h] tensor: (len(idx), d_h), 0 where not ok."""
    offs_d = tl.arange(0, HEAD_DIM)
    return tl.load(PTR + base + idx[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)


@triton.jit
def _row_stats(M, L, DELTA, bh, seq_len, rows, row_ok):
    """The forward's row max m and row sum l, and the backward's delta, of these query rows."""
    at = bh * seq_len + rows
    return (tl.load(M + at, mask=row_ok, other=0.0), tl.load(L + at, mask=row_ok, other=1.0),
            tl.load(DELTA + at, mask=row_ok, other=0.0))


@triton.jit
def _scores(q, k, keep, col_ok, sm_scale):
    """S = Q K^T / sqrt(d_h) + the key bias, in fp32; keys past the end are -inf: (BLOCK_M, BLOCK_N)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION).to(tl.float32) * sm_scale
    s = s + tl.where(keep > 0, 0.0, PAD_BIAS)[None, :]
    return tl.where(col_ok[None, :], s, float("-inf"))


@triton.jit
def _probs(q, k, keep, m, l, row_ok, col_ok, sm_scale):
    """P recomputed from the forward's row max m and row sum l (0 outside the rows and keys that exist)."""
    p = tl.exp(_scores(q, k, keep, col_ok, sm_scale) - m[:, None]) / l[:, None]
    return tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)


@autotune(FWD_CONFIGS, INTERPRETER, ATTN_KEY)
@triton.jit
def _attn_fwd(Q, K, V, KEEP, GATE, O, M, L, seq_len, seq_key, sm_scale, n_heads,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (query block, b*h): O = gate * softmax(S) V by online softmax, and each row's m, l."""
    start_m, bh = tl.program_id(0), tl.program_id(1)            # bh = b * n_heads + h
    b, h = bh // n_heads, bh % n_heads
    base = bh * seq_len * HEAD_DIM
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_len
    q = _tile(Q, base, rows, row_ok, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < seq_len
        k, v = _tile(K, base, cols, col_ok, HEAD_DIM), _tile(V, base, cols, col_ok, HEAD_DIM)
        keep = tl.load(KEEP + b * seq_len + cols, mask=col_ok, other=0.0)
        s = _scores(q, k, keep, col_ok, sm_scale)                                 # (BLOCK_M, BLOCK_N)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)                                               # rescales what came before
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION).to(tl.float32)
        m_i = m_new
    out = acc / l_i[:, None] * tl.load(GATE + h).to(tl.float32)
    offs_d = tl.arange(0, HEAD_DIM)
    tl.store(O + base + rows[:, None] * HEAD_DIM + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(M + bh * seq_len + rows, m_i, mask=row_ok)
    tl.store(L + bh * seq_len + rows, l_i, mask=row_ok)


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, seq_len, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """delta_i = sum_d dO_id * O_id (O gated, dO the gradient of the gated output)."""
    start_m, bh = tl.program_id(0), tl.program_id(1)
    base = bh * seq_len * HEAD_DIM
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ok = rows < seq_len
    o = _tile(O, base, rows, ok, HEAD_DIM).to(tl.float32)
    do = _tile(DO, base, rows, ok, HEAD_DIM).to(tl.float32)
    tl.store(DELTA + bh * seq_len + rows, tl.sum(o * do, 1), mask=ok)


@autotune(DKDV_CONFIGS, INTERPRETER, ATTN_KEY)
@triton.jit
def _attn_bwd_dkdv(Q, K, V, KEEP, GATE, DO, M, L, DELTA, DK, DV, DGATE, seq_len, seq_key, sm_scale, n_heads,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (key block, b*h): dK and dV of its keys, and each key's share of dgate[h]."""
    start_n, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // n_heads, bh % n_heads
    base = bh * seq_len * HEAD_DIM
    cols = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < seq_len
    k, v = _tile(K, base, cols, col_ok, HEAD_DIM), _tile(V, base, cols, col_ok, HEAD_DIM)
    keep = tl.load(KEEP + b * seq_len + cols, mask=col_ok, other=0.0)
    gate = tl.load(GATE + h).to(tl.float32)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dgate = tl.zeros([BLOCK_N], tl.float32)
    for start_m in range(0, seq_len, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < seq_len
        q, do = _tile(Q, base, rows, row_ok, HEAD_DIM), _tile(DO, base, rows, row_ok, HEAD_DIM)
        m, l, delta = _row_stats(M, L, DELTA, bh, seq_len, rows, row_ok)
        p = _probs(q, k, keep, m, l, row_ok, col_ok, sm_scale)                   # (BLOCK_M, BLOCK_N)
        dp_u = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION).to(tl.float32)   # dO V^T, ungated
        dgate += tl.sum(p * dp_u, 0)
        dv += tl.dot(tl.trans(p * gate).to(do.dtype), do, input_precision=DOT_PRECISION).to(tl.float32)  # P^T gate dO
        ds = p * (gate * dp_u - delta[:, None])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=DOT_PRECISION).to(tl.float32)
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = base + cols[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + ptrs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DGATE + bh * seq_len + cols, dgate, mask=col_ok)


@autotune(DQ_CONFIGS, INTERPRETER, ATTN_KEY)
@triton.jit
def _attn_bwd_dq(Q, K, V, KEEP, GATE, DO, M, L, DELTA, DQ, seq_len, seq_key, sm_scale, n_heads,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (query block, b*h): dQ of its rows."""
    start_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // n_heads, bh % n_heads
    base = bh * seq_len * HEAD_DIM
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_len
    q, do = _tile(Q, base, rows, row_ok, HEAD_DIM), _tile(DO, base, rows, row_ok, HEAD_DIM)
    m, l, delta = _row_stats(M, L, DELTA, bh, seq_len, rows, row_ok)
    gate = tl.load(GATE + h).to(tl.float32)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < seq_len
        k, v = _tile(K, base, cols, col_ok, HEAD_DIM), _tile(V, base, cols, col_ok, HEAD_DIM)
        keep = tl.load(KEEP + b * seq_len + cols, mask=col_ok, other=0.0)
        p = _probs(q, k, keep, m, l, row_ok, col_ok, sm_scale)
        ds = p * (gate * tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION).to(tl.float32) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION).to(tl.float32)
    offs_d = tl.arange(0, HEAD_DIM)
    tl.store(DQ + base + rows[:, None] * HEAD_DIM + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None])


# ---------------------------------------------------------------------------------------------
# launchers: every tensor is made contiguous here (the kernels index with stride 1 along d_h and S)


HEAD_DIMS = (32, 64)  # the head dims compile_check compiles: BERT-family models' (MiniLM 32, the rest 64)


def _grid(seq_len: int, block: str, bh: int):
    """Programs over (the query or key blocks of the config autotuning picked, b*h)."""
    return lambda meta: (triton.cdiv(seq_len, meta[block]), bh)


def check_inputs(q, k, v, key_mask, gate):
    B, H, S, D = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_mask.shape != (B, S) or gate.shape != (H,):
        raise ValueError(f"key_mask must be {(B, S)} and gate {(H,)}, got {tuple(key_mask.shape)}, {tuple(gate.shape)}")
    if D not in HEAD_DIMS:
        raise ValueError(f"the Triton attention kernel tiles head dims {', '.join(map(str, HEAD_DIMS))}, got {D}")


def attention_forward(q, k, v, key_mask, gate):
    """(O, m, l): O = gate[h] * softmax(QK^T/sqrt(d) + bias) V; m, l each row's max and sum (fp32)."""
    check_inputs(q, k, v, key_mask, gate)
    q, k, v, gate = q.contiguous(), k.contiguous(), v.contiguous(), gate.contiguous()
    B, H, S, D = q.shape
    keep = key_mask.to(torch.float32).contiguous()
    o = torch.empty_like(q)
    m = torch.empty(B, H, S, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    _attn_fwd[_grid(S, "BLOCK_M", B * H)](q, k, v, keep, gate, o, m, l, S, bucket(S), 1.0 / math.sqrt(D), H,
                                          HEAD_DIM=D)
    return o, m, l


def attention_backward(q, k, v, key_mask, gate, o, m, l, do):
    """(dq, dk, dv, dgate) for the gradient do of the gated output o."""
    q, k, v, gate, o, m, l, do = (t.contiguous() for t in (q, k, v, gate, o, m, l, do))
    B, H, S, D = q.shape
    keep = key_mask.to(torch.float32).contiguous()
    delta = torch.empty(B, H, S, device=q.device, dtype=torch.float32)
    _attn_bwd_delta[(triton.cdiv(S, DELTA_BLOCK), B * H)](o, do, delta, S, BLOCK_M=DELTA_BLOCK, HEAD_DIM=D)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dgate_parts = torch.empty(B, H, S, device=q.device, dtype=torch.float32)    # one per key: summed below
    scale = 1.0 / math.sqrt(D)
    _attn_bwd_dkdv[_grid(S, "BLOCK_N", B * H)](q, k, v, keep, gate, do, m, l, delta, dk, dv, dgate_parts, S,
                                               bucket(S), scale, H, HEAD_DIM=D)
    _attn_bwd_dq[_grid(S, "BLOCK_M", B * H)](q, k, v, keep, gate, do, m, l, delta, dq, S, bucket(S), scale, H,
                                             HEAD_DIM=D)
    return dq, dk, dv, dgate_parts.sum((0, 2)).to(gate.dtype)


# ---------------------------------------------------------------------------------------------
# autograd


class MaskedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_mask, gate):
        q, k, v, gate = q.contiguous(), k.contiguous(), v.contiguous(), gate.contiguous()  # saved once, as used
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
    pad = max(PAD_BIAS.value, torch.finfo(scores.dtype).min)                         # fp16 cannot hold -1e30
    bias = torch.where(key_mask[:, None, None, :] > 0, 0.0, pad).to(scores.dtype)
    out = torch.softmax(scores + bias, dim=-1) @ v
    if gate is not None:
        out = out * gate.view(1, -1, 1, 1)
    return out

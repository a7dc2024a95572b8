"""Masked FFN as fused Triton GEMMs, forward and backward.

What it computes (the PyTorch reference, `ffn_reference`, is at the end of this file), for tokens
X [N, d]:

    A = X W_up^T + b_up                      pre-activation            [N, F]
    H = gelu(A) * z_int                      exact (erf) GELU, unit gate  [N, F]
    Y = (H W_down^T + b_down) * z_ffn        sublayer gate (a scalar)  [N, d]

One GEMM kernel, `_matmul`, with the work around it fused into its epilogue (the Triton tutorial's
matmul with an activation, grown a few epilogues):
  "up"    stores A and H from the accumulator (bias, GELU and the z_int gate on the tile in registers);
  "down"  adds b_down and applies z_ffn;
  "dh"    the backward's first GEMM: T = dY W_down, and in the same epilogue
              dA = z_ffn * T * z_int * gelu'(A)              (A read back tile by tile)
          with per-row-block partial sums of dz_int = sum_n z_ffn T gelu(A), db_up = sum_n dA and
          dz_ffn = sum H * T, so no extra pass ever walks the [N, F] tensors for them;
  "scaled" z * (A B), z a 1-element tensor (1 unless given): the weight gradients and dX.
Partial sums are written per row block and added by torch: no atomics, so every result is
bit-identical from run to run (for a given config: on a GPU, autotuning picks the tiles per shape).
Transposes cost nothing: the launcher passes strides. z_ffn stays a device tensor throughout (no
host synchronisation in the backward). Tiles, the fp32 (TF32) policy and autotuning: kernels/tuning.py.

Backward, in full:  T = dY W_down (dh)  ->  dA, dz_int, db_up, dz_ffn (minus its bias term)
                    dW_down = z_ffn dY^T H     dX = dA W_up     dW_up = dA^T X
                    db_down = z_ffn sum_n dY   dz_ffn += b_down . sum_n dY
"""
import torch
import triton
import triton.language as tl

from .tuning import DOT_PRECISION, autotune, bucket

SQRT1_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)

EPILOGUES = {"scaled": 0, "up": 1, "down": 2, "dh": 3}

def _configs(shapes):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for BERT-base and MiniLM GEMMs (d 384 / 768,
# F 1536 / 3072, 4k to 16k tokens). The "dh" epilogue holds four tiles at once (T, A, gelu(A), dA), so it
# gets tiles of 32 accumulator elements per thread; the others 64. Every one compiles without register
# spills and fits sm_80's shared memory in fp32 too (compile_check).
CONFIGS = _configs([(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 3)])
DH_CONFIGS = _configs([(64, 64, 32, 4, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3)])
INTERPRETER = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64})
MIN_BLOCK_M = min(c.kwargs["BLOCK_M"] for c in CONFIGS + DH_CONFIGS + [INTERPRETER])   # sizes the "dh" partial sums
MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in CONFIGS + DH_CONFIGS + [INTERPRETER])


def _configs_of_epilogue(configs, named_args, EPILOGUE, **kwargs):
    """Autotuning's candidates for this launch: DH_CONFIGS for the "dh" epilogue, CONFIGS for the rest."""
    return DH_CONFIGS if EPILOGUE == EPILOGUES["dh"] else CONFIGS


PARTS = ["PART_A", "PART_B", "PART_C"]


# ---------------------------------------------------------------------------------------------
# kernel


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.erf(x * SQRT1_2))


@triton.jit
def _gelu_grad(x):
    return 0.5 * (1.0 + tl.erf(x * SQRT1_2)) + x * INV_SQRT_2PI * tl.exp(-0.5 * x * x)


@autotune(CONFIGS + DH_CONFIGS, INTERPRETER, ["m_key", "n_key", "k_key", "EPILOGUE"], reset_to_zero=PARTS,
          prune_configs_by={"early_config_prune": _configs_of_epilogue})
@triton.jit
def _matmul(A, B, C, M, N, K, m_key, n_key, k_key, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
            BIAS, ZCOL, ZSCALAR, PRE, PART_A, PART_B, PART_C,
            EPILOGUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C[M, N] = epilogue(A[M, K] @ B[K, N]); see the module docstring for the epilogues."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok, n_ok = offs_m < M, offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        a = tl.load(A + offs_m[:, None] * stride_am + (k0 + offs_k)[None, :] * stride_ak,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(B + (k0 + offs_k)[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=DOT_PRECISION).to(tl.float32)
    ok = m_ok[:, None] & n_ok[None, :]
    c_ptrs = offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    if EPILOGUE == 0:                                                   # scaled: z * (A B)
        out = acc * tl.load(ZSCALAR).to(tl.float32)
    elif EPILOGUE == 1:                                                 # up: A and H = gelu(A) * z_int
        pre = acc + tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(PRE + c_ptrs, pre.to(PRE.dtype.element_ty), mask=ok)
        out = _gelu(pre) * tl.load(ZCOL + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    elif EPILOGUE == 2:                                                 # down: (acc + b_down) * z_ffn
        out = (acc + tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]) \
            * tl.load(ZSCALAR).to(tl.float32)
    else:                                                               # dh: acc = T = dY W_down
        pre = tl.load(PRE + c_ptrs, mask=ok, other=0.0).to(tl.float32)
        z = tl.load(ZCOL + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        zs = tl.load(ZSCALAR).to(tl.float32)
        g = _gelu(pre)
        out = zs * acc * z * _gelu_grad(pre)                            # dA
        out = tl.where(ok, out, 0.0)
        tl.store(PART_A + pid_m * N + offs_n, tl.sum(zs * acc * g, 0), mask=n_ok)           # dz_int
        tl.store(PART_B + pid_m * N + offs_n, tl.sum(out, 0), mask=n_ok)                    # db_up
        tl.store(PART_C + pid_m * tl.num_programs(1) + pid_n, tl.sum(tl.sum(g * z * acc, 1), 0))  # dz_ffn
    tl.store(C + c_ptrs, out.to(C.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------
# launcher


def matmul(a, b, epilogue="scaled", bias=None, zcol=None, zscalar=None, pre=None, out_dtype=None):
    """epilogue(a @ b) for 2-D a [M, K], b [K, N] of any strides (1-D bias / zcol and the pre-activation
    are made contiguous here: the kernel indexes them with stride 1 and C's strides). Returns C (and,
    for "up", the pre-activation; for "dh", the partial sums (dz_int, db_up, dz_ffn), each to be summed
    over its rows)."""
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty(M, N, device=a.device, dtype=out_dtype or a.dtype)
    if zscalar is None:
        zscalar = torch.ones(1, device=a.device, dtype=torch.float32)
    bias, zcol, zscalar, pre = (t if t is None else t.contiguous() for t in (bias, zcol, zscalar, pre))
    parts = [c] * 3                                       # pointer arguments an epilogue does not read
    if epilogue == "up":
        pre = torch.empty_like(c)
    if epilogue == "dh":                                  # rows for the smallest tiles; unused rows stay 0
        rows, cols = triton.cdiv(M, MIN_BLOCK_M), triton.cdiv(N, MIN_BLOCK_N)
        parts = [torch.zeros(rows, N, device=a.device, dtype=torch.float32) for _ in range(2)]
        parts.append(torch.zeros(rows * cols, device=a.device, dtype=torch.float32))
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))
    _matmul[grid](a, b, c, M, N, K, bucket(M), bucket(N), bucket(K), a.stride(0), a.stride(1), b.stride(0),
                  b.stride(1), c.stride(0), c.stride(1), c if bias is None else bias, c if zcol is None else zcol,
                  zscalar, c if pre is None else pre, *parts, EPILOGUE=EPILOGUES[epilogue])
    if epilogue == "up":
        return c, pre
    if epilogue == "dh":
        return c, parts
    return c


# ---------------------------------------------------------------------------------------------
# autograd


class MaskedFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_up, b_up, z_int, w_down, b_down, z_ffn):
        """x [N, d] -> y [N, d] (see the module docstring); z_ffn is a 0-d tensor."""
        z_ffn = z_ffn.reshape(1)
        h, pre = matmul(x, w_up.t(), "up", bias=b_up, zcol=z_int)
        y = matmul(h, w_down.t(), "down", bias=b_down, zscalar=z_ffn)
        ctx.save_for_backward(x, w_up, z_int, w_down, b_down, z_ffn, pre, h)
        return y

    @staticmethod
    def backward(ctx, dy):
        """No host synchronisation: z_ffn stays on the device (a pointer the kernels read)."""
        x, w_up, z_int, w_down, b_down, z_ffn, pre, h = ctx.saved_tensors
        dy = dy.contiguous()
        da, (dz_int, db_up, dz_ffn) = matmul(dy, w_down, "dh", zcol=z_int, zscalar=z_ffn, pre=pre)
        dy_sum = dy.float().sum(0)
        dw_down = matmul(dy.t(), h, zscalar=z_ffn)
        dx = matmul(da, w_up)
        dw_up = matmul(da.t(), x)
        db_down = (z_ffn.float() * dy_sum).to(b_down.dtype)
        dz = (dz_ffn.sum() + (dy_sum * b_down.float()).sum()).reshape(())
        return (dx, dw_up, db_up.sum(0).to(w_up.dtype), dz_int.sum(0).to(z_int.dtype), dw_down, db_down,
                dz.to(z_ffn.dtype))


def masked_ffn(x, w_up, b_up, w_down, b_down, z_int=None, z_ffn=None):
    """Fused masked FFN over x [..., d]; z_int [F] and z_ffn (a scalar tensor) default to 1."""
    shape = x.shape
    F = w_up.shape[0]
    z_int = torch.ones(F, device=x.device, dtype=x.dtype) if z_int is None else z_int
    z_ffn = torch.ones((), device=x.device, dtype=x.dtype) if z_ffn is None else z_ffn
    # one dtype for the GEMMs: autocast's (custom kernels are not cast by it), else the input's
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    x, w_up, b_up, w_down, b_down, z_int, z_ffn = (t.to(dtype) for t in (x, w_up, b_up, w_down, b_down, z_int, z_ffn))
    y = MaskedFFN.apply(x.reshape(-1, shape[-1]), w_up, b_up, z_int, w_down, b_down, z_ffn)
    return y.reshape(*shape[:-1], w_down.shape[0])


# ---------------------------------------------------------------------------------------------
# the PyTorch reference


def ffn_reference(x, w_up, b_up, w_down, b_down, z_int=None, z_ffn=None):
    """The same computation in plain PyTorch (prunekit's eager FeedForward before its residual)."""
    h = torch.nn.functional.gelu(x @ w_up.t() + b_up)
    if z_int is not None:
        h = h * z_int
    y = h @ w_down.t() + b_down
    return y if z_ffn is None else y * z_ffn

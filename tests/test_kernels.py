"""Triton kernels (prunekit.kernels) against their PyTorch references: forward and every gradient,
float64 as the reference; determinism; strided inputs; a few masked training steps of a model on each
kernel path; what --kernels triton refuses.

Where they run: in the Triton interpreter on the CPU (conftest sets TRITON_INTERPRET=1; fp32 and fp16:
the interpreter's bf16 is broken), or compiled on a CUDA GPU with TRITON_INTERPRET=0 (bench/gpu_check.sh;
fp32, fp16 and bf16). Tolerance: within FACTOR times the error of the same computation in plain
PyTorch at the same precision (the flash-attention rule), with a floor. fp32 dots run in TF32 on a GPU
(prunekit.kernels.tuning), so there the fp32 reference is PyTorch with TF32 matmuls allowed; the
interpreter computes fp32 dots exactly."""
import copy
import os
from contextlib import contextmanager

import pytest
import torch

from conftest import random_batch, tiny_model
from prunekit import Masks
from prunekit.kernels.attention import attention_reference, masked_attention
from prunekit.kernels.ffn import ffn_reference, masked_ffn


pytestmark = pytest.mark.usefixtures("one_thread")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET is off and there is no CUDA GPU to compile the kernels for",
                allow_module_level=True)
DEVICE = "cpu" if INTERPRETED else "cuda"
DTYPES = [torch.float32, torch.float16] + ([] if INTERPRETED else [torch.bfloat16])
FACTOR = 2.0
FLOOR = {torch.float32: 5e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}   # errors below these always pass
# a direct fp32 comparison: exact dots in the interpreter; TF32 (11 significant bits) on a GPU
FP32_RTOL = 1e-4 if INTERPRETED else 3e-3


@contextmanager
def reference_numerics(dtype):
    """PyTorch computing at the kernels' precision: TF32 matmuls for fp32 on a GPU (no effect on a CPU)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == torch.float32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def rel_err(got, want):
    """max |got - want| / max |want| (absolute when want is all zero)."""
    scale = want.abs().max()
    return ((got.double() - want).abs().max() / (scale if scale > 0 else 1)).item()


def run(fn, inputs, grad_out, dtype):
    """fn(*inputs) in dtype with gradients: (output, [gradient of each input but a 0/1 key mask])."""
    xs = [t.to(DEVICE, dtype).clone().requires_grad_(not is_mask(t)) for t in inputs]
    with reference_numerics(dtype):
        out = fn(*xs)
        out.backward(grad_out.to(DEVICE, dtype))
    return out.detach(), [x.grad for x in xs if x.requires_grad]


def is_mask(t) -> bool:
    return t.dim() == 2 and bool(((t == 0) | (t == 1)).all())


def attention_case(B, H, S, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, S, D, generator=g, dtype=torch.float64) for _ in range(3))
    key_mask = torch.ones(B, S, dtype=torch.float64)
    if B > 1:
        key_mask[1, S // 2 + 1:] = 0               # ragged batch: padded keys (and padded query rows)
    if B > 2:
        key_mask[2] = 0                             # an example whose keys are all padding
    gate = torch.rand(H, generator=g, dtype=torch.float64) + 0.2
    gate[0] = 0.0                                   # a head gated off entirely
    return (q, k, v, key_mask, gate), torch.randn(B, H, S, D, generator=g, dtype=torch.float64)


def check_against_reference(fn, reference, inputs, grad_out):
    """Output and every gradient of fn within FACTOR x the error of `reference` at each precision."""
    want, want_grads = run(reference, inputs, grad_out, torch.float64)
    for dtype in DTYPES:
        got, grads = run(fn, inputs, grad_out, dtype)
        ref, ref_grads = run(reference, inputs, grad_out, dtype)
        for name, g, r, w in zip(["output"] + [f"gradient {i}" for i in range(len(grads))], [got, *grads],
                                 [ref, *ref_grads], [want, *want_grads]):
            assert rel_err(g, w) <= FACTOR * max(rel_err(r, w), FLOOR[dtype]), (dtype, name)


@pytest.mark.parametrize("B, H, S, D", [(3, 3, 37, 32), (2, 2, 1, 32), (3, 2, 130, 64), (1, 3, 20, 32)])
def test_attention_forward_and_gradients_match_pytorch(B, H, S, D):
    inputs, grad_out = attention_case(B, H, S, D)
    check_against_reference(masked_attention, attention_reference, inputs, grad_out)


def test_attention_gate_gradient_is_exact_for_a_head_that_is_off():
    inputs, do = attention_case(2, 3, 9, 32)
    (q, k, v, key_mask, gate), do = (t.to(DEVICE) for t in inputs), do.to(DEVICE)
    gate = gate.float().requires_grad_()
    out = masked_attention(q.float(), k.float(), v.float(), key_mask, gate)
    out.backward(do.float())
    assert out[:, 0].abs().max() == 0                          # gated off: no output
    ungated = attention_reference(q, k, v, key_mask)
    want = (ungated * do).sum((0, 2, 3))                       # d out / d gate[h] = the ungated output
    assert torch.allclose(gate.grad.double(), want, rtol=FP32_RTOL, atol=1e-5)
    assert gate.grad[0] != 0                                   # an off head still learns whether to come back


def ffn_case(N, d, F, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    w_up, w_down = torch.randn(F, d, generator=g, dtype=torch.float64) * 0.3, torch.randn(d, F, generator=g,
                                                                                          dtype=torch.float64) * 0.3
    b_up, b_down = torch.randn(F, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    z_int = torch.rand(F, generator=g, dtype=torch.float64)
    z_int[:3] = 0.0                                            # units gated off
    z_ffn = torch.tensor(0.7, dtype=torch.float64)
    return (x, w_up, b_up, w_down, b_down, z_int, z_ffn), torch.randn(N, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("N, d, F", [(37, 32, 48), (5, 16, 100), (130, 32, 64)])
def test_ffn_forward_and_gradients_match_pytorch(N, d, F):
    inputs, grad_out = ffn_case(N, d, F)
    check_against_reference(masked_ffn, ffn_reference, inputs, grad_out)


def test_kernels_are_deterministic():
    inputs, grad_out = attention_case(3, 2, 70, 32)
    first, second = run(masked_attention, inputs, grad_out, torch.float32), run(masked_attention, inputs, grad_out,
                                                                                 torch.float32)
    assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[1], second[1]))
    inputs, grad_out = ffn_case(37, 32, 100)
    first, second = run(masked_ffn, inputs, grad_out, torch.float32), run(masked_ffn, inputs, grad_out, torch.float32)
    assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def test_attention_refuses_a_head_dim_it_cannot_tile():
    q = torch.randn(1, 2, 5, 12, device=DEVICE)
    with pytest.raises(ValueError, match="tiles head dims 32, 64, got 12"):
        masked_attention(q, q, q, torch.ones(1, 5, device=DEVICE))


def strided(t):
    """The same values as t, in a tensor that is not contiguous (every other element of a bigger one)."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2]


def test_ffn_is_right_for_strided_vectors():
    """The kernel reads b_up, z_int (and b_down, through torch) with stride 1: the launcher makes them so."""
    (x, w_up, b_up, w_down, b_down, z_int, z_ffn), _ = ffn_case(37, 32, 48)
    args = [t.to(DEVICE, torch.float32) for t in (x, w_up, b_up, w_down, b_down, z_int, z_ffn)]
    want = ffn_reference(*args)
    x, w_up, b_up, w_down, b_down, z_int, z_ffn = args
    b_up, b_down, z_int = strided(b_up), strided(b_down), strided(z_int)
    assert not (b_up.is_contiguous() or b_down.is_contiguous() or z_int.is_contiguous())
    got = masked_ffn(x, w_up, b_up, w_down, b_down, z_int, z_ffn)
    assert rel_err(got, want.double()) < FP32_RTOL


def test_attention_is_right_for_strided_inputs():
    """q, k, v as the model makes them (a [B, S, H, d_h] view transposed) and a strided gate."""
    (q, k, v, key_mask, gate), _ = attention_case(3, 3, 37, 32)
    q, k, v, key_mask, gate = (t.to(DEVICE, torch.float32) for t in (q, k, v, key_mask, gate))
    want = attention_reference(q.double(), k.double(), v.double(), key_mask, gate.double())
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not any(t.is_contiguous() for t in views)
    got = masked_attention(*views, key_mask, strided(gate))
    assert rel_err(got, want) < FP32_RTOL


# ---------------------------------------------------------------------------------------------
# the model on each path


def masked_steps(kernels, steps=3):
    """A few SGD steps of a masked tiny model (head dim 32, as the Triton attention needs); returns
    the losses and the gradients of the five masks at the first step."""
    torch.manual_seed(0)
    model = tiny_model(hidden_size=64, head_dim=32, num_heads=[2, 2], ffn_dim=[24, 24]).train().to(DEVICE)
    for module in model.modules():  # dropout off: the Triton attention has none, and the paths must agree
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.set_kernels(kernels)
    masks = Masks(z_mha=torch.tensor([0.9, 1.0]), z_head=torch.tensor([[1.0, 0.5], [0.0, 0.8]]),
                  z_ffn=torch.tensor([1.0, 0.6]), z_int=torch.rand(2, 24, generator=torch.Generator().manual_seed(1)),
                  z_hidden=torch.ones(64)).to(DEVICE)
    for _, t in masks.items():
        t.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = {**random_batch(batch=4, seq=11), "labels": torch.tensor([0, 1, 2, 1])}
    batch = {k: t.to(DEVICE) for k, t in batch.items()}
    losses, mask_grads = [], None
    for i in range(steps):
        loss = model(**batch, masks=masks).loss
        loss.backward()
        if i == 0:
            mask_grads = {n: t.grad.clone() for n, t in masks.items()}
        opt.step()
        opt.zero_grad()
        for _, t in masks.items():
            t.grad = None
        losses.append(loss.item())
    return losses, mask_grads


@pytest.mark.parametrize("kernels", ["triton", "sdpa"])
def test_masked_training_steps_track_the_eager_path(kernels):
    want_losses, want_grads = masked_steps("torch")
    losses, grads = masked_steps(kernels)
    assert losses == pytest.approx(want_losses, rel=FP32_RTOL / 10)
    for name, g in want_grads.items():
        assert torch.allclose(grads[name], g, rtol=FP32_RTOL, atol=1e-6), name


def test_set_kernels_resolves_auto_and_refuses_unknown_modes():
    from prunekit.errors import PrunekitError
    model = tiny_model()
    assert model.kernels == "torch"
    assert model.set_kernels("auto").kernels == "torch"         # no CUDA here: eager (measured faster than sdpa)
    assert model.set_kernels("sdpa").bert.layers[0].ffn.kernels == "torch"   # sdpa is an attention path only
    with pytest.raises(PrunekitError, match="kernels must be one of torch, sdpa, triton, auto"):
        model.set_kernels("cuda")


def test_export_uses_the_eager_graph_whatever_the_kernels(tmp_path):
    from prunekit.export.onnx_export import torch_to_onnx
    model = tiny_model(hidden_size=64, head_dim=32, num_heads=[2, 2], ffn_dim=[24, 24]).to(DEVICE)
    model = model.set_kernels("triton").cpu()
    graph = torch_to_onnx(copy.deepcopy(model), tmp_path / "m.onnx")
    assert "Softmax" in {n.op_type for n in graph.graph.node}  # the eager attention, not a custom call


def test_kernel_benchmark_without_cuda_says_so_and_exits_0(capsys):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_kernels", Path(__file__).parents[1] / "bench" / "kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: bench/kernels.py would time the kernels")
    assert bench.main([]) == 0
    assert "no CUDA GPU here" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# what --kernels triton and --precision bf16 refuse (GPUs faked: the device queries are monkeypatched)


def fake_gpu(monkeypatch, capability, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_triton_refuses_old_gpus_and_a_triton_too_old_for_the_gpu(monkeypatch):
    import triton
    from prunekit.errors import PrunekitError
    from prunekit.model import resolve_kernels
    fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    with pytest.raises(PrunekitError, match=r"need compute capability >= 8.0 \(bf16 tensor cores\), this GPU has 7.5"):
        resolve_kernels("triton", "cuda", 64)
    assert resolve_kernels("auto", "cuda", 64) == "torch"
    fake_gpu(monkeypatch, (9, 0), "NVIDIA H100")
    assert resolve_kernels("triton", "cuda", 64) == resolve_kernels("auto", "cuda", 64) == "triton"
    assert resolve_kernels("auto", "cuda", 12) == "torch"                     # a head dim it cannot tile
    with pytest.raises(PrunekitError, match="tiles head dims 32, 64; this model's is 12: use --kernels torch"):
        resolve_kernels("triton", "cuda", 12)
    monkeypatch.setattr(triton, "__version__", "3.2.0")
    with pytest.raises(PrunekitError, match=r"triton 3.2.0 is too old for the kernels on compute capability 9.0: "
                                            r"need triton >= 3.7; use --kernels torch"):
        resolve_kernels("triton", "cuda", 64)
    assert resolve_kernels("auto", "cuda", 64) == "torch"


def test_bf16_on_a_gpu_without_bf16_names_the_gpu_and_what_to_use(monkeypatch):
    from prunekit.errors import PrunekitError
    from prunekit.machine import check_precision
    fake_gpu(monkeypatch, (7, 0), "Tesla V100-SXM2-16GB")
    with pytest.raises(PrunekitError, match=r"^--precision bf16 needs a GPU with bf16 \(compute capability >= 8.0\); "
                                            r"Tesla V100-SXM2-16GB has 7.0: use --precision fp32$"):
        check_precision("bf16", "cuda")
    check_precision("fp32", "cuda")
    check_precision("bf16", "cpu")             # a CPU without native bf16 emulates it: slower, not wrong
    fake_gpu(monkeypatch, (8, 0), "NVIDIA A100")
    check_precision("bf16", "cuda")


@pytest.mark.parametrize("case", ["triton on a CPU", "bf16 on a V100"])
def test_the_cli_refuses_before_any_work(case, monkeypatch, tmp_path, capsys):
    """One line, exit 2, before the model or the data is read: the GLUE folder named does not exist."""
    from prunekit import cli
    from prunekit.kernels import tuning
    if case == "triton on a CPU":
        monkeypatch.setattr(tuning, "INTERPRETING", False)
        extra = ["--kernels", "triton", "--device", "cpu"]
        want = "--kernels triton runs on CUDA GPUs; use torch (or auto) on the CPU"
    else:
        fake_gpu(monkeypatch, (7, 0), "Tesla V100-SXM2-16GB")
        extra, want = ["--precision", "bf16", "--device", "cuda"], "Tesla V100-SXM2-16GB has 7.0: use --precision fp32"
    for verb in (["finetune", "--model", "minilm"], ["compress", "--method", "cofi", "--teacher", "minilm",
                                                       "--target-sparsity", "0.5"]):
        out = tmp_path / verb[0]
        assert cli.main(verb + ["--task", "sst2", "--glue-dir", str(tmp_path / "no-glue"), "--output", str(out),
                                *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert want in err and len(err.splitlines()) == 1, err
        assert not out.exists()

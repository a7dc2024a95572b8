"""Triton kernels (prunekit.kernels) against their PyTorch references, in the Triton interpreter
(conftest sets TRITON_INTERPRET=1): forward and every gradient, in float64 as the reference, fp32 and
fp16; determinism; and a few masked training steps of a model on each kernel path."""
import copy

import pytest
import torch

from conftest import random_batch, tiny_model
from prunekit import Masks
from prunekit.kernels.attention import attention_reference, masked_attention
from prunekit.kernels.ffn import ffn_reference, masked_ffn


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(got, want):
    """max |got - want| / max |want| (absolute when want is all zero)."""
    scale = want.abs().max()
    return ((got.double() - want).abs().max() / (scale if scale > 0 else 1)).item()


def run(fn, inputs, grad_out, dtype):
    """fn(*inputs) in dtype with gradients: (output, [gradient of each input but a 0/1 key mask])."""
    xs = [t.to(dtype).clone().requires_grad_(not is_mask(t)) for t in inputs]
    out = fn(*xs)
    out.backward(grad_out.to(dtype))
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


def check_against_reference(fn, reference, inputs, grad_out, fp16_factor=2.0):
    want, want_grads = run(reference, inputs, grad_out, torch.float64)
    got, grads = run(fn, inputs, grad_out, torch.float32)
    assert rel_err(got, want) < 1e-4
    for g, w in zip(grads, want_grads):
        assert rel_err(g, w) < 1e-4
    # fp16: within twice the error of the same computation in plain PyTorch fp16
    got16, grads16 = run(fn, inputs, grad_out, torch.float16)
    ref16, ref_grads16 = run(reference, inputs, grad_out, torch.float16)
    assert rel_err(got16, want) <= fp16_factor * max(rel_err(ref16, want), 1e-3)
    for g, r, w in zip(grads16, ref_grads16, want_grads):
        assert rel_err(g, w) <= fp16_factor * max(rel_err(r, w), 1e-3)


@pytest.mark.parametrize("B, H, S, D", [(3, 3, 37, 32), (2, 2, 1, 16), (3, 2, 130, 64), (1, 3, 20, 32)])
def test_attention_forward_and_gradients_match_pytorch(B, H, S, D):
    inputs, grad_out = attention_case(B, H, S, D)
    check_against_reference(masked_attention, attention_reference, inputs, grad_out)


def test_attention_gate_gradient_is_exact_for_a_head_that_is_off():
    (q, k, v, key_mask, gate), do = attention_case(2, 3, 9, 16)
    gate = gate.float().requires_grad_()
    out = masked_attention(q.float(), k.float(), v.float(), key_mask, gate)
    out.backward(do.float())
    assert out[:, 0].abs().max() == 0                          # gated off: no output
    ungated = attention_reference(q, k, v, key_mask)
    want = (ungated * do).sum((0, 2, 3))                       # d out / d gate[h] = the ungated output
    assert torch.allclose(gate.grad.double(), want, rtol=1e-4, atol=1e-5)
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
    q = torch.randn(1, 2, 5, 12)
    with pytest.raises(ValueError, match="power-of-two head dim >= 16"):
        masked_attention(q, q, q, torch.ones(1, 5))


# ---------------------------------------------------------------------------------------------
# the model on each path


def masked_steps(kernels, steps=3):
    """A few SGD steps of a masked tiny model (head dim 16, as the Triton attention needs); returns
    the losses and the gradients of the five masks at the first step."""
    torch.manual_seed(0)
    model = tiny_model(hidden_size=32, head_dim=16, num_heads=[2, 2], ffn_dim=[24, 24]).train()
    for module in model.modules():  # dropout off: the Triton attention has none, and the paths must agree
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.set_kernels(kernels)
    masks = Masks(z_mha=torch.tensor([0.9, 1.0]), z_head=torch.tensor([[1.0, 0.5], [0.0, 0.8]]),
                  z_ffn=torch.tensor([1.0, 0.6]), z_int=torch.rand(2, 24, generator=torch.Generator().manual_seed(1)),
                  z_hidden=torch.ones(32))
    for _, t in masks.items():
        t.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = {**random_batch(batch=4, seq=11), "labels": torch.tensor([0, 1, 2, 1])}
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
    assert losses == pytest.approx(want_losses, rel=1e-5)
    for name, g in want_grads.items():
        assert torch.allclose(grads[name], g, rtol=1e-4, atol=1e-6), name


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
    model = tiny_model(hidden_size=32, head_dim=16, num_heads=[2, 2], ffn_dim=[24, 24]).set_kernels("triton")
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

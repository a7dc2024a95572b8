"""Fisher information of the head and FFN-neuron masks (Kwon et al. 2022, Fisher-based mask search;
reference code: WoosukKwon/retraining-free-pruning, prune/fisher.py).

Every head and every FFN neuron gets a multiplicative mask fixed at 1. The task loss on training
labels is back-propagated to the masks only (weights frozen, model in eval mode, so no dropout), one
mini-batch at a time. The per-batch gradients are kept, because two stages need more than their
squares:
  diagonal Fisher  I_u = sum_b g_{b,u}^2                       -> search (importance of each unit)
  block Fisher     F_layer = sum_b g_b g_b^T, within one layer -> rearrangement (cross terms)
The gradients are of the batch-mean loss, as in the reference: not per-example gradients.

precision="bf16" runs the forward and backward under bfloat16 autocast: faster on CPUs with native
bf16 (AVX512_BF16 / AMX) and on recent GPUs. The bf16 mask gradients correlate closely with the fp32
ones, yet near-ties in the ranking flip. A single run once looked worse for it; paired over sampling
seeds the bf16 masks score within the spread that the sample alone causes
(bench/results/fisher_precision.md). The pipeline's default stays fp32, the reference's precision;
"auto" picks bf16 where the hardware has it and fp32 elsewhere (emulated bf16 would be slower).
"""
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..machine import keep_freed_memory, native_bf16
from ..masks import Masks

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def resolve_precision(precision: str, device) -> str:
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    return precision


def mask_gradients(model, batches, progress: bool = True, desc: str = "fisher", precision: str = "fp32"):
    """Per-batch gradients of the loss w.r.t. all-ones z_head and z_int masks.

    batches: an iterable of dicts with input_ids, attention_mask, token_type_ids and labels.
    precision: fp32, bf16 (autocast) or auto (see the module docstring).
    Returns (g_head (B, L, H), g_int (B, L, F)), B = number of batches, on the CPU in float32.
    Under torchrun each process takes every N-th batch and the per-batch gradients are gathered, so
    every process ends with all of them (in batch order).
    """
    keep_freed_memory()  # each batch reallocates the same buffers (autocast's bf16 weight copies)
    all_batches = list(batches)
    batches = all_batches[distributed.rank()::distributed.world_size()]
    cfg = model.config
    dev = next(model.parameters()).device
    precision = resolve_precision(precision, dev)
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # only the masks need gradients: no weight grads computed or stored
    masks = Masks.ones(cfg, ("z_head", "z_int")).to(dev)
    for _, t in masks.items():
        t.requires_grad_(True)
    g_head, g_int = [], []
    try:
        total = len(batches) if hasattr(batches, "__len__") else None
        for batch in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False):
            batch = {k: v.to(dev) for k, v in batch.items() if k in MODEL_KEYS}
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(**batch, masks=masks).loss
            head, inter = torch.autograd.grad(loss, (masks.z_head, masks.z_int))
            g_head.append(head.detach().float().cpu())
            g_int.append(inter.detach().float().cpu())
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)
    if not all_batches:
        raise ValueError("no batches: cannot compute mask gradients")
    cfg_shapes = ((0, cfg.num_layers, cfg.num_heads[0]), (0, cfg.num_layers, cfg.ffn_dim[0]))
    stacked = [torch.stack(g) if g else torch.empty(shape) for g, shape in zip((g_head, g_int), cfg_shapes)]
    return tuple(distributed.gather_batches(g, len(all_batches)) for g in stacked)  # (B, L, H), (B, L, F)


def diagonal_fisher(grads: torch.Tensor) -> torch.Tensor:
    """(B, L, U) per-batch gradients -> (L, U) importance sum_b g^2."""
    return grads.pow(2).sum(0)

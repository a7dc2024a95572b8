"""What CoFi constrains: the expected size of the gated model, the target schedule, the Lagrangian.

Expected size. With p = P(z != 0) of each gate (gates.Gates.prob_nonzero) and the cost model's own
per-unit costs (prunekit.cost.UnitCosts: a head costs head_per_dim * d + head_fixed, and so on), the
expected cost replaces every count by its expectation, gates being independent:
    d       -> D   = sum_i p_hidden,i                       (kept hidden dims)
    heads_l -> sum_h p_head,l,h ;  units_l -> sum_j p_int,l,j
    present -> p_mha,l and p_ffn,l
so for certain gates (p in {0, 1}) it equals the exact cost of the compact model, for any d, d_h, F, L.
Three constraints share it:
    "sparsity": s = 1 - E[params] / params of the dense model   (CoFi's; encoder params, section 3.1)
    "macs":     s = 1 - E[MACs] / dense MACs, at the task's length distribution (what post-training
                pruning targets), target = 1 - (MACs kept)
    "latency":  s = 1 - E[latency] / dense latency, from the block-latency tables (prunekit.latency) timed
                on the deploy runtime: per layer, P(sublayer) * fit(expected unit count), with the
                piecewise-linear fit (flat up to T units, then linear); the sum is scaled by the share
                of hidden dims kept (the tables are timed at the full width: an approximation)

Lagrangian (CoFi, eq. 6): L_c = lambda_1 (s - t) + lambda_2 (s - t)^2, added to the loss; the model
and the gates minimise it, lambda_1 and lambda_2 (starting at 0) maximise it by gradient ascent with
their own optimiser. The target t rises linearly from 0 to its final value over the warm-up steps
that follow the pre-pruning steps.
"""
import torch
import torch.nn as nn

from ..cost import mac_unit_costs, macs, param_counts, param_unit_costs
from ..errors import PrunekitError
from ..latency import fit_piecewise_linear


class ExpectedCost:
    """s(gates) for one budget kind (prunekit.budget) on one dense model (see the module docstring)."""

    def __init__(self, config, kind: str, lengths=None, table: dict | None = None):
        if not config.is_uniform():
            raise PrunekitError("CoFi needs a dense model (same head count and FFN width in every layer)")
        self.fits = None
        self.L, self.H, self.F, self.d = config.num_layers, config.num_heads[0], config.ffn_dim[0], config.hidden_size
        if kind == "latency":
            if table is None:
                raise ValueError("the latency constraint needs the block-latency tables")
            self.fits = fit_piecewise_linear(table["mha"]), fit_piecewise_linear(table["ffn"])
            self.dense = float(self.L * (self.fits[0](self.H) + self.fits[1](self.F)))
        elif kind == "sparsity":
            self.costs, self.dense = param_unit_costs(config), float(param_counts(config)["encoder"])
        else:
            if lengths is None:
                raise ValueError("the macs constraint needs the task's length distribution")
            self.costs, self.dense = mac_unit_costs(config, lengths=lengths), float(macs(config, lengths=lengths)["total"])

    def expected(self, probs: dict) -> torch.Tensor:
        """E[cost] from P(z != 0) per gate (missing gates count as always on)."""
        ref = next(iter(probs.values()))
        one = lambda shape: torch.ones(shape, dtype=ref.dtype, device=ref.device)
        D = probs["z_hidden"].sum() if "z_hidden" in probs else self.d
        heads = probs["z_head"].sum(1) if "z_head" in probs else self.H * one(self.L)
        units = probs["z_int"].sum(1) if "z_int" in probs else self.F * one(self.L)
        mha, ffn_on = probs.get("z_mha", one(self.L)), probs.get("z_ffn", one(self.L))
        if self.fits is not None:  # latency: the fitted block time of the expected unit counts
            attn = mha * self.fits[0](heads).to(ref.dtype)
            ffn = ffn_on * self.fits[1](units).to(ref.dtype)
            return (attn.sum() + ffn.sum()) * (D / self.d)
        attn, ffn = self.costs.layer(D, heads, units, mha, ffn_on)
        return attn.sum() + ffn.sum()

    def sparsity(self, probs: dict) -> torch.Tensor:
        """s = 1 - E[cost] / dense cost."""
        return 1.0 - self.expected(probs) / self.dense


def target_at(step: int, final: float, pre_steps: int, warmup_steps: int) -> float:
    """The target s after `step` optimisation steps: 0 during pre-pruning, then linear to `final`."""
    if step < pre_steps:
        return 0.0
    if warmup_steps <= 0:
        return final
    return final * min(1.0, (step - pre_steps) / warmup_steps)


class Lagrangian(nn.Module):
    """L_c = lambda_1 (s - t) + lambda_2 (s - t)^2 with both multipliers starting at 0."""

    def __init__(self):
        super().__init__()
        self.lambda_1 = nn.Parameter(torch.zeros(()))
        self.lambda_2 = nn.Parameter(torch.zeros(()))

    def forward(self, s: torch.Tensor, t: float) -> torch.Tensor:
        gap = s - t
        return self.lambda_1 * gap + self.lambda_2 * gap * gap

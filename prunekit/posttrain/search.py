"""Mask search: which heads and FFN neurons to keep under a cost budget, given their Fisher importance
(Kwon et al. 2022, mask search under a FLOPs or latency constraint; reference code:
WoosukKwon/retraining-free-pruning, prune/search.py).

MACs (search_mac). A head costs the same MACs wherever it is, and so does a neuron, so the problem
is a knapsack with two item types and additive value. For a fixed number h of kept heads the best
choice is the h most important heads plus as many of the most important neurons as the rest of the
budget pays for; sweeping h = 0 .. L*H therefore solves it exactly. By default every layer keeps at
least one head and one neuron (min_per_layer; still exact): prunekit removes a sublayer with no units
outright, LayerNorm and bias included, where the reference's masked model kept both, and on MiniLM
an empty top FFN collapsed MRPC to the majority class (bench/results/posttrain.md, last note).

Latency (search_latency). Block latency is modelled per layer as a piecewise-linear function of the
unit count (prunekit.latency.fit_piecewise_linear): flat at c up to T units (the hardware is under-used anyway), then
c + slope * (n - T); zero units cost nothing (the sublayer is gone). So a kept layer keeps at least its
T most important units ("base units"), whole layers may be dropped (least base importance first), and
the rest of the budget buys the globally most important extra units in a sweep like the MAC one.
Fixes over the reference: the budget left after the fixed costs is computed once per (MHA drops, FFN
drops) pair instead of being subtracted cumulatively, and the objective counts the base units (so
dropping a layer is charged for what it loses).
"""
import math
from dataclasses import dataclass

import torch

from ..errors import PrunekitError
from ..latency import LatencyFit


@dataclass
class SearchResult:
    head_mask: torch.Tensor    # (L, H) of 0/1
    neuron_mask: torch.Tensor  # (L, F) of 0/1
    cost: float                # under the search's cost model (MACs, or fitted latency)
    budget: float
    score: float               # summed importance of the kept units


def _top_mask(importance: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask of the k largest entries of importance (any shape)."""
    flat = torch.zeros(importance.numel())
    if k > 0:
        flat[torch.argsort(importance.flatten(), descending=True, stable=True)[:k]] = 1.0
    return flat.view(importance.shape)


def _too_small(budget, what):
    return PrunekitError(f"the budget ({budget:.4g} {what}) is too small to keep a single head or FFN neuron; "
                         "raise the constraint")


def search_mac(head_importance, neuron_importance, head_cost: float, neuron_cost: float, budget: float,
               min_per_layer: int = 1) -> SearchResult:
    """Best binary masks with h*head_cost + n*neuron_cost <= budget (exact, for additive importance).

    min_per_layer: every layer keeps at least this many heads and this many neurons. Any solution
    that does can swap its heads in a layer for that layer's most important ones without losing, so
    the top min_per_layer units of each layer are kept outright and the sweep runs over the rest;
    the result is still exact under the constraint.
    """
    L, H = head_importance.shape
    F = neuron_importance.shape[1]
    m_h, m_n = min(min_per_layer, H), min(min_per_layer, F)
    h_order = head_importance.double().argsort(dim=1, descending=True, stable=True)
    n_order = neuron_importance.double().argsort(dim=1, descending=True, stable=True)
    fixed_h, fixed_n = torch.zeros(L, H, dtype=torch.bool), torch.zeros(L, F, dtype=torch.bool)
    fixed_h.scatter_(1, h_order[:, :m_h], True)
    fixed_n.scatter_(1, n_order[:, :m_n], True)
    left = budget - L * (m_h * head_cost + m_n * neuron_cost)
    if left < -1e-9 * max(budget, 1.0):
        what = f"{m_h} head(s) and {m_n} FFN neuron(s) per layer" if min_per_layer else "a single head or FFN neuron"
        raise PrunekitError(f"the budget ({budget:.4g} MACs) is too small to keep {what}; raise the constraint")
    free_h = head_importance.double().masked_fill(fixed_h, float("-inf"))       # the units the sweep chooses from
    free_n = neuron_importance.double().masked_fill(fixed_n, float("-inf"))
    hi = free_h.flatten().sort(descending=True).values[:L * H - int(fixed_h.sum())]
    ni = free_n.flatten().sort(descending=True).values[:L * F - int(fixed_n.sum())]
    cum_h = torch.cat([torch.zeros(1, dtype=torch.float64), hi.cumsum(0)])   # cum_h[h] = best h free heads
    cum_n = torch.cat([torch.zeros(1, dtype=torch.float64), ni.cumsum(0)])
    best = None
    for h in range(len(hi) + 1):
        rest = left - h * head_cost
        if rest < -1e-9 * max(budget, 1.0):
            break
        n = min(len(ni), max(0, math.floor(rest / neuron_cost * (1 + 1e-12))))
        score = float(cum_h[h] + cum_n[n])
        if best is None or score > best[0]:
            best = (score, h, n)
    _, h, n = best
    head_mask = (fixed_h | _top_mask(free_h, h).bool()).float()
    neuron_mask = (fixed_n | _top_mask(free_n, n).bool()).float()
    if head_mask.sum() + neuron_mask.sum() == 0:
        raise _too_small(budget, "MACs")
    score = float((head_mask.double() * head_importance.double()).sum() + (neuron_mask.double() * neuron_importance.double()).sum())
    return SearchResult(head_mask, neuron_mask, float(head_mask.sum() * head_cost + neuron_mask.sum() * neuron_cost),
                        budget, score)


def _extra_count(left: float, slope: float, available: int) -> int:
    if slope <= 0:
        return available
    return min(available, max(0, math.floor(left / slope * (1 + 1e-12))))


def search_latency(head_importance, neuron_importance, mha_fit: LatencyFit, ffn_fit: LatencyFit,
                   budget: float, drop_layers: bool = False) -> SearchResult:
    """Masks whose estimated latency sum_l mha_fit(heads_l) + ffn_fit(neurons_l) is <= budget.

    drop_layers: whether a whole attention or FFN sublayer may go (0 units, latency 0). prunekit
    removes such a sublayer outright, bias and LayerNorm included (the reference's masked model kept
    them), which on MiniLM collapsed MRPC to the majority class; so by default every layer keeps its
    base units."""
    L, H = head_importance.shape
    F = neuron_importance.shape[1]
    Tm, Tf = min(mha_fit.T, H), min(ffn_fit.T, F)
    h_order = head_importance.double().argsort(dim=1, descending=True, stable=True)    # (L, H) per-layer ranking
    n_order = neuron_importance.double().argsort(dim=1, descending=True, stable=True)  # (L, F)
    h_sorted = head_importance.double().gather(1, h_order)
    n_sorted = neuron_importance.double().gather(1, n_order)
    base_h, base_n = h_sorted[:, :Tm].sum(1), n_sorted[:, :Tf].sum(1)                  # (L,)
    mha_drop_order = base_h.argsort(stable=True).tolist()  # least important layers are dropped first
    ffn_drop_order = base_n.argsort(stable=True).tolist()
    cm, cf = mha_fit.c, ffn_fit.c
    best = None
    drops = range(L + 1) if drop_layers else range(1)
    for dm in drops:
        kept_m = sorted(mha_drop_order[dm:])
        for df in drops:
            kept_f = sorted(ffn_drop_order[df:])
            if not kept_m and not kept_f:
                continue
            left = budget - len(kept_m) * cm - len(kept_f) * cf  # computed afresh for every pair
            if left < -1e-9 * max(budget, 1.0):
                continue
            extra_h = h_sorted[kept_m, Tm:].flatten().sort(descending=True).values
            extra_n = n_sorted[kept_f, Tf:].flatten().sort(descending=True).values
            cum_h = torch.cat([torch.zeros(1, dtype=torch.float64), extra_h.cumsum(0)])
            cum_n = torch.cat([torch.zeros(1, dtype=torch.float64), extra_n.cumsum(0)])
            base = float(base_h[kept_m].sum() + base_n[kept_f].sum())
            for h in range(len(extra_h) + 1):
                rest = left - h * mha_fit.slope
                if rest < -1e-9 * max(budget, 1.0):
                    break
                n = _extra_count(rest, ffn_fit.slope, len(extra_n))
                score = base + float(cum_h[h] + cum_n[n])
                if best is None or score > best[0]:
                    best = (score, kept_m, kept_f, h, n)
    if best is None:
        if drop_layers:
            raise _too_small(budget, "ms")
        raise PrunekitError(f"the budget ({budget:.4g} ms) is too small to keep the base units of every layer "
                            f"({Tm} heads, {Tf} FFN neurons: {L * (cm + cf):.4g} ms); raise the constraint")
    score, kept_m, kept_f, h, n = best
    head_mask = _masks_from_choice(head_importance, h_order, h_sorted, kept_m, Tm, h)
    neuron_mask = _masks_from_choice(neuron_importance, n_order, n_sorted, kept_f, Tf, n)
    cost = float(mha_fit(head_mask.sum(1)).sum() + ffn_fit(neuron_mask.sum(1)).sum())
    return SearchResult(head_mask, neuron_mask, cost, budget, score)


def _masks_from_choice(importance, order, sorted_imp, kept_layers, T, extra):
    """Base units (top T per kept layer) plus the `extra` most important non-base units of kept layers."""
    L, U = importance.shape
    mask = torch.zeros(L, U)
    cand = []  # (importance, layer, unit) of the non-base units of kept layers
    for l in kept_layers:
        mask[l, order[l, :T]] = 1.0
        cand += [(float(sorted_imp[l, j]), l, int(order[l, j])) for j in range(T, U)]
    cand.sort(key=lambda t: -t[0])  # stable: ties keep layer/rank order, as the sweep's sort did
    for _, l, u in cand[:extra]:
        mask[l, u] = 1.0
    return mask

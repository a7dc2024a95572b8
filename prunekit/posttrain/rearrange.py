"""Mask rearrangement (Kwon et al. 2022; reference code: WoosukKwon/retraining-free-pruning,
prune/search.py): inside each layer, choose *which* units to prune, keeping *how many* the search chose.

The search ranks units by the diagonal Fisher, i.e. it assumes units are pruned independently. To
second order, zeroing a set P of units in one layer raises the loss by about
    1^T F_P 1 = sum_b (sum_{i in P} g_{b,i})^2 = || sum_{i in P} g_i ||^2
where g_i is unit i's vector of per-batch gradients and F the within-layer block Fisher, cross terms
included: units whose gradients cancel are cheap to prune together. The greedy swap below lowers that
objective one unit at a time; it never raises it, because "swap nothing" is always a candidate.
"""
import torch
from tqdm.auto import tqdm


def pruned_set_objective(grads: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """grads (B, L, U) per-batch gradients, mask (L, U) 0/1 -> (L,) ||sum of pruned units' g||^2."""
    pruned = (mask == 0).to(grads.dtype)                         # (L, U)
    summed = torch.einsum("blu,lu->lb", grads, pruned)           # (L, B)
    return summed.pow(2).sum(1)


def rearrange_layer(g: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """g (U, B) per-batch gradients of one layer's units, keep (U,) 0/1 -> new keep, same count.

    Start from the search's pruned set P. Visit the kept units from least to most important
    (diagonal Fisher); for each, add it to P and then drop from P the unit whose removal leaves the
    smallest ||sum_{P} g||^2 (possibly the unit just added).
    """
    g = g.double()
    in_p = keep == 0                                             # (U,) the pruned set P
    kept = (keep != 0).nonzero().flatten()
    if not in_p.any() or len(kept) == 0:
        return keep.clone()
    sq = g.pow(2).sum(1)                                         # (U,) also the diagonal Fisher
    kept = kept[sq[kept].argsort(stable=True)].tolist()          # ascending importance
    total = g[in_p].sum(0)                                       # (B,) running sum over P
    for u in kept:
        with_u = total + g[u]
        in_p[u] = True
        # ||with_u - g_c||^2 = ||with_u||^2 - 2 g_c.with_u + ||g_c||^2; the first term is the same for all c
        scores = sq - 2 * (g @ with_u)                           # (U, B) x (B,) -> (U,)
        scores[~in_p] = float("inf")
        c = int(scores.argmin())
        in_p[c] = False
        total = with_u - g[c]
    new = torch.ones_like(keep)
    new[in_p] = 0
    return new


def rearrange(grads: torch.Tensor, mask: torch.Tensor, progress: bool = True, desc: str = "rearrange") -> torch.Tensor:
    """grads (B, L, U), mask (L, U) -> rearranged mask; every layer keeps as many units as before."""
    out = mask.clone()
    for l in tqdm(range(mask.shape[0]), desc=desc, disable=not progress, leave=False):
        out[l] = rearrange_layer(grads[:, l, :].T, mask[l])      # (B, U) -> (U, B)
    return out

"""Hard-concrete L0 gates (Louizos et al. 2018) for CoFi's five masks (Xia et al. 2022, section 3.1).

Each gate z has a learned log_alpha. In training one sample is drawn per step for all gates (shared by
the whole batch):
    u ~ U(eps, 1 - eps),  s = sigmoid((log u - log(1 - u) + log_alpha) / beta),
    z = clamp(s * (zeta - gamma) + gamma, 0, 1)           gamma = -0.1, zeta = 1.1, beta = 2/3
so z is exactly 0 or 1 with positive probability and in between otherwise, and gradients reach
log_alpha through the masked forward. The expected number of non-zero gates is differentiable:
    P(z != 0) = 1 - Q(0) = sigmoid(log_alpha - beta * log(-gamma / zeta))

  name      log_alpha shape   acts on (prunekit.Masks)                 init mean
  z_mha     (L,)              attention sublayer output                10 (on)
  z_head    (L, H)            each head's context                      10
  z_ffn     (L,)              FFN sublayer output                      10
  z_int     (L, F)            each post-GELU FFN unit                  log((1 - 0.5) / 0.5) = 0
  z_hidden  (d,)              every hidden dim, shared by all layers   10
log_alpha starts at N(mean, 0.01^2) and is clamped to [log 1e-2, log 1e2] after every step, as in CoFi's
code (so "10" means "at the ceiling, P(z != 0) = 0.998").

Deterministic masks (evaluation and the end of pruning), per group (a layer's heads, a layer's units,
all hidden dims, each layer gate on its own): the expected number of non-zero gates sum P(z != 0),
rounded, keep their value; the units with the lowest score sigmoid(0.8 * log_alpha / beta) become 0.
Kept units keep that score as their value (about 0.996 at the ceiling), which surgery folds into the
weights. A layer gate drops its sublayer exactly when P(z != 0) < 0.5. Given the cost model, the
rounding is done for all groups together (up or down, so that the whole costs what the gates are
expected to cost) rather than group by group.
"""
import math

import torch
import torch.nn as nn

from .. import distributed
from ..masks import NAMES, Masks, expected_shapes

GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0   # stretch limits and temperature of the hard concrete
EPS = 1e-6                                 # keeps the uniform noise and the CDF away from 0 and 1
LOG_ALPHA_RANGE = (math.log(1e-2), math.log(1e2))
SCORE_SCALE = 0.8                          # the score's "magic number" in CoFi's deterministic masks
INIT_STD = 0.01
INIT_ON = 10.0                             # starts "on" (then clamped to the ceiling)


def init_mean(name: str, droprate_init: float = 0.5) -> float:
    """CoFi starts z_int at log((1 - p) / p) for a drop rate p, every other gate fully on."""
    return math.log(1 - droprate_init) - math.log(droprate_init) if name == "z_int" else INIT_ON


class Gates(nn.Module):
    """The log_alpha of every gated mask of a dense model (a subset of prunekit.masks.NAMES)."""

    def __init__(self, config, names=NAMES, droprate_init: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        shapes = expected_shapes(config)
        unknown = set(names) - set(NAMES)
        if unknown:
            raise ValueError(f"unknown gates {sorted(unknown)}; choose from {NAMES}")
        self.names = tuple(n for n in NAMES if n in names)
        self.log_alpha = nn.ParameterDict()
        for n in self.names:
            t = torch.empty(shapes[n])
            nn.init.normal_(t, init_mean(n, droprate_init), INIT_STD, generator=generator)
            self.log_alpha[n] = nn.Parameter(t)

    def sample(self) -> Masks:
        """One hard-concrete draw of every gate (differentiable in log_alpha). Under torchrun the
        uniform noise is rank 0's, so every process trains under the same masks."""
        noise = {n: torch.rand_like(la) for n, la in self.log_alpha.items()}
        distributed.broadcast_(noise.values())
        out = {}
        for n, la in self.log_alpha.items():
            u = noise[n].clamp(EPS, 1 - EPS)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la) / BETA)
            out[n] = (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
        return Masks(**out)

    def prob_nonzero(self) -> dict:
        """name -> P(z != 0) per gate (differentiable)."""
        shift = BETA * math.log(-GAMMA / ZETA)
        return {n: torch.sigmoid(la - shift).clamp(EPS, 1 - EPS) for n, la in self.log_alpha.items()}

    @torch.no_grad()
    def clamp_(self):
        for la in self.log_alpha.values():
            la.clamp_(*LOG_ALPHA_RANGE)

    @torch.no_grad()
    def deterministic(self, cost=None) -> Masks:
        """The masks the pruned model keeps (module docstring). cost: an ExpectedCost; with it, each
        group's count is its expected count rounded down or up so that the cost of the whole stays
        closest to the expected cost (largest-remainder rounding), instead of rounding every group
        on its own: with few large units (a head is 1/12 of a layer's attention) independent rounding
        can miss the expected size by more than one per cent."""
        probs = self.prob_nonzero()
        score = {n: torch.sigmoid(la / BETA * SCORE_SCALE) for n, la in self.log_alpha.items()}
        expected = {n: (p.sum(-1) if n in ("z_head", "z_int") else p.sum()) for n, p in probs.items()
                    if n in GROUPED}
        counts = {n: e.round() for n, e in expected.items()}
        if cost is not None:
            counts = {n: e.floor() for n, e in expected.items()}
            groups = sorted(((float(e.reshape(-1)[i] - counts[n].reshape(-1)[i]), n, i)
                             for n, e in expected.items() for i in range(e.numel())), reverse=True)
            want = float(cost.expected(probs))
            gap = abs(float(cost.expected(kept(self._masks(score, probs, counts)))) - want)
            for frac, n, i in groups:
                if frac <= 0:
                    break
                trial = {k: v.clone() for k, v in counts.items()}
                trial[n].reshape(-1)[i] += 1
                new_gap = abs(float(cost.expected(kept(self._masks(score, probs, trial)))) - want)
                if new_gap < gap:
                    counts, gap = trial, new_gap
        return self._masks(score, probs, counts)

    def _masks(self, score: dict, probs: dict, counts: dict) -> Masks:
        out = {}
        for n, sc in score.items():
            if n in ("z_mha", "z_ffn"):          # each layer gate is its own group of one
                out[n] = torch.where(probs[n] >= 0.5, sc, torch.zeros_like(sc))
            elif n == "z_hidden":                # one group: all hidden dims, at least one kept
                out[n] = _keep_top(sc[None], counts[n].reshape(1).clamp(min=1))[0]
            else:                                # one group per layer: z_head (L, H), z_int (L, F)
                out[n] = _keep_top(sc, counts[n])
        return Masks(**out)


GROUPED = ("z_head", "z_int", "z_hidden")


def kept(masks: Masks) -> dict:
    """name -> 1.0 where a unit is kept, else 0.0: 'probabilities' whose expected cost is the masks' cost."""
    return {n: (t != 0).float() for n, t in masks.items()}


def _keep_top(score: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of scores -> the same rows with only the counts[row] highest kept (the others 0)."""
    out = torch.zeros_like(score)
    for row, k, src in zip(out, counts.tolist(), score):
        k = int(max(0, min(k, src.numel())))
        if k:
            top = torch.argsort(src, descending=True, stable=True)[:k]
            row[top] = src[top]
    return out

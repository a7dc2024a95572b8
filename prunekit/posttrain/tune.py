"""Mask tuning (Kwon et al. 2022, anchors.md §2.8): real-valued scales for the kept heads and neurons,
fitted layer by layer with least squares so that the pruned model reproduces a teacher's sublayer
outputs.

Teacher: the same weights under the binary "teacher-assistant" masks searched at sqrt(c) (not the
dense model). Student: the rearranged masks at c. Layer by layer, both models run over the sample
from their own inputs (so the student's earlier errors are visible to later fits), and for each
sublayer the student's kept-unit scales s solve

    min_s  sum_tokens || sum_u s_u a_u(t) - r(t) ||^2  +  lam * ||s - 1||^2

    attention: a_h(t) = ctx_h(t) W_O[:, h]^T,        r = pre-LN output of the teacher - b_O - x_student
    FFN:       a_j(t) = gelu(up(x))_j(t) W_down[:, j], r = pre-LN output of the teacher - b_down - x_student

i.e. the pre-LayerNorm sublayer output (sublayer + residual) is reconstructed. Padding tokens are
left out, and at the last layer of a classifier only the [CLS] token, the one the pooler reads.
The ridge term pulls the scales toward 1 (lam = ridge * mean diagonal of A^T A, so it is scale-free);
the normal equations are solved in float64 with torch.linalg. A sublayer whose solve fails or gives
a scale with |s| > max_scale keeps scale 1, and the loop goes on (the reference stopped there).

Decision on the FFN target: the teacher's FFN uses the teacher's neuron mask, so the target is the
output of the teacher-assistant model as defined. (The reference captured the activations before its
neuron-mask hook ran, so its FFN target silently used all neurons; anchors.md §2.8.)
"""
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..masks import Masks
from ..model import attention_bias

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class SublayerFit:
    layer: int
    kind: str                # "attention" or "ffn"
    units: int               # kept units whose scales were fitted
    status: str              # "ok", "skipped: ...", or "kept scale 1: ..."
    error_before: float = float("nan")  # sum of squared reconstruction errors with scales 1
    error_after: float = float("nan")   # ... with the fitted scales (equal to before unless status is ok)
    scales: list = field(default_factory=list)


def ridge_solve(AtA: torch.Tensor, Atb: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_s ||A s - b||^2 + lam ||s - 1||^2 from the normal equations, lam = ridge * mean diag(A^T A)."""
    k = AtA.shape[0]
    lam = ridge * AtA.diagonal().mean().clamp(min=1e-30)
    eye = torch.eye(k, dtype=AtA.dtype)
    return torch.linalg.solve(AtA + lam * eye, Atb + lam)


def _tokens(t, mask, cls_only):
    """(B, S, ...) -> (N, ...): the real tokens (or only [CLS])."""
    return t[:, 0] if cls_only else t[mask]


class _Normal:
    """Accumulates A^T A, A^T b and b^T b for the least squares problem of one sublayer."""

    def __init__(self, k):
        self.AtA = torch.zeros(k, k, dtype=torch.float64)
        self.Atb = torch.zeros(k, dtype=torch.float64)
        self.btb = 0.0

    def error(self, s):
        """||A s - b||^2 = s^T A^T A s - 2 s^T A^T b + b^T b."""
        return float(s @ self.AtA @ s - 2 * s @ self.Atb + self.btb)

    def solve(self, ridge, max_scale):
        ones = torch.ones(len(self.Atb), dtype=torch.float64)
        before = self.error(ones)
        try:
            s = ridge_solve(self.AtA, self.Atb, ridge)
        except RuntimeError as e:  # torch.linalg.LinAlgError is a RuntimeError
            return ones, f"kept scale 1: solve failed ({type(e).__name__})", before, before
        if not torch.isfinite(s).all():
            return ones, "kept scale 1: non-finite solution", before, before
        if s.abs().max() > max_scale:
            return ones, f"kept scale 1: |scale| {float(s.abs().max()):.3g} > {max_scale:g}", before, before
        return s, "ok", before, self.error(s)


@torch.no_grad()
def tune_masks(model, batches, teacher: Masks, student: Masks, cls_only_last: bool = True, ridge: float = 1e-3,
               max_scale: float = 10.0, progress: bool = True):
    """Fit real-valued scales for the student's kept heads and neurons.

    batches: a list of dicts with input_ids, attention_mask, token_type_ids (the same sample is
    walked once per layer, so it is consumed into memory). teacher, student: Masks with z_head and
    z_int for the dense model. Returns (tuned Masks, [SublayerFit per sublayer]).
    """
    enc = model.bert
    dev = next(model.parameters()).device
    model.eval()
    t_head, t_int = teacher.z_head.to(dev), teacher.z_int.to(dev)
    head, neuron = student.z_head.clone().to(dev).float(), student.z_int.clone().to(dev).float()
    # per batch: teacher input, student input, additive attention bias, real-token mask
    xt, xs, biases, tok = [], [], [], []
    for b in batches:
        ids = b["input_ids"].to(dev)
        types = b.get("token_type_ids")
        types = torch.zeros_like(ids) if types is None else types.to(dev)
        am = b.get("attention_mask")
        am = torch.ones_like(ids) if am is None else am.to(dev)
        x = enc.embeddings(ids, types)
        xt.append(x)
        xs.append(x)  # both models share the embeddings; later layers replace the entries
        biases.append(attention_bias(am, x.dtype))
        tok.append(am.bool())
    fits = []
    L = len(enc.layers)
    for l in tqdm(range(L), desc="tune", disable=not progress, leave=False):
        layer = enc.layers[l]
        cls_only = cls_only_last and l == L - 1
        if layer.attention.num_heads > 0:
            fit = _tune_attention(layer.attention, l, xt, xs, biases, tok, t_head[l], head[l], cls_only, ridge, max_scale)
            fits.append(fit)
        if layer.ffn.width > 0:
            fit = _tune_ffn(layer.ffn, l, xt, xs, tok, t_int[l], neuron[l], cls_only, ridge, max_scale)
            fits.append(fit)
    return Masks(z_head=head.cpu(), z_int=neuron.cpu()), fits


def _tune_attention(att, l, xt, xs, biases, tok, z_teacher, z_student, cls_only, ridge, max_scale):
    """Fit the scales of the kept heads of layer l (z_student is updated in place) and advance xt, xs."""
    kept = z_student.nonzero().flatten()
    t_alive = bool((z_teacher != 0).any())
    dh, d = att.head_dim, att.output.weight.shape[0]
    W = att.output.weight[:, (kept[:, None] * dh + torch.arange(dh, device=kept.device)).flatten()]  # (d, k*dh)
    W = W.view(d, len(kept), dh).permute(1, 2, 0)                                                   # (k, dh, d)
    normal = _Normal(len(kept))
    fit_it = len(kept) > 0 and t_alive
    for i in range(len(xt)):
        # teacher: pre-LN output (target) and post-LN output (next input)
        out_t = att.project(att.heads(xt[i], biases[i], z_teacher))
        pre_t = out_t + xt[i]
        xt[i] = att.residual(out_t, xt[i], None, torch.tensor(t_alive, device=xt[i].device))
        if not fit_it:
            continue
        ctx = att.heads(xs[i], biases[i], z_student)[:, kept]         # (B, k, S, dh), at the current scales
        A = torch.einsum("bksh,khd->bskd", ctx, W)                    # (B, S, k, d): head h's share of W_O ctx
        r = pre_t - att.output.bias - xs[i]                           # (B, S, d)
        A, r = _tokens(A, tok[i], cls_only).double(), _tokens(r, tok[i], cls_only).double()  # (N, k, d), (N, d)
        normal.AtA += torch.einsum("nkd,njd->kj", A, A)
        normal.Atb += torch.einsum("nkd,nd->k", A, r)
        normal.btb += float((r * r).sum())
    if not fit_it:
        why = "skipped: no kept heads" if len(kept) == 0 else "skipped: the teacher has no heads here"
        fit = SublayerFit(l, "attention", len(kept), why)
    else:
        s, status, before, after = normal.solve(ridge, max_scale)
        z_student[kept] = z_student[kept] * s.to(z_student.dtype)
        fit = SublayerFit(l, "attention", len(kept), status, before, after, s.tolist())
    s_alive = (z_student != 0).any()
    for i in range(len(xs)):
        out_s = att.project(att.heads(xs[i], biases[i], z_student))
        xs[i] = att.residual(out_s, xs[i], None, s_alive)
    return fit


def _tune_ffn(ffn, l, xt, xs, tok, z_teacher, z_student, cls_only, ridge, max_scale):
    """Fit the scales of the kept neurons of layer l (z_student is updated in place) and advance xt, xs."""
    kept = z_student.nonzero().flatten()
    t_alive = bool((z_teacher != 0).any())
    Wk = ffn.down.weight[:, kept].double()                            # (d, k): neuron j writes W_down[:, j]
    normal = _Normal(len(kept))
    fit_it = len(kept) > 0 and t_alive
    HtH = torch.zeros(len(kept), len(kept), dtype=torch.float64, device=Wk.device)
    for i in range(len(xt)):
        out_t = ffn.down(ffn.hidden(xt[i], z_teacher))
        pre_t = out_t + xt[i]
        xt[i] = ffn.residual(out_t, xt[i], None, torch.tensor(t_alive, device=xt[i].device))
        if not fit_it:
            continue
        h = _tokens(ffn.hidden(xs[i], z_student)[..., kept], tok[i], cls_only).double()  # (N, k)
        r = _tokens(pre_t - ffn.down.bias - xs[i], tok[i], cls_only).double()   # (N, d)
        # A (N*d, k) has column j = h_j (x) w_j; A^T A = (H^T H) * (W^T W), A^T b = sum_t h_j(t) (w_j . r_t)
        HtH += h.T @ h
        normal.Atb += (h * (r @ Wk)).sum(0)
        normal.btb += float((r * r).sum())
    if not fit_it:
        why = "skipped: no kept neurons" if len(kept) == 0 else "skipped: the teacher has no neurons here"
        fit = SublayerFit(l, "ffn", len(kept), why)
    else:
        normal.AtA = HtH * (Wk.T @ Wk)
        s, status, before, after = normal.solve(ridge, max_scale)
        z_student[kept] = z_student[kept] * s.to(z_student.dtype)
        fit = SublayerFit(l, "ffn", len(kept), status, before, after)
    s_alive = (z_student != 0).any()
    for i in range(len(xs)):
        out_s = ffn.down(ffn.hidden(xs[i], z_student))
        xs[i] = ffn.residual(out_s, xs[i], None, s_alive)
    return fit

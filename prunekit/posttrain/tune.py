"""Mask tuning (Kwon et al. 2022, mask tuning; reference code: WoosukKwon/retraining-free-pruning,
prune/rescale.py): real-valued scales for the kept heads and neurons, fitted layer by layer with least squares so that the pruned model reproduces a teacher's sublayer
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
neuron-mask hook ran, so its FFN target silently used all neurons: WoosukKwon/retraining-free-pruning,
prune/rescale.py, get_ffn_lstsq.)
"""
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..masks import Masks
from ..model import attention_bias
from ..surgery import prune

@dataclass
class SublayerFit:
    layer: int
    kind: str                # "attention" or "ffn"
    units: int               # kept units whose scales were fitted
    status: str              # "ok", "skipped: ...", or "kept scale 1: ..."
    error_before: float = float("nan")  # sum of squared reconstruction errors with scales 1
    error_after: float = float("nan")   # ... with the fitted scales (equal to before unless status is ok)
    target_energy: float = float("nan")  # sum of squares of the fitted target (errors are exact to ~1e-6 of it)
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

    def __init__(self, k, device="cpu"):
        # sums stay on the model's device (no copy per batch); the solve runs on the CPU in float64
        self.AtA = torch.zeros(k, k, dtype=torch.float64, device=device)
        self.Atb = torch.zeros(k, dtype=torch.float64, device=device)
        self.btb = 0.0

    def error(self, s):
        """||A s - b||^2 = s^T A^T A s - 2 s^T A^T b + b^T b."""
        return float(s @ self.AtA @ s - 2 * s @ self.Atb + self.btb)

    def solve(self, ridge, max_scale):
        self.AtA, self.Atb = self.AtA.cpu(), self.Atb.cpu()
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

    def fit(self, l, kind, ridge, max_scale):
        s, status, before, after = self.solve(ridge, max_scale)
        return s, SublayerFit(l, kind, len(s), status, before, after, self.btb)


@torch.no_grad()
def tune_masks(model, batches, teacher: Masks, student: Masks, cls_only_last: bool = True, ridge: float = 1e-3,
               max_scale: float = 10.0, precision: str = "fp32",
               ffn_target: str = "assistant", progress: bool = True):
    """Fit real-valued scales for the student's kept heads and neurons.

    batches: a list of dicts with input_ids, attention_mask, token_type_ids (the same sample is
    walked once per layer, so it is held in memory; every real token is fitted, so the caller picks
    how many examples: stages.tuning_subset). teacher, student: Masks with z_head and z_int
    for the dense model. Returns (tuned Masks, [SublayerFit per sublayer]).

    Both models run in their compact form (prunekit.prune), which computes exactly what the masked
    model computes but only over kept units: the teacher costs ~sqrt(c) and the student ~c of the
    dense model. A compact head / neuron carries its current mask value folded into its weights, so
    a fitted scale s multiplies that value.

    precision="bf16": the teacher's and student's sublayers run under bfloat16 autocast (LayerNorm
    stays fp32); the least-squares products and solves are always fp32/fp64.

    ffn_target: "assistant" (the default, see the module docstring) or "dense": the FFN target is the
    dense FFN applied to the assistant's input, which is what the reference computed by accident.
    """
    dev = next(model.parameters()).device
    model.eval()
    t_model = prune(model, Masks(z_head=teacher.z_head, z_int=teacher.z_int)).eval()
    s_model = prune(model, Masks(z_head=student.z_head, z_int=student.z_int)).eval()
    head, neuron = student.z_head.clone().float().cpu(), student.z_int.clone().float().cpu()
    xt, xs, biases, tok = first_layer_inputs(model, batches, dev)
    if ffn_target not in ("assistant", "dense"):
        raise ValueError(f"ffn_target must be 'assistant' or 'dense', not {ffn_target!r}")
    bf16 = precision == "bf16"
    amp = lambda: torch.autocast(torch.device(dev).type, dtype=torch.bfloat16, enabled=bf16)
    fits = []
    L = model.config.num_layers
    for l in tqdm(range(L), desc="tune", disable=not progress, leave=False):
        t_layer, s_layer = t_model.bert.layers[l], s_model.bert.layers[l]
        last = l == L - 1
        cls_only = cls_only_last and last
        if model.config.num_heads[l] > 0:
            kept = head[l].nonzero().flatten()
            fit, s = _tune_attention(t_layer.attention, s_layer.attention, l, xt, xs, biases, tok, cls_only,
                                     ridge, max_scale, amp)
            head[l, kept] *= s.float().cpu()
            fits.append(fit)
        if model.config.ffn_dim[l] > 0:
            kept = neuron[l].nonzero().flatten()
            fit, s = _tune_ffn(t_layer.ffn, s_layer.ffn, l, xt, xs, tok, cls_only, ridge, max_scale, amp,
                               advance=not last,
                               target_ffn=model.bert.layers[l].ffn if ffn_target == "dense" else None)
            neuron[l, kept] *= s.float().cpu()
            fits.append(fit)
    return Masks(z_head=head, z_int=neuron), fits


def first_layer_inputs(model, batches, dev) -> tuple:
    """Per batch: the teacher's and the student's input to layer 0 (the same embeddings; later layers
    replace the entries), the additive attention bias and the real-token mask."""
    xt, xs, biases, tok = [], [], [], []
    for b in batches:
        ids = b["input_ids"].to(dev)
        types = b.get("token_type_ids")
        types = torch.zeros_like(ids) if types is None else types.to(dev)
        am = b.get("attention_mask")
        am = torch.ones_like(ids) if am is None else am.to(dev)
        x = model.bert.embeddings(ids, types)
        xt.append(x)
        xs.append(x)
        biases.append(attention_bias(am, x.dtype))
        tok.append(am.bool())
    return xt, xs, biases, tok


def _pass_through(kind, units, l, k, xt, xs, amp, run_teacher, run_student):
    """A sublayer with nothing to fit (no kept units in the student or none in the teacher): both
    models run it as it is, and the k kept units keep scale 1."""
    why = f"skipped: no kept {units}" if k == 0 else f"skipped: the teacher has no {units} here"
    for i in range(len(xt)):
        with amp():
            xt[i], xs[i] = run_teacher(i).float(), run_student(i).float()
    return SublayerFit(l, kind, k, why), torch.ones(k, dtype=torch.float64)


def _tune_attention(t_att, s_att, l, xt, xs, biases, tok, cls_only, ridge, max_scale, amp):
    """Fit the scales of the student's heads in layer l; advance xt and xs past the attention sublayer.
    t_att, s_att: the compact teacher's and student's attention (their kept heads only)."""
    k, dh = s_att.num_heads, s_att.head_dim
    if k == 0 or t_att.num_heads == 0:
        return _pass_through("attention", "heads", l, k, xt, xs, amp,
                             lambda i: t_att(xt[i], biases[i]), lambda i: s_att(xs[i], biases[i]))
    Wo = s_att.output.weight                                          # (d, k*dh): head h owns columns h*dh:(h+1)*dh
    G = torch.zeros(k * dh, k * dh, dtype=torch.float64, device=Wo.device)
    normal, ctxs = _Normal(k, Wo.device), []
    for i in range(len(xt)):
        with amp():
            out_t = t_att.project(t_att.heads(xt[i], biases[i]))
            ctx = s_att.heads(xs[i], biases[i])                        # (B, k, S, dh)
        pre_t = out_t.float() + xt[i]                                  # the teacher's pre-LN output: the target
        ctxs.append(ctx)
        ctx = ctx.float()
        B, _, S, _ = ctx.shape
        C = _tokens(ctx.permute(0, 2, 1, 3).reshape(B, S, k * dh), tok[i], cls_only)  # (N, k*dh) heads side by side
        r = _tokens(pre_t - s_att.output.bias - xs[i], tok[i], cls_only)              # (N, d)
        # regressor of head h: A_h(t) = W_O[:, h] ctx_h(t), never formed:
        #   A^T A [h, j] = sum over the (h, j) block of (C^T C) * (W_O^T W_O);  A^T b [h] = sum over block h of C * (r W_O)
        G += (C.T @ C).double()
        normal.Atb += (C * (r @ Wo)).sum(0).view(k, dh).sum(1).double()
        normal.btb += float((r.double() ** 2).sum())
        with amp():
            xt[i] = t_att.residual(out_t, xt[i], None, None).float()
    normal.AtA = (G * (Wo.T @ Wo).double()).view(k, dh, k, dh).sum((1, 3)).cpu()
    s, fit = normal.fit(l, "attention", ridge, max_scale)
    fit.scales = s.tolist()
    z = s.to(xs[0].device, xs[0].dtype)
    for i in range(len(xs)):
        with amp():
            ctx = ctxs[i] * z.view(1, k, 1, 1)
            xs[i] = s_att.residual(s_att.project(ctx), xs[i], None, None).float()
    return fit, s


def _tune_ffn(t_ffn, s_ffn, l, xt, xs, tok, cls_only, ridge, max_scale, amp, advance=True, target_ffn=None):
    """Fit the scales of the student's neurons in layer l; advance xt and xs past the FFN sublayer
    (unless advance is False: after the last layer nobody reads them). target_ffn: another FFN to
    take the target from (the dense one, to reproduce the reference's accident); default t_ffn."""
    target_ffn = t_ffn if target_ffn is None else target_ffn
    k = s_ffn.width
    if k == 0 or t_ffn.width == 0:
        return _pass_through("ffn", "neurons", l, k, xt, xs, amp, lambda i: t_ffn(xt[i]), lambda i: s_ffn(xs[i]))
    Wk = s_ffn.down.weight                                            # (d, k): neuron j writes column j
    normal = _Normal(k, Wk.device)
    # the student's activations are kept for the output pass when they fit in ~1 GB, else recomputed
    store = advance and sum(x.shape[0] * x.shape[1] for x in xs) * k <= 2.5e8
    hs = []
    for i in range(len(xt)):
        if cls_only:  # only [CLS] is read after the last layer: the FFNs (per token) run on it alone
            x_t, x_s = xt[i][:, 0], xs[i][:, 0]                       # (B, d)
            with amp():
                out_t, h = target_ffn.down(target_ffn.activations(x_t)), s_ffn.activations(x_s)  # h: (B, k)
            r = out_t.float() + x_t - s_ffn.down.bias - x_s
            h = h.float()
        else:
            with amp():
                out_t = target_ffn.down(target_ffn.activations(xt[i]))
                h_all = s_ffn.activations(xs[i])                           # (B, S, k)
            r = _tokens(out_t.float() + xt[i] - s_ffn.down.bias - xs[i], tok[i], False)  # (N, d)
            h = _tokens(h_all, tok[i], False).float()                 # (N, k)
            if store:
                hs.append(h_all)
            if advance:
                with amp():
                    if target_ffn is not t_ffn:
                        out_t = t_ffn.down(t_ffn.activations(xt[i]))
                    xt[i] = t_ffn.residual(out_t, xt[i], None, None).float()
        # A (N*d, k) has column j = h_j (x) w_j: A^T A = (H^T H) * (W^T W), A^T b = sum_t h_j(t) (w_j . r_t)
        normal.AtA += (h.T @ h).double()
        normal.Atb += (h * (r @ Wk)).sum(0).double()
        normal.btb += float((r.double() ** 2).sum())
    normal.AtA *= (Wk.T @ Wk).double()
    s, fit = normal.fit(l, "ffn", ridge, max_scale)
    if advance:
        if cls_only:
            raise ValueError("cls_only is for the last layer, which is not advanced")
        z = s.to(xs[0].device, xs[0].dtype)
        for i in range(len(xs)):
            with amp():
                h = hs[i] * z if store else s_ffn.activations(xs[i], z)
                xs[i] = s_ffn.residual(s_ffn.down(h), xs[i], None, None).float()
    return fit, s

"""Distillation from the fine-tuned teacher (CoFi, section 3.2): the loss the student trains on.

    L = alpha_pred * L_pred + alpha_layer * L_layer            (+ the Lagrangian while pruning)

Prediction: KL(softmax(z_t / T) || softmax(z_s / T)) * T^2, batch mean (MSE of the outputs for a
regression task). Layers: every chosen teacher layer i is matched to a student layer m(i), and
    L_layer = sum_i MSE(W h_s[m(i)], h_t[i])
with W a learned d x d projection (identity at the start) and the mean over real tokens and
hidden dims only (the reference averaged over padding too).

Dynamic matching (CoFi's "v4", done right): the teacher layers are visited top-down; each one goes
to the student layer with the lowest distance among those that are *present* (attention or FFN
survives) and lie strictly below the previous match. A teacher layer with no candidate left is
skipped, and so are the ones below it (the reference fell back to an index past the last layer).
Teacher layers are chosen in proportion to depth: every third layer ending at the top one (BERT-base
gives 2, 5, 8, 11, as in the paper; a 6-layer model 2, 5), unless given.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def prediction_loss(student_logits, teacher_logits, temperature: float, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    T = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / T, -1), F.softmax(teacher_logits.float() / T, -1),
                    reduction="batchmean") * T * T


def teacher_layers(num_layers: int, every: int = 3) -> list[int]:
    """Every `every`-th layer, ending at the top one (0-based): 12 -> [2, 5, 8, 11], 6 -> [2, 5], 2 -> [1]."""
    count = max(1, round(num_layers / every))
    return sorted({round((i + 1) * num_layers / count) - 1 for i in range(count)})


def match_layers(distances: torch.Tensor, teacher_idx: list[int], present: list[bool]) -> list[tuple[int, int]]:
    """distances (len(teacher_idx), L_student) -> [(teacher layer, student layer)], top-down, each
    match strictly below the previous one and on a present student layer."""
    pairs, below = [], len(present)
    for row in sorted(range(len(teacher_idx)), key=lambda r: -teacher_idx[r]):
        candidates = [j for j in range(below) if present[j]]
        if not candidates:
            break
        j = min(candidates, key=lambda c: float(distances[row, c]))
        pairs.append((teacher_idx[row], j))
        below = j
    return pairs


class LayerDistiller(nn.Module):
    """The projection W and the layer loss; `teacher_idx` are the teacher layers distilled."""

    def __init__(self, hidden_size: int, teacher_idx: list[int]):
        super().__init__()
        self.teacher_idx = list(teacher_idx)
        self.proj = nn.Linear(hidden_size, hidden_size)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(hidden_size))
            self.proj.bias.zero_()

    def forward(self, student_states, teacher_states, attention_mask, present: list[bool]):
        """student_states / teacher_states: the models' hidden_states tuples (embeddings first).
        Returns (loss, [(teacher layer, student layer)])."""
        real = attention_mask.bool()                                               # (B, S)
        s = [h[real].float() for h in student_states[1:]]                          # L_s x (N, d_s): real tokens
        t = {i: teacher_states[i + 1][real].float() for i in self.teacher_idx}     # (N, d)
        with torch.no_grad():  # the distance of every (teacher layer, student layer) pair picks the matches
            ps = self.proj(torch.stack(s))                                         # (L_s, N, d)
            dist = torch.stack([((ps - t[i]) ** 2).mean((1, 2)) for i in self.teacher_idx])  # (K, L_s)
        pairs = match_layers(dist, self.teacher_idx, present)
        loss = sum((F.mse_loss(self.proj(s[j]), t[i]) for i, j in pairs), torch.zeros((), device=s[0].device))
        return loss, pairs

    @torch.no_grad()
    def keep_inputs(self, kept: torch.Tensor):
        """The projection for a student whose hidden dims were cut to `kept` (indices)."""
        proj = nn.Linear(len(kept), self.proj.out_features).to(self.proj.weight.device)
        proj.weight.copy_(self.proj.weight[:, kept])
        proj.bias.copy_(self.proj.bias)
        self.proj = proj

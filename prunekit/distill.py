"""Distillation from the fine-tuned teacher (CoFi, Xia et al. 2022, section 3.2): the loss a student
trains on, and the trainer that trains on it. CoFi's pruning extends DistillTrainer with its gates;
post-training pruning's --distill-steps uses it as it is.

    L = alpha_pred * L_pred + alpha_layer * L_layer (+ alpha_task * the gold-label loss)

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
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .errors import PrunekitError
from .evaluation import evaluate_task, torch_predictor
from .options import NON_NEGATIVE, Range, check_options, option
from .training import Trainer

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def layer_list(text: str) -> tuple:
    """layer numbers separated by commas"""
    return tuple(int(x) for x in text.split(","))


@dataclass
class DistillConfig:
    """What a student distils from its teacher (the loss), CoFi's settings."""
    temperature: float = option(2.0, "prediction distillation temperature",
                                range=Range(0.01, 100))  # the paper's script; 1e-300 would overflow to NaN
    alpha_pred: float = option(0.1, "weight of prediction distillation", range=NON_NEGATIVE)  # the paper's script
    alpha_layer: float = option(0.9, "weight of layer distillation", range=NON_NEGATIVE)  # the paper's script
    alpha_task: float = option(0.0, "weight of the gold-label loss",
                               range=NON_NEGATIVE)  # CoFi uses none with a teacher
    distill_layers: tuple | None = option(None, "teacher layers to distil, 0-based, comma-separated", parse=layer_list,
                                          default_text="every third ending at the top one")
    freeze_embeddings: bool = field(default=True)  # CoFi's code never updates the embeddings

    def check(self):
        check_options(self)
        if self.alpha_pred + self.alpha_layer + self.alpha_task == 0:
            raise PrunekitError("all loss weights are 0: nothing to train on")
        return self


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


def distilled_layers(settings: DistillConfig, num_layers: int) -> list[int]:
    """The teacher layers distilled: the ones asked for, which must exist, or every third to the top."""
    layers = list(settings.distill_layers) if settings.distill_layers is not None else teacher_layers(num_layers)
    if not layers or any(not 0 <= i < num_layers for i in layers):
        raise PrunekitError(f"distill layers must be between 0 and {num_layers - 1}, got {layers}")
    return layers


def present_layers(config, masks=None) -> list[bool]:
    """Which student layers still compute something: attention or FFN alive (config and masks)."""
    out = []
    for l, (h, f) in enumerate(zip(config.num_heads, config.ffn_dim)):
        attn, ffn = h > 0, f > 0
        if masks is not None:
            if masks.z_mha is not None:
                attn = attn and bool(masks.z_mha[l] != 0)
            if masks.z_head is not None:
                attn = attn and bool((masks.z_head[l] != 0).any())
            if masks.z_ffn is not None:
                ffn = ffn and bool(masks.z_ffn[l] != 0)
            if masks.z_int is not None:
                ffn = ffn and bool((masks.z_int[l] != 0).any())
        out.append(attn or ffn)
    return out


class DistillTrainer(Trainer):
    """prunekit's Trainer with distillation from `teacher` as the loss: prediction and layer
    distillation (a learned projection the model optimiser updates with the student), the student's
    embeddings frozen as CoFi's code does. keep: which evaluation becomes the kept model, "final" or
    "best" (by the dev metric). A subclass adds masks per step (step_masks), a term to the loss
    (regularise), and what it learns besides (shared_parameters, step_optimizers)."""

    def __init__(self, model, teacher, task, args, settings: DistillConfig, distiller: LayerDistiller,
                 keep: str = "final", name: str = "distill"):
        self.settings, self.distiller, self.keep, self.name = settings, distiller, keep, name
        self.teacher = teacher.to(args.device).eval()  # runs under no_grad; its parameters are left as they are
        self.layer_map = None
        if settings.freeze_embeddings:  # no gradient is even computed for them
            for p in model.bert.embeddings.parameters():
                p.requires_grad_(False)
        super().__init__(model, task, args)
        self.distiller.to(args.device)

    def trainable(self):
        """The student's trainable weights and the layer projection."""
        yield from super().trainable()
        for name, p in self.distiller.named_parameters():
            yield f"distiller.{name}", p

    def losses_of(self, batch, masks=None) -> dict:
        """The distillation losses of one batch for the student under `masks`."""
        s = self.settings
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        labels = batch.get("labels") if s.alpha_task > 0 else None
        with torch.no_grad():  # the teacher only gives targets
            t_out = self.teacher(**inputs, output_hidden_states=True)
        s_out = self.net(**inputs, labels=labels, masks=masks, output_hidden_states=True)
        present = present_layers(self.model.config, masks)
        pred = prediction_loss(s_out.logits, t_out.logits, s.temperature, self.model.config.is_regression)
        layer, pairs = self.distiller(s_out.hidden_states, t_out.hidden_states, inputs["attention_mask"], present)
        total = s.alpha_pred * pred + s.alpha_layer * layer
        if s_out.loss is not None:  # the task loss on gold labels, off by default (CoFi distils only)
            total = total + s.alpha_task * s_out.loss
        return {"total": total, "pred": pred, "layer": layer, "pairs": pairs}

    def step_masks(self):
        """The masks the student trains under this step (none here)."""
        return None

    def regularise(self, loss: torch.Tensor) -> torch.Tensor:
        """What is added to the distillation loss outside autocast (nothing here)."""
        return loss

    def shared_parameters(self) -> list:
        """Parameters learned besides the student's (DDP averages only the student's gradients)."""
        return list(self.distiller.parameters())

    def train_step(self, batch) -> float:
        masks = self.step_masks()
        with self.autocast():  # the forward passes
            parts = self.losses_of(batch, masks)
        self.layer_map = parts["pairs"]  # (teacher layer, student layer), shown with each evaluation
        return self.optimise(self.regularise(parts["total"]))

    def after_backward(self) -> None:
        distributed.average_gradients(self.shared_parameters())

    def eval_masks(self) -> tuple:
        """(masks, extra figures) of an evaluation (none here)."""
        return None, {}

    def evaluate(self) -> dict:
        masks, extra = self.eval_masks()
        metrics = evaluate_task(torch_predictor(self.model, self.args.device, masks), self.task,
                                self.args.eval_batch_size, self.args.progress)
        self.model.train()
        if self.layer_map:
            extra["layer_map"] = " ".join(f"{t}>{s}" for t, s in self.layer_map)
        return {**metrics, **extra}

    def eligible(self, record: dict) -> bool:
        return self.keep == "best" or self.step >= self.total_steps

    def checkpoint_module(self) -> nn.Module:
        return nn.ModuleDict({"model": self.model, "distiller": self.distiller})

"""The CoFi training loop: prunekit's Trainer with a distillation loss, and, while pruning, the gates,
the Lagrangian and their own optimisers.

One class serves both phases of a CoFi run:
  pruning    (gates given) the dense student trains under a fresh hard-concrete sample of every gate
             each step; three optimisers: AdamW for the weights and the layer projection (linear
             decay), AdamW for log_alpha, AdamW with maximize=True for lambda (gradient ascent).
             The first `pre_steps` steps distil without masks (pre-pruning); the target then rises
             over `warmup_steps`. An evaluation uses the deterministic masks and may become the kept
             state only while both the expected sparsity and that of the deterministic masks (what
             surgery would cut) are within epsilon of the final target (CoFi's rule only asked the
             expected one to be above target - epsilon: an overshoot is as far from what was asked).
  fine-tune  (no gates) the compact student after surgery, distillation only.
Everything a resume needs (weights, log_alpha, lambda, projection, the three optimisers, the
scheduler, RNG, data position) goes through Trainer's checkpoint hooks.
"""
import torch
import torch.nn as nn

from .. import distributed
from ..errors import PrunekitError
from ..io import atomic_file
from ..training import Trainer, evaluate_task, torch_predictor
from .distill import LayerDistiller, prediction_loss
from .gates import Gates, kept
from .sparsity import ExpectedCost, Lagrangian, Target, target_at

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BEST_STATE = "best.safetensors"


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


class CoFiTrainer(Trainer):
    def __init__(self, model, teacher, task, args, settings, distiller: LayerDistiller, gates: Gates | None = None,
                 cost: ExpectedCost | None = None, target: Target | None = None, pre_steps: int = 0,
                 warmup_steps: int = 0, keep: str = "best"):
        """settings: a CoFiConfig (loss weights, temperature, reg_lr, epsilon, freeze_embeddings).
        keep: which evaluation becomes the kept model, "best" (by the dev metric) or "final"."""
        self.settings, self.distiller, self.gates, self.cost, self.target = settings, distiller, gates, cost, target
        self.pre_steps, self.warmup_steps, self.keep = pre_steps, warmup_steps, keep
        self.name = "cofi prune" if gates is not None else "cofi finetune"
        self.teacher = teacher.to(args.device).eval()  # runs under no_grad; its parameters are left as they are
        if settings.freeze_embeddings:  # CoFi's code never updates them: no gradient is even computed
            for p in model.bert.embeddings.parameters():
                p.requires_grad_(False)
        super().__init__(model, task, args)
        self.distiller.to(args.device)
        self.lagrangian = None
        self.last = {}
        if gates is not None:
            gates.to(args.device)
            self.lagrangian = Lagrangian().to(args.device)
            self.gate_optimizer = torch.optim.AdamW(gates.parameters(), lr=settings.reg_lr, weight_decay=0.0)
            self.lambda_optimizer = torch.optim.AdamW(self.lagrangian.parameters(), lr=settings.reg_lr,
                                                      weight_decay=0.0, maximize=True)
            if pre_steps > 0:  # the reference rebuilds the linear decay when pruning starts
                T, P = self.total_steps, pre_steps
                factor = lambda k: (T - k) / T if k < P else max(0.0, (T - k) / max(1, T - P))
                self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # -- what is trained ------------------------------------------------------------------------
    def trainable(self):
        """The weights the model optimiser updates: the student's (embeddings frozen, as CoFi's code
        does in every phase) and the layer projection."""
        freeze = self.settings.freeze_embeddings
        for name, p in self.model.named_parameters():
            if not (freeze and name.startswith("bert.embeddings.")):
                yield name, p
        for name, p in self.distiller.named_parameters():
            yield f"distiller.{name}", p

    def parameter_groups(self) -> list[dict]:
        decay, no_decay = [], []
        for name, p in self.trainable():
            (no_decay if name.endswith("bias") or ".norm." in name else decay).append(p)
        return [{"params": decay, "weight_decay": self.args.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    @property
    def pruning(self) -> bool:
        return self.gates is not None and self.step >= self.pre_steps

    def target_now(self) -> float:
        return target_at(self.step, self.target.sparsity, self.pre_steps, self.warmup_steps)

    # -- one step -------------------------------------------------------------------------------
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

    def train_step(self, batch) -> float:
        pruning = self.pruning
        masks = self.gates.sample() if pruning else None
        with self.autocast():  # the forward passes; gates, expected size and lambda stay fp32
            parts = self.losses_of(batch, masks)
        loss = parts["total"]
        self.layer_map = parts["pairs"]  # (teacher layer, student layer), shown with each evaluation
        if pruning:
            expected = self.cost.sparsity(self.gates.prob_nonzero())
            target = self.target_now()
            loss = loss + self.lagrangian(expected, target)
            self.last = {"s": expected.item(), "t": target, "lambda_1": self.lagrangian.lambda_1.item(),
                         "lambda_2": self.lagrangian.lambda_2.item()}
        if not torch.isfinite(loss):
            raise PrunekitError(f"loss became {loss.item()} at step {self.step + 1}; try a lower --lr")
        loss.backward()  # DDP averages the student's gradients; the gates' and the projection's are averaged here
        distributed.average_gradients(list(self.distiller.parameters()) +
                                      (list(self.gates.parameters()) if pruning else []))
        torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable()], self.args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        if pruning:
            self.gate_optimizer.step()
            self.lambda_optimizer.step()
            self.gates.clamp_()
        for opt, _ in self.optimizers().values():
            opt.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)  # frozen embeddings may still hold a gradient
        return loss.item()

    def postfix(self) -> dict:
        out = super().postfix()
        if self.last:
            out.update(s=f"{self.last['s']:.3f}", t=f"{self.last['t']:.3f}", lam=f"{self.last['lambda_1']:.3f}")
        return out

    # -- evaluation and the kept state ------------------------------------------------------------
    def evaluate(self) -> dict:
        masks, extra = None, {}
        if self.pruning:
            masks = self.gates.deterministic(self.cost)
            with torch.no_grad():
                extra = {"expected_sparsity": round(float(self.cost.sparsity(self.gates.prob_nonzero())), 5),
                         "deterministic_sparsity": round(float(self.cost.sparsity(kept(masks))), 5),
                         "target": round(self.target_now(), 5),
                         "lambda_1": self.lagrangian.lambda_1.item(), "lambda_2": self.lagrangian.lambda_2.item()}
        metrics = evaluate_task(torch_predictor(self.model, self.args.device, masks), self.task,
                                self.args.eval_batch_size, self.args.progress)
        self.model.train()
        if getattr(self, "layer_map", None):
            extra["layer_map"] = " ".join(f"{t}>{s}" for t, s in self.layer_map)
        return {**metrics, **extra}

    def eligible(self, record: dict) -> bool:
        if self.gates is not None:  # CoFi: only at the target size, expected and as it would be cut now
            eps, t = self.settings.sparsity_epsilon, self.target.sparsity
            return (self.pruning and abs(record["expected_sparsity"] - t) <= eps
                    and abs(record["deterministic_sparsity"] - t) <= eps)
        return self.keep == "best" or self.step >= self.total_steps

    def snapshot_best(self) -> dict:
        if self.gates is None:
            return super().snapshot_best()
        return {k: v.detach().to("cpu", copy=True) for k, v in self.pruned_state().items()}

    def write_best(self, directory, snapshot: dict):
        if self.gates is None:
            return super().write_best(directory, snapshot)
        from safetensors.torch import save_file
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(directory / BEST_STATE) as tmp:
            save_file({k: v.contiguous() for k, v in snapshot.items()}, str(tmp))

    def read_best(self, directory) -> dict:
        if self.gates is None:
            return super().read_best(directory)
        from safetensors.torch import load_file
        return load_file(str(directory / BEST_STATE))

    def pruned_state(self) -> dict:
        """What the end of pruning needs: the student's weights, the gates' log_alpha, the projection
        and the multipliers (for the report)."""
        return {f"{name}.{k}": v for name, module in self.checkpoint_module().items()
                for k, v in module.state_dict().items()}

    # -- checkpoint hooks -----------------------------------------------------------------------
    def optimizers(self) -> dict:
        out = super().optimizers()
        if self.gates is not None:
            out.update(gates=(self.gate_optimizer, None), lagrangian=(self.lambda_optimizer, None))
        return out

    def checkpoint_module(self) -> nn.Module:
        parts = {"model": self.model, "distiller": self.distiller}
        if self.gates is not None:
            parts.update(gates=self.gates, lagrangian=self.lagrangian)
        return nn.ModuleDict(parts)

    def extra_state(self) -> dict:
        return {"last": self.last}

    def load_extra_state(self, state: dict) -> None:
        self.last = state.get("last", {})

"""The CoFi pruning loop: prunekit's DistillTrainer with the gates, the Lagrangian and their own
optimisers.

The dense student trains under a fresh hard-concrete sample of every gate each step; three
optimisers: AdamW for the weights and the layer projection (linear decay), AdamW for log_alpha, AdamW
with maximize=True for lambda (gradient ascent). The first `pre_steps` steps distil without masks
(pre-pruning); the target then rises over `warmup_steps`. An evaluation uses the deterministic masks
and may become the kept state only while both the expected sparsity and that of the deterministic
masks (what surgery would cut) are within epsilon of the final target (CoFi's rule only asked the
expected one to be above target - epsilon: an overshoot is as far from what was asked).
The fine-tuning phase after surgery is a plain DistillTrainer. Everything a resume needs (weights,
log_alpha, lambda, projection, the three optimisers, the scheduler, RNG, data position) goes through
Trainer's checkpoint hooks.
"""
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..distill import DistillTrainer, LayerDistiller
from ..io import atomic_file
from .gates import Gates, kept
from .sparsity import ExpectedCost, Lagrangian, target_at

BEST_STATE = "best.safetensors"


class CoFiTrainer(DistillTrainer):
    def __init__(self, model, teacher, task, args, settings, distiller: LayerDistiller, gates: Gates,
                 cost: ExpectedCost, target: float, pre_steps: int = 0, warmup_steps: int = 0):
        """settings: a CoFiConfig (loss weights, temperature, reg_lr, epsilon, freeze_embeddings);
        target: the final sparsity of the constrained quantity (Budget.sparsity)."""
        self.gates, self.cost, self.target = gates, cost, target
        self.pre_steps, self.warmup_steps = pre_steps, warmup_steps
        super().__init__(model, teacher, task, args, settings, distiller, keep="best", name="cofi prune")
        self.last = {}
        gates.to(args.device)
        self.lagrangian = Lagrangian().to(args.device)
        self.gate_optimizer = torch.optim.AdamW(gates.parameters(), lr=settings.reg_lr, weight_decay=0.0)
        self.lambda_optimizer = torch.optim.AdamW(self.lagrangian.parameters(), lr=settings.reg_lr,
                                                  weight_decay=0.0, maximize=True)
        if pre_steps > 0:  # the reference rebuilds the linear decay when pruning starts
            T, P = self.total_steps, pre_steps
            factor = lambda k: (T - k) / T if k < P else max(0.0, (T - k) / max(1, T - P))
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    @property
    def pruning(self) -> bool:
        return self.step >= self.pre_steps

    def target_now(self) -> float:
        return target_at(self.step, self.target, self.pre_steps, self.warmup_steps)

    # -- one step -------------------------------------------------------------------------------
    def step_masks(self):
        return self.gates.sample() if self.pruning else None

    def regularise(self, loss: torch.Tensor) -> torch.Tensor:
        """+ the Lagrangian while pruning (gates, expected size and lambda stay fp32)."""
        if not self.pruning:
            return loss
        expected = self.cost.sparsity(self.gates.prob_nonzero())
        target = self.target_now()
        self.last = {"s": expected.item(), "t": target, "lambda_1": self.lagrangian.lambda_1.item(),
                     "lambda_2": self.lagrangian.lambda_2.item()}
        return loss + self.lagrangian(expected, target)

    def shared_parameters(self) -> list:
        return super().shared_parameters() + (list(self.gates.parameters()) if self.pruning else [])

    def step_optimizers(self) -> None:
        super().step_optimizers()
        if self.pruning:
            self.gate_optimizer.step()
            self.lambda_optimizer.step()
            self.gates.clamp_()

    def postfix(self) -> dict:
        out = super().postfix()
        if self.last:
            out.update(s=f"{self.last['s']:.3f}", t=f"{self.last['t']:.3f}", lam=f"{self.last['lambda_1']:.3f}")
        return out

    # -- evaluation and the kept state ------------------------------------------------------------
    def eval_masks(self) -> tuple:
        if not self.pruning:
            return None, {}
        masks = self.gates.deterministic(self.cost)
        with torch.no_grad():
            extra = {"expected_sparsity": round(float(self.cost.sparsity(self.gates.prob_nonzero())), 5),
                     "deterministic_sparsity": round(float(self.cost.sparsity(kept(masks))), 5),
                     "target": round(self.target_now(), 5),
                     "lambda_1": self.lagrangian.lambda_1.item(), "lambda_2": self.lagrangian.lambda_2.item()}
        return masks, extra

    def eligible(self, record: dict) -> bool:
        """Only at the target size, expected and as it would be cut now."""
        eps, t = self.settings.sparsity_epsilon, self.target
        return (self.pruning and abs(record["expected_sparsity"] - t) <= eps
                and abs(record["deterministic_sparsity"] - t) <= eps)

    def snapshot_best(self) -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.pruned_state().items()}

    def write_best(self, directory, snapshot: dict):
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_file(directory / BEST_STATE) as tmp:
            save_file({k: v.contiguous() for k, v in snapshot.items()}, str(tmp))

    def read_best(self, directory) -> dict:
        return load_file(str(directory / BEST_STATE))

    def pruned_state(self) -> dict:
        """What the end of pruning needs: the student's weights, the gates' log_alpha, the projection
        and the multipliers (for the report)."""
        return {f"{name}.{k}": v for name, module in self.checkpoint_module().items()
                for k, v in module.state_dict().items()}

    # -- checkpoint hooks -----------------------------------------------------------------------
    def optimizers(self) -> dict:
        return {**super().optimizers(), "gates": (self.gate_optimizer, None),
                "lagrangian": (self.lambda_optimizer, None)}

    def checkpoint_module(self) -> nn.Module:
        parts = super().checkpoint_module()
        parts.update({"gates": self.gates, "lagrangian": self.lagrangian})
        return parts

    def extra_state(self) -> dict:
        return {"last": self.last}

    def load_extra_state(self, state: dict) -> None:
        self.last = state.get("last", {})

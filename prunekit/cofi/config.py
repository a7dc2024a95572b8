"""CoFi's settings (CoFiConfig: the distillation loss of prunekit.distill plus the gates, the
constraint and the schedule) and the schedule they give for a task (Schedule). The paper's schedule
(pruning 100 epochs on small tasks / 20 on large, then 20 of fine-tuning) does not fit a CPU; the
defaults are a fraction of it (bench/results/cofi.md measures what they give)."""
import math
from dataclasses import dataclass

from ..distill import DistillConfig
from ..errors import PrunekitError
from ..evaluation import EVAL_BATCH_SIZE
from ..masks import NAMES
from ..options import COUNT, EPOCHS, NON_NEGATIVE, RATE, SEED, UNIT, Range, option
from ..training import PRECISIONS, SAVE_EVERY_CAP, TrainArgs, kernels_option

SMALL_TASK = 10_000    # GLUE's split in the paper: fewer training examples than this is a "small" task
EVAL_EVERY_CAP = 500   # steps between evaluations at most: a large task is scored more often than once an epoch


@dataclass(frozen=True)
class BySize:
    """A default that depends on the size of the task's training set."""
    small: float
    large: float

    def __call__(self, n_train: int) -> float:
        return self.small if n_train < SMALL_TASK else self.large

    def __str__(self) -> str:
        return f"{self.small:g} on tasks with < {SMALL_TASK // 1000}k training examples, {self.large:g} on larger ones"


PRUNE_EPOCHS = BySize(10.0, 1.0)    # a tenth of the paper's 100 (small tasks) and a twentieth of its 20
FINETUNE_EPOCHS = BySize(5.0, 0.5)  # a quarter of the paper's 20, and a fortieth on large tasks


@dataclass
class CoFiConfig(DistillConfig):
    """CoFi settings (Xia et al. 2022 unless said otherwise); the distillation loss is DistillConfig's."""
    # Basic
    prune_epochs: float | None = option(None, "epochs of pruning", range=Range(0, 10**4, low_open=True),
                                        default_text=str(PRUNE_EPOCHS))
    finetune_epochs: float | None = option(None, "epochs of fine-tuning the compact model (0 skips it)", range=EPOCHS,
                                           default_text=str(FINETUNE_EPOCHS))
    lr: float = option(2e-5, "learning rate of the weights while pruning", range=RATE)  # the paper's
    finetune_lr: float = option(3e-5, "learning rate of the weights while fine-tuning", range=RATE)  # the paper searches {1, 2, 3}e-5
    batch_size: int = option(32, "training batch", range=Range(1, 10**5))  # the paper's
    seed: int = option(42, "batch order, dropout, gate initialisation and samples", range=SEED)
    max_length: int | None = None        # tokens per example: set by the run (--max-length, or 128 as the paper)
    max_steps: int | None = option(None, "cap on the steps of each phase (quick runs; the schedule shrinks to fit)",
                                   range=Range(1, 10**9))
    # Advanced: schedule and constraint
    pre_prune_epochs: float = option(0.0, "distillation epochs before the gates start",
                                     range=EPOCHS)  # the student is the teacher already
    lagrangian_warmup: float = option(0.5, "share of the pruning steps over which the target rises from 0",
                                      range=UNIT)  # the paper's script
    reg_lr: float = option(0.01, "learning rate of log alpha and lambda", range=RATE)  # the paper's script
    sparsity_epsilon: float = option(0.01, "a pruning checkpoint may be kept while its expected sparsity and that of "
                                     "its deterministic masks are within this of the target", range=UNIT)
    droprate_init: float = option(0.5, "initial P(drop) of z_int", range=Range(0, 1, True, True),
                                  flag=False)  # log_alpha 0, as CoFi's code
    init_from: str | None = option(None, "warm start: head and unit gates from post-training pruning's masks at the "
                                   "target's MACs, the target at its value from the first step",
                                   choices=("posttrain",))  # None: CoFi's cold start
    gates: tuple = NAMES                 # which masks are learned: all five (CoFi's default)
    # Advanced: training
    weight_decay: float = option(0.0, "AdamW weight decay", range=NON_NEGATIVE, flag=False)  # CoFi's scripts: HF's
    max_grad_norm: float = option(1.0, "gradient clipping of the weights (not of log alpha or lambda)",
                                  range=NON_NEGATIVE, flag=False)
    finetune_keep: str = option("final", "which fine-tuned model to keep (best picks by the dev metric, which "
                                "flatters it)", choices=("final", "best"))  # no pick on the data it is scored on
    student: str | None = option(None, "start the student from this model instead of a copy of the teacher (e.g. "
                                 "minilm, the pre-trained model, as the paper)")  # the maintainers: as good
    eval_every: int | None = option(None, "steps between dev evaluations", range=COUNT,
                                    default_text=f"each epoch, at most {EVAL_EVERY_CAP}")
    save_every: int | None = option(None, "steps between resume checkpoints", range=COUNT,
                                    default_text=f"each evaluation, at most {SAVE_EVERY_CAP}")
    eval_batch_size: int = option(EVAL_BATCH_SIZE, "evaluation batch", range=COUNT, flag=False)
    kernels: str = kernels_option()
    precision: str = option("fp32", "forward passes in bf16 autocast, weights, gates and lambda in fp32",
                            choices=PRECISIONS)  # exact by default
    device: str = "cpu"
    progress: bool = True

    def check(self):
        """Every setting, before any model or data is loaded."""
        super().check()
        unknown = set(self.gates) - set(NAMES)
        if unknown or not self.gates:
            raise PrunekitError(f"gates must be some of {', '.join(NAMES)}, got {', '.join(self.gates) or 'none'}")
        return self


@dataclass
class Schedule:
    """Steps of each phase, worked out from the epochs, the task size and --max-steps."""
    steps_per_epoch: int
    prune_epochs: float
    finetune_epochs: float
    pre_steps: int
    prune_steps: int        # including pre_steps
    warmup_steps: int
    finetune_steps: int

    @classmethod
    def of(cls, config: CoFiConfig, n_train: int) -> "Schedule":
        spe = math.ceil(n_train / config.batch_size)
        prune_ep = config.prune_epochs if config.prune_epochs is not None else PRUNE_EPOCHS(n_train)
        ft_ep = config.finetune_epochs if config.finetune_epochs is not None else FINETUNE_EPOCHS(n_train)
        total = math.ceil((config.pre_prune_epochs + prune_ep) * spe)
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        pre = round(total * config.pre_prune_epochs / (config.pre_prune_epochs + prune_ep))
        ft = math.ceil(ft_ep * spe)
        if config.max_steps is not None:
            ft = min(ft, config.max_steps)
        warmup = 0 if config.init_from else round(config.lagrangian_warmup * (total - pre))  # a warm start is at target
        return cls(spe, prune_ep, ft_ep, pre, total, warmup, ft)


def train_args(config: CoFiConfig, out, steps: int, spe: int, lr: float) -> TrainArgs:
    """The Trainer settings of one phase (run directory `out`, `steps` steps at learning rate `lr`)."""
    return TrainArgs(output=None if out is None else str(out), epochs=steps / spe, lr=lr,
                     batch_size=config.batch_size, weight_decay=config.weight_decay, warmup_ratio=0.0,
                     max_grad_norm=config.max_grad_norm, seed=config.seed, max_steps=steps,
                     eval_every=config.eval_every or min(spe, EVAL_EVERY_CAP), save_every=config.save_every,
                     eval_batch_size=config.eval_batch_size, kernels=config.kernels, precision=config.precision,
                     device=config.device, progress=config.progress)

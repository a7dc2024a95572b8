"""CoFi end to end: `prunekit compress --method cofi` (Xia et al. 2022, "Structured Pruning Learns
Compact and Accurate Models").

    teacher (fine-tuned) ── student = a copy of it (or --student), gates on all five masks
        │
        ├─ prune      distillation + Lagrangian, one gate sample per step        trainer.py (gates.py,
        │             target 0 -> t over the warm-up; evaluations with            sparsity.py,
        │             deterministic masks; the kept state: best dev metric once   prunekit.distill)
        │             the expected size is within epsilon of the target
        ├─ masks      deterministic masks of the kept state                      gates.Gates.deterministic
        ├─ surgery    mask values folded into the weights, zeros cut out         prunekit.prune
        └─ fine-tune  the compact student, distillation only                     prunekit.distill
    -> Compressed: the compact model, the masks (for the dense teacher) and the report (report.py:
       target, achieved sparsity, MACs and params kept, per-layer structure, teacher and pruned dev
       metrics, time per phase); prunekit.harness writes them, with the logs of both phases, as the
       output directory.

The work directory (the run's output directory under the CLI, a temporary one when none is given)
holds prune/ and finetune/, each a Trainer run directory with its resume checkpoint; `resume=True`
continues from whichever phase was under way.

Where this departs from the reference code, on purpose (the paper's intent, not the code's bugs):
  - the expected size comes from prunekit's cost model for any shape (no BERT-base constants), and
    can be MACs at the task's length distribution or block latency instead of parameters;
  - pre-pruning is counted in epochs (the code hard-coded 100 steps), and is 0 by default because the
    student starts as the fine-tuned teacher (the maintainers report this works as well as starting
    from the pre-trained model and distilling first);
  - layer matching uses layers that are present (attention or FFN alive), skips a teacher layer with
    no candidate instead of pointing past the last layer, and averages over real tokens only;
  - the checkpoint rule's epsilon is honoured (the script never passed it);
  - the fine-tuned model kept is the final one by default (finetune_keep="best" picks by the dev
    metric, which flatters the figure), and the fine-tuning phase decays its learning rate linearly
    (the reference's is constant).
"""
import copy
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import distributed
from ..budget import Budget, latency_table
from ..checkpoints import config_of, load_model, resolve
from ..data import lengths
from ..distill import DistillTrainer, LayerDistiller, distilled_layers
from ..errors import PrunekitError
from ..evaluation import DEFAULT_MAX_LENGTH
from ..harness import ByTask, Compressed, Method, Scores, begin, check_compact, common_report
from ..io import atomic_file, write_json
from ..model import resolve_kernels
from ..posttrain import compress as posttrain_compress
from ..posttrain.pipeline import PostTrainConfig
from ..progress import Warnings
from ..surgery import prune
from ..teachers import warn_if_not_fine_tuned
from ..timing import Stopwatch
from ..training import LAST
from .config import CoFiConfig, Schedule, train_args
from .gates import LOG_ALPHA_RANGE, Gates
from .report import latency_report, method_report
from .sparsity import ExpectedCost
from .trainer import BEST_STATE, CoFiTrainer

BUDGETS = ("sparsity", "macs", "latency")
PHASES = ("prune", "finetune")        # the work directory's run directories, in order
PRUNED_STATE = "pruned.safetensors"   # in prune/: the state chosen at the end of pruning (the phase is done)
SHAPE_KEYS = ("num_heads", "ffn_dim", "hidden_size", "head_dim", "vocab_size", "max_position_embeddings", "arch",
              "embedding_size", "type_vocab_size", "positions_from_padding")


def compress(teacher, task, budget: Budget, config: CoFiConfig | None = None, workdir=None, resume: bool = False,
             warnings: Warnings | None = None, **overrides) -> Compressed:
    """Prune a copy of `teacher` with CoFi on `task` down to `budget`. workdir: where the phases keep
    their checkpoints (None: a temporary directory, removed after); resume: continue the run in workdir.
    overrides: CoFiConfig fields."""
    config, warnings = begin("CoFi", config or CoFiConfig(), overrides, budget, BUDGETS, teacher, task, warnings)
    if workdir is None:
        if resume:
            raise PrunekitError("resuming a CoFi run needs its work directory")
        with tempfile.TemporaryDirectory(prefix="prunekit-cofi-") as tmp:
            return compress(teacher, task, budget, config, tmp, warnings=warnings)
    out = Path(workdir)
    if not resume and any((out / phase).exists() for phase in PHASES):
        raise PrunekitError(f"{out} holds an earlier CoFi run: resume it (resume=True / --resume) or use a fresh "
                            "directory")
    layers = check_teacher(config, teacher)
    teacher = teacher.to(config.device).eval()
    torch.manual_seed(config.seed)
    student = new_student(teacher, config).to(config.device)
    watch = Stopwatch()
    scores = Scores(task, watch, config)
    warn_if_not_fine_tuned(task, scores("teacher", teacher), warnings, purpose="CoFi", loud=True)
    table = None
    if budget.kind == "latency":  # the deploy runtime's block-latency tables (cached per device and shape)
        with watch("latency_table"):
            table, _ = latency_table(budget, teacher.config, config.device, config.progress)
    run = CoFiRun(out, teacher, task, budget, config, Schedule.of(config, len(task.train)), watch, warnings, resume,
                  ExpectedCost(teacher.config, budget.kind, lengths(task.train), table=table),
                  LayerDistiller(teacher.config.hidden_size, layers))
    masks, expected_end = run.prune(student)
    scores("pruned", student, masks)
    with watch("surgery"):
        compact = prune(student, masks).eval()
    diff = check_compact(compact, student.eval(), masks, task.dev[:16] or task.train[:16], config.device, warnings)
    compact = run.finetune(compact, masks, scores)
    latency = latency_report(table, budget, teacher, compact, config) if table is not None else None
    report = {**common_report("cofi", task, compact, teacher.config, lengths(task.train), scores, diff, warnings),
              **method_report(run, compact, expected_end, layers, latency)}
    return Compressed(compact, masks, report)


class CoFiRun:
    """The two phases of one CoFi run in its work directory, and what they leave for the report."""

    def __init__(self, out: Path, teacher, task, budget: Budget, config: CoFiConfig, sched: Schedule,
                 watch: Stopwatch, warnings: Warnings, resume: bool, cost: ExpectedCost, distiller: LayerDistiller):
        self.out, self.teacher, self.task, self.budget, self.config = out, teacher, task, budget, config
        self.sched, self.watch, self.warnings, self.resume = sched, watch, warnings, resume
        self.cost, self.distiller = cost, distiller
        self.gates = Gates(teacher.config, config.gates, config.droprate_init,
                           generator=torch.Generator().manual_seed(config.seed)).to(config.device)
        self.prune_summary, self.finetune_summary, self.lagrangian = None, None, None

    def phase_args(self, phase: str, steps: int, lr: float):
        return train_args(self.config, self.out / phase, steps, self.sched.steps_per_epoch, lr)

    def prune(self, student) -> tuple:
        """Pruning (or its chosen state, when a resumed run had finished it): the deterministic masks
        and the expected sparsity at the end; student, gates and projection hold the chosen state."""
        c, d = self.config, self.out / "prune"
        if c.init_from == "posttrain" and not (self.resume and (d / LAST).is_dir()):
            with self.watch("warm_start"):
                warm_start(self.gates, self.teacher, self.task, self.budget, c)
        trainer = CoFiTrainer(student, self.teacher, self.task, self.phase_args("prune", self.sched.prune_steps, c.lr),
                              c, self.distiller, self.gates, self.cost, self.budget.sparsity, self.sched.pre_steps,
                              self.sched.warmup_steps)
        if not (d / PRUNED_STATE).is_file():
            with self.watch("prune"):
                summary = trainer.fit(resume=self.resume and (d / LAST).is_dir())
            self.choose_state(trainer, summary, d)
        self.prune_summary = json.loads((d / "summary.json").read_text())
        state = load_file(str(d / PRUNED_STATE), device=str(c.device))
        for name, module in trainer.checkpoint_module().items():
            module.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")})
        self.lagrangian = trainer.lagrangian
        return self.gates.deterministic(self.cost), self.cost.sparsity(self.gates.prob_nonzero()).item()

    def choose_state(self, trainer: CoFiTrainer, summary: dict, d: Path) -> None:
        """The kept pruning state: the best eligible evaluation, else (with a warning) the final state;
        written last, it marks the phase as done."""
        chosen = "best" if (d / BEST_STATE).is_file() else "final"
        if chosen == "final":
            self.warnings.warn(f"the sparsity (expected and deterministic) was never within "
                               f"{self.config.sparsity_epsilon} of the target {self.budget.sparsity:.3f} at an "
                               "evaluation: the final pruning state is used; prune for more epochs or raise --reg-lr")
        state = trainer.pruned_state() if chosen == "final" else load_file(str(d / BEST_STATE))
        if distributed.is_main():
            write_json(d / "summary.json", {**summary, "chosen": chosen})
            with atomic_file(d / PRUNED_STATE) as tmp:
                save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
        distributed.barrier()

    def finetune(self, compact, masks, scores: Scores):
        """Distillation fine-tuning of the compact student (unless its schedule is empty): the kept model."""
        c, d = self.config, self.out / "finetune"
        if self.sched.finetune_steps == 0:
            return compact
        if masks.z_hidden is not None:
            self.distiller.keep_inputs(torch.nonzero(masks.z_hidden != 0).flatten().to(self.distiller.proj.weight.device))
        trainer = DistillTrainer(compact.train(), self.teacher, self.task,
                                 self.phase_args("finetune", self.sched.finetune_steps, c.finetune_lr), c,
                                 self.distiller, keep=c.finetune_keep, name="cofi finetune")
        if not ((d / "metrics.json").is_file() and not (d / LAST).is_dir()):
            with self.watch("finetune"):
                trainer.fit(resume=self.resume and (d / LAST).is_dir())
        self.finetune_summary = json.loads((d / "metrics.json").read_text())
        kept = type(compact).from_pretrained(str(d)).to(c.device).eval()
        kept.tokenizer = self.teacher.tokenizer
        for stage, record in (("finetuned", "best"), ("finetuned_final", "final")):
            scores[stage] = {k: v for k, v in self.finetune_summary[record].items()
                             if k not in ("step", "epoch", "train_loss")}
        return kept


def warm_start(gates: Gates, teacher, task, budget: Budget, config: CoFiConfig) -> None:
    """--init-from posttrain: the head and FFN-unit gates start from post-training pruning's masks at
    the target's MACs (for a sparsity target, 1 - sparsity of the MACs): kept units at the log_alpha
    ceiling (on), pruned ones at the floor (off); the layer and hidden gates stay on."""
    macs = budget.value if budget.kind == "macs" else 1.0 - budget.value
    result = posttrain_compress(teacher, task, Budget("macs", macs), PostTrainConfig(
        evaluate=False, device=config.device, progress=config.progress, seed=config.seed,
        batch_size=min(32, len(task.train)), num_samples=min(2048, len(task.train))))
    low, high = LOG_ALPHA_RANGE
    with torch.no_grad():
        for name, mask in (("z_head", result.masks.z_head), ("z_int", result.masks.z_int)):
            if name in gates.log_alpha:
                la = gates.log_alpha[name]
                la.copy_(torch.where(mask.to(la.device) != 0, high, low))


def check_teacher(config: CoFiConfig, teacher) -> list[int]:
    """What can be checked once the teacher is known, before any work: the kernels, the student's shape
    and the distilled layers (returned)."""
    resolve_kernels(config.kernels, config.device, teacher.config.head_dim)
    if config.student is not None:
        check_student_shape(config.student, config_of(resolve(config.student)), teacher.config)
    return distilled_layers(config, teacher.config.num_layers)


def check_student_shape(name, student, teacher) -> None:
    differ = [k for k in SHAPE_KEYS if getattr(student, k) != getattr(teacher, k)]
    if differ:
        raise PrunekitError(f"--student {name} differs from the teacher in {', '.join(differ)}: it reads the "
                            "teacher's tokens and is matched layer by layer, so it must have the teacher's shape")


def new_student(teacher, config: CoFiConfig):
    if config.student is None:
        return copy.deepcopy(teacher).requires_grad_(True).train()
    student = load_model(config.student, num_labels=teacher.config.num_labels)
    check_student_shape(config.student, student.config, teacher.config)
    student.tokenizer = teacher.tokenizer
    return student.train()


METHOD = Method(
    name="cofi",
    summary="Xia et al. 2022: L0 masks learned with distillation; hours on a CPU",
    config=CoFiConfig, compress=compress, budgets=BUDGETS,
    check=lambda model, task, budget, config: check_teacher(config, model),
    max_length=ByTask(DEFAULT_MAX_LENGTH),  # the paper's GLUE length
    resumable=True,
    logs={"log_prune.jsonl": "prune/log.jsonl", "log_finetune.jsonl": "finetune/log.jsonl"})

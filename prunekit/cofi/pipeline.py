"""CoFi end to end: `prunekit compress --method cofi` (Xia et al. 2022, "Structured Pruning Learns
Compact and Accurate Models").

    teacher (fine-tuned) ── student = a copy of it (or --student), gates on all five masks
        │
        ├─ prune      distillation + Lagrangian, one gate sample per step        trainer.py (gates.py,
        │             target 0 -> t over the warm-up; evaluations with            sparsity.py, distill.py)
        │             deterministic masks; the kept state: best dev metric once
        │             the expected size is within epsilon of the target
        ├─ masks      deterministic masks of the kept state                      gates.Gates.deterministic
        ├─ surgery    mask values folded into the weights, zeros cut out         prunekit.prune
        └─ fine-tune  the compact student, distillation only                     trainer.py
    -> output dir: the compact model (save_pretrained), masks.safetensors (for the dense teacher),
       report.json (target, achieved sparsity, MACs and params kept, per-layer structure, teacher and
       pruned dev metrics, time per phase, the command), log_prune.jsonl, log_finetune.jsonl.

While it runs, the output directory holds only prune/ and finetune/ (each a Trainer run directory
with its resume checkpoint), so an interrupted run never looks finished; `--resume` continues from
whichever phase was under way, and report.json, written last, marks a finished run.

Where this departs from the reference code, on purpose (the paper's intent, not the code's bugs):
  - the expected size comes from prunekit's cost model for any shape (no BERT-base constants), and
    can be MACs at the task's length distribution instead of parameters;
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
import math
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from ..cost import cost_report
from .. import distributed
from ..data import lengths
from ..errors import PrunekitError
from ..io import atomic_file, staged_into, write_json
from ..masks import NAMES, Masks
from ..metrics import main_metric
from ..surgery import prune
from ..teachers import load_teacher_and_task, warn_if_not_fine_tuned
from ..timing import Stopwatch
from ..training import INCOMPLETE, LAST, TrainArgs, evaluate_task, prepare_output, torch_predictor
from .distill import LayerDistiller, teacher_layers
from .gates import Gates
from .sparsity import ExpectedCost, Target
from .trainer import CoFiTrainer

SMALL_TASK = 10_000        # GLUE's split in the paper: fewer training examples than this is a "small" task
PRUNED_STATE = "pruned.safetensors"   # in prune/: the state chosen at the end of pruning (resume marker)


@dataclass
class CoFiConfig:
    """CoFi settings; `prunekit compress --method cofi` takes its defaults from here. The paper's
    schedule (pruning 100 epochs on small tasks / 20 on large, then 20 of fine-tuning) does not fit a
    CPU; the defaults are a fraction of it (bench/results/cofi.md measures what they give)."""
    # Basic
    prune_epochs: float | None = None    # None: 10 on small tasks (< 10k examples), 1 on large ones
    finetune_epochs: float | None = None  # None: 5 on small tasks, 0.5 on large ones
    lr: float = 2e-5                     # weights while pruning (the paper's)
    finetune_lr: float = 3e-5            # weights while fine-tuning (the paper searches {1, 2, 3}e-5)
    batch_size: int = 32                 # the paper's
    seed: int = 42                       # batch order, dropout, gate initialisation and samples
    max_length: int = 128                # tokens per example (the paper's GLUE length)
    max_steps: int | None = None         # cap on the steps of each phase (quick runs); the schedule shrinks to fit
    # Advanced: schedule and constraint
    pre_prune_epochs: float = 0.0        # distillation before the gates start (the student is the teacher already)
    lagrangian_warmup: float = 0.5       # share of the pruning steps over which the target rises from 0
    reg_lr: float = 0.01                 # log_alpha and lambda learning rate (the paper's script)
    sparsity_epsilon: float = 0.01       # a pruning checkpoint may be kept only within epsilon of the target
    droprate_init: float = 0.5           # z_int starts at P(drop) = 0.5, i.e. log_alpha 0 (CoFi's code)
    init_from: str | None = None         # "posttrain": start the head and unit gates from post-training's masks
                                         # at the target's MACs (kept on, pruned off) and the target at its value
    gates: tuple = NAMES                 # which masks are learned: all five (CoFi's default)
    # Advanced: distillation
    temperature: float = 2.0             # softmax temperature of prediction distillation (the paper's script)
    alpha_pred: float = 0.1              # weight of prediction distillation
    alpha_layer: float = 0.9             # weight of layer distillation
    alpha_task: float = 0.0              # weight of the gold-label loss (CoFi uses none with a teacher)
    distill_layers: tuple | None = None  # teacher layers, 0-based; None: every third ending at the top
    freeze_embeddings: bool = True       # CoFi's code never updates the embeddings
    weight_decay: float = 0.0            # HF's default, which CoFi's scripts keep
    max_grad_norm: float = 1.0           # gradient clipping of the weights (not of log_alpha or lambda)
    finetune_keep: str = "final"         # the kept fine-tuned model: "final", or "best" by dev (biased upwards)
    student: str | None = None           # None: start from a copy of the teacher; or a model name / directory
    eval_every: int | None = None        # steps between dev evaluations; None: each epoch, at most 500 steps
    save_every: int | None = None        # steps between resume checkpoints; None: each evaluation, at most 200
    eval_batch_size: int = 128
    kernels: str = "torch"               # attention / FFN implementation (prunekit.model; torch = exact eager)
    precision: str = "fp32"              # fp32, or bf16 autocast of the forward passes (fp32 weights, gates, lambda)
    device: str = "cpu"
    progress: bool = True

    def check(self):
        """Every setting, before any model or data is loaded."""
        from ..model import KERNELS
        if self.kernels not in KERNELS or self.precision not in ("fp32", "bf16"):
            raise PrunekitError(f"kernels must be one of {', '.join(KERNELS)} and precision fp32 or bf16, got "
                                f"{self.kernels!r}, {self.precision!r}")
        positive = {"--lr": self.lr, "--finetune-lr": self.finetune_lr, "--reg-lr": self.reg_lr,
                    "--temperature": self.temperature, "--batch-size": self.batch_size,
                    "--eval-batch-size": self.eval_batch_size}
        bad = [k for k, v in positive.items() if not (math.isfinite(v) and v > 0)]
        for k, v in {"--prune-epochs": self.prune_epochs, "--finetune-epochs": self.finetune_epochs,
                     "--pre-prune-epochs": self.pre_prune_epochs}.items():
            if v is not None and not (math.isfinite(v) and v >= 0):
                bad.append(k)
        if self.prune_epochs is not None and self.prune_epochs <= 0:
            bad.append("--prune-epochs (must be > 0: the gates are learned then)")
        for k, v in {"--alpha-pred": self.alpha_pred, "--alpha-layer": self.alpha_layer,
                     "--alpha-task": self.alpha_task, "--sparsity-epsilon": self.sparsity_epsilon,
                     "--weight-decay": self.weight_decay, "--max-grad-norm": self.max_grad_norm}.items():
            if not (math.isfinite(v) and v >= 0):
                bad.append(k)
        if not 0 <= self.lagrangian_warmup <= 1:
            bad.append("--lagrangian-warmup (in [0, 1])")
        if not 0 < self.droprate_init < 1:
            bad.append("droprate_init (in (0, 1))")
        for k, v in {"--max-steps": self.max_steps, "--eval-every": self.eval_every,
                     "--save-every": self.save_every}.items():
            if v is not None and v < 1:
                bad.append(k)
        if bad:
            raise PrunekitError(f"invalid CoFi settings: {', '.join(bad)} (numbers must be finite, and positive "
                                "where 0 means nothing)")
        if self.alpha_pred + self.alpha_layer + self.alpha_task == 0:
            raise PrunekitError("all loss weights are 0: nothing to train on")
        if self.init_from not in (None, "posttrain"):
            raise PrunekitError(f"--init-from takes posttrain, not {self.init_from!r}")
        if self.finetune_keep not in ("final", "best"):
            raise PrunekitError(f"finetune_keep must be 'final' or 'best', not {self.finetune_keep!r}")
        unknown = set(self.gates) - set(NAMES)
        if unknown or not self.gates:
            raise PrunekitError(f"gates must be some of {', '.join(NAMES)}, got {', '.join(self.gates) or 'none'}")
        return self


class Compressed(NamedTuple):
    model: torch.nn.Module      # the compact, fine-tuned student
    masks: Masks                # the deterministic masks, for the dense teacher
    report: dict


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
        small = n_train < SMALL_TASK
        spe = math.ceil(n_train / config.batch_size)
        prune_ep = config.prune_epochs if config.prune_epochs is not None else (10.0 if small else 1.0)
        ft_ep = config.finetune_epochs if config.finetune_epochs is not None else (5.0 if small else 0.5)
        total = math.ceil((config.pre_prune_epochs + prune_ep) * spe)
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        pre = round(total * config.pre_prune_epochs / (config.pre_prune_epochs + prune_ep))
        ft = math.ceil(ft_ep * spe)
        if config.max_steps is not None:
            ft = min(ft, config.max_steps)
        warmup = 0 if config.init_from else round(config.lagrangian_warmup * (total - pre))  # a warm start is at target
        return cls(spe, prune_ep, ft_ep, pre, total, warmup, ft)


def train_args(config: CoFiConfig, out: Path, steps: int, spe: int, lr: float) -> TrainArgs:
    eval_every = config.eval_every or min(spe, 500)
    return TrainArgs(output=str(out), epochs=steps / spe, lr=lr, batch_size=config.batch_size,
                     weight_decay=config.weight_decay, warmup_ratio=0.0, max_grad_norm=config.max_grad_norm,
                     seed=config.seed, max_steps=steps, eval_every=eval_every,
                     save_every=config.save_every or min(eval_every, 200), eval_batch_size=config.eval_batch_size,
                     kernels=config.kernels, precision=config.precision, device=config.device, progress=config.progress)


def warm_start(gates: Gates, teacher, task, target: Target, config: CoFiConfig) -> None:
    """--init-from posttrain: the head and FFN-unit gates start from post-training pruning's masks at
    the target's MACs (for a sparsity target, 1 - sparsity of the MACs): kept units at the log_alpha
    ceiling (on), pruned ones at the floor (off); the layer and hidden gates stay on."""
    from ..posttrain.pipeline import Constraint, PostTrainConfig
    from ..posttrain.pipeline import compress as posttrain
    from .gates import LOG_ALPHA_RANGE
    macs = target.value if target.kind == "macs" else 1.0 - target.value
    result = posttrain(teacher, task, Constraint("macs", macs), PostTrainConfig(
        evaluate=False, device=config.device, progress=config.progress, seed=config.seed,
        batch_size=min(32, len(task.train)), num_samples=min(2048, len(task.train))))
    low, high = LOG_ALPHA_RANGE
    with torch.no_grad():
        for name, mask in (("z_head", result.masks.z_head), ("z_int", result.masks.z_int)):
            if name in gates.log_alpha:
                la = gates.log_alpha[name]
                la.copy_(torch.where(mask.to(la.device) != 0, high, low))


def latency_report(table: dict, target: Target, teacher, compact, config: CoFiConfig) -> dict:
    """For a latency target: the compact model's block latency by the tables, and its latency measured
    against the teacher's in ONNX Runtime at the deployment shape (exported, validated, interleaved)."""
    import tempfile

    from ..export.onnx_export import export_onnx
    from ..export.optimize import time_graphs
    from ..posttrain.search import estimate_latency
    cfg = teacher.config
    ones = lambda n: torch.ones(cfg.num_layers, n)
    as_mask = lambda counts, n: (torch.arange(n)[None, :] < torch.tensor(counts)[:, None]).float()
    table_kept = (estimate_latency(as_mask(compact.config.num_heads, cfg.num_heads[0]),
                                   as_mask(compact.config.ffn_dim, cfg.ffn_dim[0]), table["mha"], table["ffn"])
                  / estimate_latency(ones(cfg.num_heads[0]), ones(cfg.ffn_dim[0]), table["mha"], table["ffn"]))
    c = target.latency
    with tempfile.TemporaryDirectory(prefix="prunekit-latency-") as tmp:
        paths = {}
        for name, model in (("teacher", teacher), ("compact", compact)):
            export_onnx(model, f"{tmp}/{name}")
            paths[name] = f"{tmp}/{name}/model.onnx"
        ms = time_graphs(paths, cfg, shape=(c.latency_batch, c.latency_seq_len),
                         device="cuda" if str(config.device).startswith("cuda") else "cpu")
    return {"runtime": c.latency_runtime, "batch": c.latency_batch, "seq_len": c.latency_seq_len,
            "table_key": table.get("key"), "kept_by_table": table_kept * compact.config.hidden_size / cfg.hidden_size,
            "measured_ms": ms, "kept_measured": ms["compact"] / ms["teacher"]}


def check_teacher(config: CoFiConfig, teacher) -> list[int]:
    """What can be checked once the teacher is known, before any work: the dense shape and the
    distilled layers (returned)."""
    if not teacher.config.is_uniform():
        raise PrunekitError("CoFi needs a dense teacher (same head count and FFN width in every layer)")
    from ..model import resolve_kernels
    resolve_kernels(config.kernels, config.device, teacher.config.head_dim)
    if config.student is not None:
        from ..checkpoints import config_of, resolve
        check_student_shape(config.student, config_of(resolve(config.student)), teacher.config)
    L = teacher.config.num_layers
    layers = list(config.distill_layers) if config.distill_layers is not None else teacher_layers(L)
    if not layers or any(not 0 <= i < L for i in layers):
        raise PrunekitError(f"distill layers must be between 0 and {L - 1}, got {layers}")
    return layers


SETTINGS_FILE = "cofi_args.json"   # in the run directory: what a resume must match
NOT_SETTINGS = ("device", "progress", "eval_batch_size", "save_every")  # free to change on resume


def check_settings(out: Path, config: CoFiConfig, target: Target, teacher, resume: bool) -> None:
    """A fresh run records its settings; a resumed one must have the same (else it would silently
    mix two runs)."""
    settings = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()
                   if k not in NOT_SETTINGS},
                "target": asdict(target), "teacher": str(teacher.config.name_or_path or ""),
                "teacher_shape": [teacher.config.num_heads, teacher.config.ffn_dim, teacher.config.hidden_size]}
    path = out / SETTINGS_FILE
    if resume and path.is_file():
        before = json.loads(path.read_text())
        changed = [f"{k}: {before.get(k)!r} then, {v!r} now" for k, v in settings.items() if before.get(k) != v]
        if changed:
            raise PrunekitError(f"cannot resume {out} with different settings ({'; '.join(changed)})")
    elif distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)


SHAPE_KEYS = ("num_heads", "ffn_dim", "hidden_size", "head_dim", "vocab_size", "max_position_embeddings", "arch",
              "embedding_size", "type_vocab_size", "positions_from_padding")


def check_student_shape(name, student, teacher) -> None:
    differ = [k for k in SHAPE_KEYS if getattr(student, k) != getattr(teacher, k)]
    if differ:
        raise PrunekitError(f"--student {name} differs from the teacher in {', '.join(differ)}: it reads the "
                            "teacher's tokens and is matched layer by layer, so it must have the teacher's shape")


def new_student(teacher, config: CoFiConfig):
    if config.student is None:
        return copy.deepcopy(teacher).requires_grad_(True).train()
    from ..checkpoints import load_model
    student = load_model(config.student, num_labels=teacher.config.num_labels)
    check_student_shape(config.student, student.config, teacher.config)
    student.tokenizer = teacher.tokenizer
    return student.train()


def compress(teacher, task, target: Target, out, config: CoFiConfig | None = None, resume: bool = False,
             warnings: list | None = None, **overrides) -> Compressed:
    """Prune `teacher`'s copy with CoFi on `task`; `out` is the run directory (prune/ and finetune/
    go there). overrides: CoFiConfig fields. Returns (compact model, deterministic Masks, report)."""
    config = replace(config or CoFiConfig(), **overrides).check()
    target.check()
    out = Path(out)
    warnings = [] if warnings is None else warnings
    if len(task.train) < config.batch_size:
        raise PrunekitError(f"the training set has {len(task.train)} examples, fewer than one batch "
                            f"({config.batch_size})")
    if not resume and any((out / phase).exists() for phase in ("prune", "finetune")):
        raise PrunekitError(f"{out} holds an earlier CoFi run: resume it (resume=True / --resume) or use a fresh "
                            "directory")
    layers = check_teacher(config, teacher)
    check_settings(out, config, target, teacher, resume)
    device = config.device
    teacher = teacher.to(device).eval()
    torch.manual_seed(config.seed)
    student = new_student(teacher, config).to(device)  # (a --student of another shape is refused before any work)
    sched = Schedule.of(config, len(task.train))
    watch = Stopwatch()
    metrics = {}

    def warn(message):
        warnings.append(message)
        if distributed.is_main():
            print(f"warning: {message}", file=sys.stderr)

    with watch("evaluation"):
        metrics["teacher"] = evaluate_task(torch_predictor(teacher, device), task, config.eval_batch_size,
                                           config.progress)
    chance = []
    warn_if_not_fine_tuned(task, metrics["teacher"], chance, purpose="CoFi")
    for w in chance:  # loudly: hours of distillation from a teacher at chance teach nothing
        warn(w.upper())

    table = None
    if target.kind == "latency":  # the deploy runtime's block-latency tables (cached per device and shape)
        from ..posttrain.latency import load_or_measure
        c = target.latency
        with watch("latency_table"):
            if distributed.is_main():
                table, _ = load_or_measure(teacher.config, c.latency_batch, c.latency_seq_len, c.lut_cache, device,
                                           c.latency_runtime, config.progress, c.latency_threads)
            distributed.barrier()
            if not distributed.is_main():
                table, _ = load_or_measure(teacher.config, c.latency_batch, c.latency_seq_len, c.lut_cache, device,
                                           c.latency_runtime, config.progress, c.latency_threads)
    cost = ExpectedCost(teacher.config, target.kind, lengths(task.train), table=table)
    gates = Gates(teacher.config, config.gates, config.droprate_init,
                  generator=torch.Generator().manual_seed(config.seed)).to(device)
    distiller = LayerDistiller(teacher.config.hidden_size, layers)
    if config.init_from == "posttrain" and not (resume and (out / "prune" / LAST).is_dir()):
        with watch("warm_start"):
            warm_start(gates, teacher, task, target, config)

    # -- pruning ---------------------------------------------------------------------------------
    prune_dir = out / "prune"
    chosen_file = prune_dir / PRUNED_STATE
    trainer = CoFiTrainer(student, teacher, task, train_args(config, prune_dir, sched.prune_steps,
                                                             sched.steps_per_epoch, config.lr),
                          config, distiller, gates, cost, target, sched.pre_steps, sched.warmup_steps, keep="best")
    if not chosen_file.is_file():
        with watch("prune"):
            prune_summary = trainer.fit(resume=resume and (prune_dir / LAST).is_dir())
        best_file = prune_dir / "best.safetensors"
        chosen = "best" if best_file.is_file() else "final"
        if chosen == "final":
            warn(f"the sparsity (expected and deterministic) was never within {config.sparsity_epsilon} of the target "
                            f"{target.sparsity:.3f} at an evaluation: the final pruning state is used; "
                            "prune for more epochs or raise --reg-lr")
            state = trainer.pruned_state()
        else:
            state = load_file(str(best_file))
        if distributed.is_main():
            write_json(prune_dir / "summary.json", {**prune_summary, "chosen": chosen})
            with atomic_file(chosen_file) as tmp:  # written last: it marks the pruning phase as done
                save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
        distributed.barrier()
    prune_summary = json.loads((prune_dir / "summary.json").read_text())
    state = load_file(str(chosen_file), device=str(device))
    student.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    gates.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("gates.")})
    distiller.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("distiller.")})
    trainer.lagrangian.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("lagrangian.")})
    masks = gates.deterministic(cost)
    expected_end = cost.sparsity(gates.prob_nonzero()).item()
    with watch("evaluation"):
        metrics["pruned"] = evaluate_task(torch_predictor(student, device, masks), task, config.eval_batch_size,
                                          config.progress)

    # -- surgery -----------------------------------------------------------------------------------
    with watch("surgery"):
        compact = prune(student, masks).eval()
    from ..posttrain.pipeline import compact_vs_masked
    diff = compact_vs_masked(compact, student.eval(), masks, task.dev[:16] or task.train[:16], device)
    if diff > 1e-3:
        warn(f"the compact model differs from the masked model by {diff:.2e} on a dev batch")

    # -- fine-tuning -------------------------------------------------------------------------------
    finetune = None
    if sched.finetune_steps > 0:
        if masks.z_hidden is not None:
            distiller.keep_inputs(torch.nonzero(masks.z_hidden != 0).flatten().to(distiller.proj.weight.device))
        ft_dir = out / "finetune"
        ft = CoFiTrainer(compact.train(), teacher, task, train_args(config, ft_dir, sched.finetune_steps,
                                                                  sched.steps_per_epoch, config.finetune_lr),
                         config, distiller, keep=config.finetune_keep)
        done = (ft_dir / "metrics.json").is_file() and not (ft_dir / LAST).is_dir()
        if not done:
            with watch("finetune"):
                ft.fit(resume=resume and (ft_dir / LAST).is_dir())
        finetune = json.loads((ft_dir / "metrics.json").read_text())
        from ..model import PrunekitBertForSequenceClassification
        compact = PrunekitBertForSequenceClassification.from_pretrained(str(ft_dir)).to(device).eval()
        compact.tokenizer = teacher.tokenizer
        metrics["finetuned"] = {k: v for k, v in finetune["best"].items() if k not in ("step", "epoch", "train_loss")}
        metrics["finetuned_final"] = {k: v for k, v in finetune["final"].items()
                                      if k not in ("step", "epoch", "train_loss")}

    cost_rep = cost_report(compact.config, lengths=lengths(task.train), reference=teacher.config)
    latency = latency_report(table, target, teacher, compact, config) if table is not None else None
    report = {
        "method": "cofi",
        "task": task.name,
        "constraint": {"kind": target.kind, "value": target.value, "target_sparsity": target.sparsity,
                       "what": {"sparsity": "fraction of encoder parameters removed",
                                "macs": "fraction of MACs kept, at the task's training length distribution",
                                "latency": "fraction of the block latency kept (tables of the deploy runtime)"}[target.kind],
                       "expected_at_end": expected_end, "epsilon": config.sparsity_epsilon},
        "sparsity": cost_rep.sparsity,
        "macs_kept": cost_rep.macs_kept,
        "params_kept": cost_rep.params_kept,
        "structure": cost_rep.structure,
        "hidden_size": compact.config.hidden_size,
        **({"latency": latency} if latency else {}),
        "main_metric": main_metric(task.name),
        "dev_metrics": metrics,
        "pruning_checkpoint": {"chosen": prune_summary["chosen"],
                               "step": (prune_summary["best"] or {}).get("step", prune_summary["steps"]),
                               "rule": "best dev metric while expected and deterministic sparsity are within epsilon of the target"},
        "finetune_kept": config.finetune_keep if finetune else None,
        "schedule": asdict(sched),
        "seconds": {**{k: round(v, 2) for k, v in watch.seconds.items()},
                    "prune_train": prune_summary["train_seconds"],
                    "finetune_train": finetune["train_seconds"] if finetune else 0.0},
        "seconds_per_step": {"prune": prune_summary["seconds_per_step"],
                             "finetune": finetune["seconds_per_step"] if finetune else None},
        "threads": torch.get_num_threads(),
        "lambdas": {"lambda_1": trainer.lagrangian.lambda_1.item(), "lambda_2": trainer.lagrangian.lambda_2.item()},
        "distill_teacher_layers": layers,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "compact_vs_masked_max_abs_diff": diff,
        "warnings": warnings,
    }
    return Compressed(compact, masks, report)


def run(teacher: str, task_name: str, output: str, target: Target, config: CoFiConfig | None = None,
        data: dict | None = None, overwrite: bool = False, resume: bool = False, command: str | None = None) -> dict:
    """The CLI's job: load the teacher and the task, run CoFi in `output`, then write the compact model,
    masks.safetensors and report.json there (report.json last: it marks a finished run)."""
    config = (config or CoFiConfig()).check()
    target.check()
    if not task_name:
        raise PrunekitError("give --task")
    out = Path(output)
    if resume:
        if (out / "report.json").is_file() and (out / INCOMPLETE).is_file():  # killed while tidying up
            if distributed.is_main():
                finish(out)
            return json.loads((out / "report.json").read_text())
        if (out / "report.json").is_file():
            raise PrunekitError(f"{output} is a finished CoFi run: nothing to resume")
        if not (out / "prune").is_dir():
            raise PrunekitError(f"nothing to resume in {output}: no prune/ checkpoint of an interrupted CoFi run")
    elif out.exists() and not overwrite:
        prepare_output(output, resume=False, overwrite=False)  # refuses, before the data is read
    data = dict(data or {})
    model, task, warnings = load_teacher_and_task(teacher, task_name, data, purpose="CoFi",
                                                  default_max_length=config.max_length)
    check_teacher(config, model)
    created = not out.exists() or overwrite
    if not resume and distributed.is_main():
        prepare_output(output, resume=False, overwrite=overwrite)
    if distributed.is_main():  # until the very end, the directory is not a model (load_model refuses it)
        out.mkdir(parents=True, exist_ok=True)
        (out / INCOMPLETE).write_text("an interrupted CoFi run: continue it with --resume\n")
    distributed.barrier()
    try:
        compact, masks, report = compress(model, task, target, out, config, resume=resume, warnings=warnings)
    except BaseException:
        if created and distributed.is_main() and not (out / "prune").exists():  # failed before any work to keep
            shutil.rmtree(out, ignore_errors=True)
        raise
    report = {"teacher": str(teacher), "max_length": data["max_length"],
              "command": command or " ".join(sys.argv), **report}
    compact.config.finetuning_task = task.name
    if not distributed.is_main():
        return report
    with staged_into(out) as tmp:  # the model, its masks, the logs and the report arrive together
        compact.save_pretrained(tmp)
        masks.save(tmp / "masks.safetensors")
        for phase in ("prune", "finetune"):
            if (out / phase / "log.jsonl").is_file():
                shutil.copy(out / phase / "log.jsonl", tmp / f"log_{phase}.jsonl")
        write_json(tmp / "report.json", report)
    finish(out)
    return report


def finish(out: Path) -> None:
    """Remove what only a running CoFi run needs; the INCOMPLETE mark goes last."""
    for phase in ("prune", "finetune"):
        shutil.rmtree(out / phase, ignore_errors=True)
    (out / SETTINGS_FILE).unlink(missing_ok=True)
    (out / INCOMPLETE).unlink(missing_ok=True)

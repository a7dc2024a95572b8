"""Post-training pruning end to end: `prunekit compress --method post-training`.

    teacher (fine-tuned) ── sample 2048 training examples (without replacement)      stages.py
        │
        ├─ fisher     per-batch gradients of all-ones head / neuron masks         fisher.py    -> FisherResult
        ├─ search     binary masks at c (and the teacher-assistant masks at sqrt c) search.py  -> SearchStage
        ├─ rearrange  which units in each layer, same counts                      rearrange.py -> RearrangeResult
        ├─ tune       real-valued scales by layer-wise least squares              tune.py      -> TuneResult
        ├─ surgery    scales folded into the weights, pruned units cut out        prunekit.prune
        └─ distill    optional: --distill-steps of distillation of the compact    prunekit.distill
                      model from the teacher
    -> Compressed: the compact model, the tuned masks (real-valued z_head / z_int) and the report
       (report.py: budget, macs_kept, params_kept, per-layer structure, dev metric after each stage,
       wall time per stage); prunekit.harness writes them as the output directory.

PostTrainConfig declares every setting once, with its default and the reason for it; the CLI's
options are generated from it. compress() works on a loaded model and Task and writes nothing.

Where this departs from the reference, and why (each is a PostTrainConfig field; bench/posttrain.py
measures the alternatives, bench/results/posttrain.md has the figures):
  - Fisher batches group examples of similar length (dynamic padding otherwise pays for many
    padding tokens on GLUE);
  - the tuning forwards run in bf16 autocast where the hardware has native bf16 (the least squares
    themselves stay fp32/fp64); the Fisher pass stays fp32 by default, the reference's precision
    (bf16 flips near-ties in the unit ranking);
  - mask tuning walks a random subset of the sample holding about 32768 tokens, not all of it (each
    token gives d equations, so that pins the scales down at a fraction of the cost);
  - every layer keeps at least one head and one neuron (an empty sublayer loses its LayerNorm);
  - the sample is drawn without replacement, MACs use the sample's length distribution, the
    latency budget is computed once, and a failing tuning fit skips only its own sublayer.
"""
import math
from dataclasses import dataclass, field, replace

from .. import distributed
from ..budget import Budget, latency_table
from ..data import lengths
from ..distill import DistillConfig, DistillTrainer, LayerDistiller, teacher_layers
from ..errors import PrunekitError
from ..evaluation import DEFAULT_MAX_LENGTH, EVAL_BATCH_SIZE
from ..harness import ByTask, Compressed, Method, Scores, begin, check_compact, common_report
from ..masks import Masks
from ..options import COUNT, NON_NEGATIVE, RATE, SEED, Range, check_options, option
from ..progress import Warnings
from ..surgery import expand, prune
from ..teachers import warn_if_not_fine_tuned
from ..timing import Stopwatch
from ..training import PRECISIONS, TrainArgs, kernels_option
from .report import method_report
from .stages import (Pruned, check_budget, choose_stage, heldout_examples, run_fisher, run_rearrange, run_tune,
                     sample_examples, search_masks)

BUDGETS = ("macs", "latency")
FISHER_PRECISIONS = ("fp32", "bf16", "auto")


def fractions(text: str) -> tuple:
    """fractions in (0, 1) separated by commas"""
    values = tuple(float(x) for x in text.split(","))
    if not all(0 < v < 1 for v in values):
        raise ValueError(text)
    return values


@dataclass
class PostTrainConfig:
    """Post-training pruning settings (Kwon et al. 2022 unless said otherwise)."""
    # Basic
    num_samples: int = option(2048, "training examples for Fisher and tuning", range=COUNT)  # the paper's sample
    batch_size: int = option(32, "Fisher batch: one gradient per batch", range=Range(1, 10**5))  # the paper's
    seed: int = option(0, "which examples are sampled and how Fisher batches are ordered", range=SEED)
    allow_empty_sublayers: bool = option(False, "let a layer lose all its heads or all its FFN neurons (the sublayer, "
                                         "LayerNorm included, is then removed; off by default: it can wreck "
                                         "accuracy)")  # an emptied sublayer loses its LayerNorm too: MRPC collapsed
    evaluate: bool = option(True, "skip the dev evaluations (they are not pruning time)",
                            flag="--no-eval")  # the dev metric after every stage
    # Advanced
    fisher_precision: str = option("fp32", "precision of the Fisher pass: bf16 is faster on CPUs and GPUs with native "
                                   "bf16 and flips near-ties in the unit ranking; auto = bf16 where native",
                                   choices=FISHER_PRECISIONS)  # the reference's
    fisher_by_length: bool = True      # Fisher batches of similar length: little padding to pay for
    tune_precision: str = option("auto", "precision of the tuning forwards", choices=FISHER_PRECISIONS,
                                 flag=False)  # bf16 where native: the solves stay fp32/fp64
    ridge: float = option(1e-3, "pull of tuned scales toward 1 (x the mean diagonal: scale-free)",
                          range=NON_NEGATIVE, flag=False)
    max_fit_tokens: int | None = option(32768, "tokens mask tuning fits on (None: the whole sample)", range=COUNT,
                                        flag=False)
    tune_teacher: str = option("assistant", "tuning target: the teacher-assistant masks at sqrt(c), or dense",
                               choices=("assistant", "dense"), flag=False)
    ffn_target: str = option("assistant", "FFN target of tuning (dense: what the reference computed)",
                             choices=("assistant", "dense"), flag=False)
    eval_batch_size: int = option(EVAL_BATCH_SIZE, "evaluation batch", range=COUNT, flag=False)
    heldout: int = option(1024, "training examples outside the sample that judge the search, rearrangement and "
                          "tuning: the masks of the best of the three are kept (0: the tuned ones, the reference's)",
                          range=Range(0, 10**7))  # mask tuning can overfit its sample and cost points at small budgets
    distill_steps: int = option(0, "after surgery, this many steps of distillation fine-tuning of the compact "
                                "model from the teacher (CoFi's losses; 0: none)", range=Range(0, 10**7))
    distill_lr: float = option(2e-4, "learning rate of that distillation (linear decay to 0)",
                               range=RATE)  # CoFi's {1, 2, 3}e-5 is far too low for a short run: frontier.md
    distill_precision: str = option("fp32", "its forward passes in bf16 autocast (fp32 weights; fast where the CPU "
                                    "has native bf16)", choices=PRECISIONS)  # exact by default
    distill: DistillConfig = field(default_factory=DistillConfig)  # its losses: CoFi's
    gradual: tuple = option((), "gradual pruning: the MACs budgets (decreasing, above the final one) to prune to "
                            "first, each followed by --distill-steps of distillation from the teacher, e.g. 0.5,0.25",
                            parse=fractions, default_text="none: one shot")  # a distilled model prunes better
    gradual_steps: int | None = option(None, "distillation steps after each intermediate --gradual round",
                                       range=COUNT, default_text="a quarter of --distill-steps"
                                       )  # an intermediate model need only be good enough to prune again
    kernels: str = kernels_option()
    device: str = "cpu"
    progress: bool = True              # tqdm bars

    def check(self):
        """Every setting, before any model or data is loaded."""
        check_options(self)
        self.distill.check()
        if self.num_samples < self.batch_size:
            raise PrunekitError(f"--num-samples {self.num_samples} is fewer than one batch ({self.batch_size}); "
                                "the Fisher information needs at least one full batch")
        if self.distill_steps > 0 and distributed.world_size() > 1:
            raise PrunekitError("--distill-steps runs in one process: run post-training without torchrun to use it")
        if self.distill_precision != "fp32" and not self.distill_steps:
            raise PrunekitError("--distill-precision goes with --distill-steps N (the precision of that distillation)")
        if self.distill_lr != PostTrainConfig.distill_lr and not self.distill_steps:
            raise PrunekitError("--distill-lr goes with --distill-steps N (the learning rate of that distillation)")
        if self.gradual and not self.distill_steps:
            raise PrunekitError("--gradual goes with --distill-steps N (each intermediate model is distilled before "
                                "it is pruned again)")
        if self.gradual_steps is not None and not self.gradual:
            raise PrunekitError("--gradual-steps goes with --gradual (the distillation after each intermediate round)")
        if self.gradual and self.allow_empty_sublayers:
            raise PrunekitError("--gradual keeps every sublayer (a removed sublayer cannot be pruned again): drop "
                                "--allow-empty-sublayers")
        if list(self.gradual) != sorted(set(self.gradual), reverse=True):
            raise PrunekitError(f"--gradual takes decreasing budgets, got {','.join(map(str, self.gradual))}")
        return self


def compress(model, task, budget: Budget, config: PostTrainConfig | None = None, warnings: Warnings | None = None,
             **overrides) -> Compressed:
    """Prune a fine-tuned model in place of retraining. overrides: PostTrainConfig fields, for a call
    that changes one or two (compress(model, task, budget, num_samples=64)). Writes nothing."""
    config, warnings = begin("post-training pruning", config or PostTrainConfig(), overrides, budget, BUDGETS, model,
                             task, warnings)
    check(model, task, budget, config)
    model = model.to(config.device).eval()
    watch = Stopwatch()
    scores = Scores(task, watch, config, enabled=config.evaluate)
    if scores("teacher", model) is not None:
        warn_if_not_fine_tuned(task, scores["teacher"], warnings)
    current, rounds = model, []
    for value in config.gradual:
        with watch("gradual"):
            current, record = gradual_round(model, current, task, replace(budget, value=value), config)
        rounds.append(record)
    pruned = prune_masks(current, task, budget, config, watch, scores)

    with watch("surgery"):
        compact = prune(current, pruned.masks).eval()
    diff = check_compact(compact, current, pruned.masks, task.dev[:16] if task.dev else pruned.sample[:16],
                         config.device, warnings)
    scores("compact", compact)
    if config.distill_steps > 0:
        with watch("distill"):
            compact = distill_compact(model, compact, task, config)
        scores("distilled", compact)
    report = {**common_report("post-training", task, compact, model.config, lengths(pruned.sample), scores, diff,
                              warnings), **method_report(pruned, budget, config, watch), "gradual": rounds}
    return Compressed(compact, pruned.masks, report)


def check(model, task, budget: Budget, config: PostTrainConfig) -> None:
    """What fails before any work once the teacher and the task are known: a MACs budget too small for
    the structure every layer keeps, gradual budgets that do not lead down to it."""
    check_budget(budget, config, model.config, task.train)
    if config.gradual and min(config.gradual) <= budget.value:
        raise PrunekitError(f"--gradual budgets must all be above the final --{budget.kind} {budget.value:g}")


def gradual_round(teacher, current, task, budget: Budget, config: PostTrainConfig) -> tuple:
    """One intermediate round of gradual pruning: `current` (dense-shaped) pruned to `budget` and the
    compact model distilled from the teacher, then zero-padded back to the teacher's shape (units where
    they were kept) for the next round. Returns (that model, what the round did)."""
    pruned = prune_masks(current, task, budget, config, Stopwatch(), Scores(task, Stopwatch(), config, enabled=False))
    steps = config.gradual_steps or max(1, config.distill_steps // 4)
    compact = distill_compact(teacher, prune(current, pruned.masks).eval(), task, replace(config, distill_steps=steps))
    record = {"value": budget.value, "stage_kept": pruned.choice.stage, "distill_steps": steps,
              "num_heads": compact.config.num_heads, "ffn_dim": compact.config.ffn_dim}
    if config.evaluate:
        record["dev_metrics"] = Scores(task, Stopwatch(), config)("distilled", compact)
    return expand(compact, teacher.config, pruned.masks).eval(), record


def prune_masks(model, task, budget: Budget, config: PostTrainConfig, watch: Stopwatch, scores: Scores) -> Pruned:
    """Sample, Fisher, search, rearrangement and tuning, each timed and scored; then the stage whose
    masks are kept, judged on held-out training examples."""
    cfg = model.config
    sample = sample_examples(task.train, config.num_samples, config.seed)
    with watch("fisher"):
        fisher = run_fisher(model, sample, config)
    table = None
    if budget.kind == "latency":
        with watch("latency_table"):  # once per device and shape, then cached: not counted as pruning time
            table, cached = latency_table(budget, cfg, config.device, config.progress)
    with watch("search"):
        search = search_masks(budget, cfg, fisher.head_importance, fisher.neuron_importance, lengths(sample),
                              table, config.progress, config.allow_empty_sublayers)
    if table is not None:
        search.details["latency_table_cached"] = cached
    scores("search", model, search.masks)

    with watch("rearrange"):
        rearranged = run_rearrange(fisher, search.final, config.progress)
    scores("rearranged", model, rearranged.masks)

    teacher_masks = (Masks(z_head=search.assistant.head_mask, z_int=search.assistant.neuron_mask)
                     if config.tune_teacher == "assistant" else Masks.ones(cfg, ("z_head", "z_int")))
    with watch("tune"):
        tuned = run_tune(model, sample, teacher_masks, rearranged.masks, config)
    scores("tuned", model, tuned.masks)
    with watch("choose"):
        heldout = heldout_examples(task.train, sample, config.heldout, config.seed)
        choice = choose_stage(model, {"search": search.masks, "rearranged": rearranged.masks, "tuned": tuned.masks},
                              heldout, task.name, config)
    return Pruned(sample, fisher, search, rearranged, tuned, choice)


def distill_compact(teacher, compact, task, config: PostTrainConfig):
    """config.distill_steps steps of distillation fine-tuning of the compact model from the teacher
    (prunekit.distill: prediction KL at temperature 2 and layer distillation through a projection that
    starts as the identity; the compact model keeps the teacher's hidden size). In memory: the final
    model, nothing written."""
    steps_per_epoch = math.ceil(len(task.train) / config.batch_size)
    args = TrainArgs(output=None, epochs=config.distill_steps / steps_per_epoch + 1, lr=config.distill_lr,
                     batch_size=config.batch_size, weight_decay=0.0, warmup_ratio=0.0, seed=config.seed,
                     max_steps=config.distill_steps, eval_every=config.distill_steps, save_every=config.distill_steps,
                     precision=config.distill_precision, device=config.device, progress=config.progress)
    distiller = LayerDistiller(compact.config.hidden_size, teacher_layers(teacher.config.num_layers))
    trainer = DistillTrainer(compact.train(), teacher, task, args, config.distill, distiller, keep="final")
    trainer.fit()
    compact.load_state_dict(trainer.best_state)
    return compact.eval()


METHOD = Method(
    name="post-training",
    summary="Kwon et al. 2022: seconds, no retraining",
    config=PostTrainConfig, compress=compress, budgets=BUDGETS, check=check,
    # Kwon et al.'s choice: 64 tokens for the single-sentence tasks SST-2 and CoLA, 128 for pairs
    max_length=ByTask(DEFAULT_MAX_LENGTH, (("sst2", 64), ("cola", 64))))
Constraint = Budget  # the old name, which tests/test_posttrain_golden.py still imports (goes when it takes Budget)

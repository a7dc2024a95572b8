"""Post-training pruning end to end: `prunekit compress --method post-training`.

    teacher (fine-tuned) ── sample 2048 training examples (without replacement)
        │
        ├─ fisher     per-batch gradients of all-ones head / neuron masks         fisher.py    -> FisherResult
        ├─ search     binary masks at c (and the teacher-assistant masks at sqrt c) search.py  -> SearchStage
        ├─ rearrange  which units in each layer, same counts                      rearrange.py -> RearrangeResult
        ├─ tune       real-valued scales by layer-wise least squares              tune.py      -> TuneResult
        └─ surgery    scales folded into the weights, pruned units cut out        prunekit.prune
    -> output dir: the compact model (save_pretrained), masks.safetensors (the real-valued z_head /
       z_int), report.json (built from the stage results by build_report: constraint, macs_kept,
       params_kept, per-layer structure, dev metric after each stage, wall time per stage).

PostTrainConfig declares every setting once, with its default and the reason for it; the CLI reads
its defaults from there. compress() works on a loaded model and Task (what tests and benchmarks call);
run() is the CLI's: it loads the teacher and the data, calls compress() and writes the output
directory atomically.

Where this departs from the reference, and why (each is a PostTrainConfig field; bench/posttrain.py
measures the alternatives, bench/results/posttrain.md has the figures):
  - Fisher batches group examples of similar length (dynamic padding otherwise pays for many
    padding tokens on GLUE);
  - the tuning forwards run in bf16 autocast where the hardware has native bf16 (the least squares
    themselves stay fp32/fp64); the Fisher pass stays fp32 by default: a bf16 Fisher changed which
    units were kept and cost dev accuracy for little time saved;
  - mask tuning walks a random subset of the sample holding about 32768 tokens, not all of it (each
    token gives d equations, so that pins the scales down at a fraction of the cost);
  - every layer keeps at least one head and one neuron (an empty sublayer loses its LayerNorm);
  - the sample is drawn without replacement, MACs use the sample's length distribution, the
    latency budget is computed once, and a failing tuning fit skips only its own sublayer.
"""
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ..cost import cost_report, macs, unit_macs
from ..data import batch_indices, collate, lengths
from ..errors import PrunekitError
from ..masks import Masks
from ..surgery import prune
from ..teachers import check_output, load_teacher_and_task, warn_if_not_fine_tuned
from ..timing import Stopwatch
from .fisher import diagonal_fisher, mask_gradients, resolve_precision
from .rearrange import pruned_set_objective, rearrange
from .search import SearchResult, estimate_latency, fit_piecewise_linear, search_latency, search_mac
from .tune import SublayerFit, tune_masks

STAGES = ("fisher", "search", "rearrange", "tune")  # what "pruning time" adds up (evaluation excluded)
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass
class Constraint:
    """What the pruned model must fit: a fraction of the teacher's MACs or of its block latency."""
    kind: str                  # "macs" or "latency"
    value: float               # fraction of the teacher's MACs / block latency that is kept
    # latency only: the deployment the block-latency tables are measured for
    latency_batch: int = 32             # batch size served
    latency_seq_len: int = 128          # sequence length served (BERT's GLUE length)
    lut_cache: str | None = None        # cache file (None: ~/.cache/prunekit/latency_lut.json)
    latency_runtime: str = "ort"        # timed on ONNX Runtime (what prunekit deploys on) or torch
    latency_threads: int | None = None  # CPU threads of the deployment (None: torch's setting)
    device: str = "cpu"

    def check(self):
        if self.kind not in ("macs", "latency"):
            raise PrunekitError(f"unknown constraint {self.kind!r} (macs or latency)")
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and 0 < self.value < 1):
            raise PrunekitError(f"--{self.kind} must be a fraction strictly between 0 and 1 (the part kept), "
                                f"got {self.value}")
        if self.kind == "latency" and (self.latency_batch < 1 or self.latency_seq_len < 2):
            raise PrunekitError("--latency-batch must be >= 1 and --latency-seq-len >= 2")
        if self.kind == "latency" and self.latency_threads is not None and self.latency_threads < 1:
            raise PrunekitError(f"--latency-threads must be >= 1, got {self.latency_threads}")
        if self.lut_cache is not None and Path(self.lut_cache).is_dir():
            raise PrunekitError(f"--lut-cache {self.lut_cache} is a directory; it names the JSON file of the tables")


@dataclass
class PostTrainConfig:
    """Post-training pruning settings (Kwon et al. 2022 unless said otherwise); `prunekit compress
    --method post-training` takes its defaults from here."""
    # Basic
    num_samples: int = 2048            # training examples for Fisher and tuning (the paper's sample size)
    batch_size: int = 32               # Fisher batch: one gradient per batch (the paper's GLUE batch)
    seed: int = 0                      # which examples are sampled and how Fisher batches are ordered
    allow_empty_sublayers: bool = False  # an emptied sublayer loses its LayerNorm too; that collapsed MRPC
    evaluate: bool = True              # dev metric after every stage (evaluation is not pruning time)
    # Advanced
    fisher_precision: str = "fp32"     # the reference's; bf16: faster, as good within noise (fisher_precision.md)
    fisher_by_length: bool = True      # Fisher batches of similar length: little padding to pay for
    tune_precision: str = "auto"       # tuning forwards in bf16 where native; the solves stay fp32/fp64
    ridge: float = 1e-3                # pulls tuned scales toward 1 (x the mean diagonal: scale-free)
    max_fit_tokens: int | None = 32768  # tokens mask tuning fits on (None: the whole sample)
    tune_teacher: str = "assistant"    # tuning target: the teacher-assistant masks at sqrt(c), or "dense"
    ffn_target: str = "assistant"      # FFN target of tuning; "dense" is what the reference computed
    eval_batch_size: int = 128         # evaluation only
    distill_steps: int = 0             # then this many steps of distillation of the compact model (CoFi's losses)
    distill_lr: float = 3e-5           # its learning rate (CoFi's fine-tuning grid {1, 2, 3}e-5)
    distill_precision: str = "fp32"    # bf16: its forwards under bf16 autocast (fast where the CPU has native bf16)
    kernels: str = "torch"             # attention / FFN implementation of the Fisher pass (torch = exact eager)
    device: str = "cpu"
    progress: bool = True              # tqdm bars

    def check(self):
        """Every setting, before any model or data is loaded."""
        if self.batch_size < 1:
            raise PrunekitError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_samples < self.batch_size:
            raise PrunekitError(f"--num-samples {self.num_samples} is fewer than one batch ({self.batch_size}); "
                                "the Fisher information needs at least one full batch")
        for name in ("fisher_precision", "tune_precision"):
            if getattr(self, name) not in PRECISIONS:
                raise PrunekitError(f"{name} must be one of {', '.join(PRECISIONS)}, not {getattr(self, name)!r}")
        for name in ("tune_teacher", "ffn_target"):
            if getattr(self, name) not in ("assistant", "dense"):
                raise PrunekitError(f"{name} must be 'assistant' or 'dense', not {getattr(self, name)!r}")
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise PrunekitError(f"ridge must be finite and >= 0, got {self.ridge}")
        if self.max_fit_tokens is not None and self.max_fit_tokens < 1:
            raise PrunekitError(f"max_fit_tokens must be >= 1, got {self.max_fit_tokens}")
        if self.eval_batch_size < 1:
            raise PrunekitError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        from .. import distributed
        if self.distill_steps > 0 and distributed.world_size() > 1:
            raise PrunekitError("--distill-steps runs in one process: run post-training without torchrun to use it")
        if self.distill_steps < 0 or not (math.isfinite(self.distill_lr) and self.distill_lr > 0):
            raise PrunekitError(f"distill_steps must be >= 0 and distill_lr > 0, got {self.distill_steps}, "
                                f"{self.distill_lr}")
        if self.distill_precision not in ("fp32", "bf16"):
            raise PrunekitError(f"distill_precision must be fp32 or bf16, not {self.distill_precision!r}")
        from ..model import KERNELS
        if self.kernels not in KERNELS:
            raise PrunekitError(f"kernels must be one of {', '.join(KERNELS)}, not {self.kernels!r}")
        return self


# ---------------------------------------------------------------------------------------------
# stage results


@dataclass
class FisherResult:
    g_head: torch.Tensor              # (B, L, H) per-batch gradients of the head masks
    g_int: torch.Tensor               # (B, L, F) ... of the neuron masks
    head_importance: torch.Tensor     # (L, H) diagonal Fisher
    neuron_importance: torch.Tensor   # (L, F)
    batches: int
    precision: str
    by_length: bool


@dataclass
class SearchStage:
    final: SearchResult               # binary masks at c
    assistant: SearchResult           # binary masks at sqrt(c): the tuning teacher
    details: dict                     # costs and fits the search used, for the report
    table: dict | None = None         # the latency tables (latency constraint only)


@dataclass
class RearrangeResult:
    masks: Masks                      # the searched counts, rearranged units
    objective: dict                   # ||sum of pruned gradients||^2 before and after, heads and neurons


@dataclass
class TuneResult:
    masks: Masks                      # real-valued scales on the kept units
    fits: list[SublayerFit]
    examples: int                     # examples and real tokens the fits walked
    tokens: int
    precision: str


class Compressed(NamedTuple):
    model: torch.nn.Module            # the compact model
    masks: Masks                      # the tuned masks (for the dense teacher)
    report: dict


def check_sample(num_samples: int, batch_size: int, available: int):
    PostTrainConfig(num_samples=num_samples, batch_size=batch_size).check()
    if available < batch_size:
        raise PrunekitError(f"the training set has {available} examples, fewer than one batch ({batch_size})")


def sample_examples(train: list, num_samples: int, seed: int) -> list:
    """num_samples training examples drawn without replacement (all of them if there are fewer)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[:num_samples].tolist()
    return [train[i] for i in idx]


def tuning_subset(sample: list, max_tokens: int | None, min_examples: int = 256) -> list:
    """The examples mask tuning walks: a prefix of the (randomly ordered) sample holding about
    max_tokens real tokens, and at least min_examples examples, since the last layer fits [CLS] alone,
    one token per example. All of the sample when max_tokens is None.

    Each token gives d equations for at most F unknowns, so a few ten thousand tokens pin the scales
    down; walking all 2048 examples through the teacher-assistant and the student costs about 1.2 dense
    forward passes (fitting a random part of the tokens of every example saves nothing: attention
    still runs over whole sequences)."""
    if max_tokens is None:
        return sample
    total, n = 0, 0
    for n, length in enumerate(lengths(sample), 1):
        total += length
        if total >= max_tokens and n >= min_examples:
            break
    return sample[:n]


def fisher_batches(sample: list, batch_size: int, by_length: bool, seed: int) -> list:
    """Full batches of the sample (a last partial batch is dropped, so every per-batch gradient
    averages the same number of examples).

    by_length: batches of similar length (the sample sorted by length, cut, batch order shuffled).
    With dynamic padding a random batch pays for many padding tokens; grouping removes nearly all of
    them. random: consecutive chunks of the random sample, as in the reference. Both give unbiased
    per-batch mean gradients; the benchmark compares the two.
    """
    if by_length:
        plan = batch_indices(sample, batch_size, shuffle=True, seed=seed, group_by_length=True,
                             megabatch=max(1, len(sample) // batch_size))
    else:
        plan = [list(range(i, min(i + batch_size, len(sample)))) for i in range(0, len(sample), batch_size)]
    return [collate([sample[i] for i in idx]) for idx in plan if len(idx) == batch_size]


def search_masks(constraint: Constraint, config, head_imp, neuron_imp, sample_lengths, table=None, progress=True,
                 allow_empty: bool = False) -> SearchStage:
    """Binary masks at c and the teacher-assistant masks at sqrt c, with the details for the report.
    table: the latency tables (latency.load_or_measure) for the latency constraint. allow_empty:
    whether a layer may lose all its heads or all its neurons (see search.py on why not by default)."""
    details = {}
    if constraint.kind == "macs":
        head_cost, neuron_cost = unit_macs(config, lengths=sample_lengths)
        dense = macs(config, lengths=sample_lengths)["total"]
        run = lambda frac: search_mac(head_imp, neuron_imp, head_cost, neuron_cost, frac * dense,
                                      min_per_layer=0 if allow_empty else 1)
        details.update(mean_length=float(sum(sample_lengths) / len(sample_lengths)), dense_macs=dense,
                       macs_per_head=head_cost, macs_per_neuron=neuron_cost)
    else:
        mha_fit, ffn_fit = fit_piecewise_linear(table["mha"]), fit_piecewise_linear(table["ffn"])
        L, H, F = config.num_layers, config.num_heads[0], config.ffn_dim[0]
        dense = float(L * (mha_fit(H) + ffn_fit(F)))
        run = lambda frac: search_latency(head_imp, neuron_imp, mha_fit, ffn_fit, frac * dense, drop_layers=allow_empty)
        details.update(latency_table=table["key"], mha_fit=mha_fit.as_dict(),
                       ffn_fit=ffn_fit.as_dict(), dense_latency_fit_ms=dense,
                       dense_latency_table_ms=estimate_latency(torch.ones(L, H), torch.ones(L, F), table["mha"], table["ffn"]))
    results = [run(frac) for frac in tqdm([constraint.value, math.sqrt(constraint.value)], desc="search",
                                          disable=not progress, leave=False)]
    return SearchStage(results[0], results[1], details, table)


# ---------------------------------------------------------------------------------------------
# the stages


def run_fisher(model, sample: list, config: PostTrainConfig) -> FisherResult:
    batches = fisher_batches(sample, config.batch_size, config.fisher_by_length, config.seed)
    precision = resolve_precision(config.fisher_precision, config.device)
    g_head, g_int = mask_gradients(model, batches, config.progress, precision=precision)
    return FisherResult(g_head, g_int, diagonal_fisher(g_head), diagonal_fisher(g_int), len(batches), precision,
                        config.fisher_by_length)


def run_rearrange(fisher: FisherResult, searched: SearchResult, progress: bool) -> RearrangeResult:
    head = rearrange(fisher.g_head, searched.head_mask, progress, desc="rearrange heads")
    neuron = rearrange(fisher.g_int, searched.neuron_mask, progress, desc="rearrange neurons")
    objective = {"heads_before": pruned_set_objective(fisher.g_head, searched.head_mask).sum().item(),
                 "heads_after": pruned_set_objective(fisher.g_head, head).sum().item(),
                 "neurons_before": pruned_set_objective(fisher.g_int, searched.neuron_mask).sum().item(),
                 "neurons_after": pruned_set_objective(fisher.g_int, neuron).sum().item()}
    return RearrangeResult(Masks(z_head=head, z_int=neuron), objective)


def run_tune(model, sample: list, teacher: Masks, student: Masks, config: PostTrainConfig) -> TuneResult:
    # re-batched by length: padding is dropped from the fit anyway, so this only saves work
    subset = tuning_subset(sample, config.max_fit_tokens)
    plan = batch_indices(subset, 64, group_by_length=True, megabatch=len(subset))
    batches = [collate([subset[i] for i in idx]) for idx in plan]
    precision = resolve_precision(config.tune_precision, config.device)
    # only [CLS] reaches the pooler, so the last layer reconstructs [CLS] alone (classification and regression)
    tuned, fits = tune_masks(model, batches, teacher, student, cls_only_last=True, ridge=config.ridge,
                             precision=precision, ffn_target=config.ffn_target, progress=config.progress)
    return TuneResult(tuned, fits, len(subset), sum(lengths(subset)), precision)


def check_budget(constraint: Constraint, config: PostTrainConfig, model_config, train: list):
    """Refuse a MACs budget that cannot keep the minimum structure (before minutes of Fisher, not after)."""
    if constraint.kind != "macs":
        return
    lens = lengths(train[:4096])
    head, neuron = unit_macs(model_config, lengths=lens)
    least = min(head, neuron) if config.allow_empty_sublayers else model_config.num_layers * (head + neuron)
    if constraint.value * macs(model_config, lengths=lens)["total"] < least:
        what = "a single head or FFN neuron" if config.allow_empty_sublayers else "one head and one FFN neuron per layer"
        raise PrunekitError(f"--macs {constraint.value:g} is too small to keep {what}")


def compress(model, task, constraint: Constraint, config: PostTrainConfig | None = None, warnings: list | None = None,
             **overrides) -> Compressed:
    """Prune a fine-tuned model in place of retraining. overrides: PostTrainConfig fields, for a call
    that changes one or two (compress(model, task, c, num_samples=64)). Returns (compact model, tuned
    Masks, report dict)."""
    from ..training import evaluate_task, torch_predictor
    config = replace(config or PostTrainConfig(), **overrides).check()
    constraint.check()
    check_sample(config.num_samples, config.batch_size, len(task.train))
    cfg = model.config
    if not cfg.is_uniform():
        raise PrunekitError("post-training pruning needs a dense teacher (same head count and FFN width in every "
                            "layer); this model is already compact")
    warnings = [] if warnings is None else warnings
    check_budget(constraint, config, cfg, task.train)
    device = config.device
    model = model.to(device).eval()
    watch = Stopwatch()
    metrics = {}

    def score(stage, net, masks=None):
        if config.evaluate:
            with watch("evaluation"):
                metrics[stage] = evaluate_task(torch_predictor(net, device, masks), task, config.eval_batch_size,
                                               config.progress)

    score("teacher", model)
    if config.evaluate:
        warn_if_not_fine_tuned(task, metrics["teacher"], warnings)

    sample = sample_examples(task.train, config.num_samples, config.seed)
    with watch("fisher"):
        kernels = model.kernels
        model.set_kernels(config.kernels)
        try:
            fisher = run_fisher(model, sample, config)
        finally:
            model.set_kernels(kernels)
    table = None
    if constraint.kind == "latency":
        from .latency import load_or_measure
        from .. import distributed
        with watch("latency_table"):  # once per device and shape, then cached: not counted as pruning time
            measure = lambda: load_or_measure(cfg, constraint.latency_batch, constraint.latency_seq_len,
                                              constraint.lut_cache, constraint.device, constraint.latency_runtime,
                                              config.progress, constraint.latency_threads)
            if distributed.is_main():  # under torchrun rank 0 times the blocks alone; the others read its cache
                table, cached = measure()
            distributed.barrier()
            if not distributed.is_main():
                table, cached = measure()
    with watch("search"):
        search = search_masks(constraint, cfg, fisher.head_importance, fisher.neuron_importance, lengths(sample),
                              table, config.progress, config.allow_empty_sublayers)
    if table is not None:
        search.details["latency_table_cached"] = cached
    searched = Masks(z_head=search.final.head_mask, z_int=search.final.neuron_mask)
    score("search", model, searched)

    with watch("rearrange"):
        rearranged = run_rearrange(fisher, search.final, config.progress)
    score("rearranged", model, rearranged.masks)

    teacher_masks = (Masks(z_head=search.assistant.head_mask, z_int=search.assistant.neuron_mask)
                     if config.tune_teacher == "assistant" else Masks.ones(cfg, ("z_head", "z_int")))
    with watch("tune"):
        tuned = run_tune(model, sample, teacher_masks, rearranged.masks, config)
    score("tuned", model, tuned.masks)

    with watch("surgery"):
        compact = prune(model, tuned.masks).eval()
    diff = compact_vs_masked(compact, model, tuned.masks, task.dev[:16] if task.dev else sample[:16], device)
    if diff > 1e-3:
        warnings.append(f"the compact model differs from the masked model by {diff:.2e} on a dev batch")
    score("compact", compact)
    if config.distill_steps > 0:
        with watch("distill"):
            compact = distill_compact(model, compact, task, config)
        score("distilled", compact)

    report = build_report(task, constraint, config, cfg, compact, sample, fisher, search, rearranged, tuned,
                          metrics, watch, diff, warnings)
    return Compressed(compact, tuned.masks, report)


def distill_compact(teacher, compact, task, config: PostTrainConfig):
    """config.distill_steps steps of distillation fine-tuning of the compact model from the teacher,
    with CoFi's losses (prediction KL at temperature 2 and layer distillation through a projection
    that starts as the identity; the compact model keeps the teacher's hidden size); the final model."""
    import shutil
    import tempfile

    from ..cofi.distill import LayerDistiller, teacher_layers
    from ..cofi.pipeline import CoFiConfig
    from ..cofi.trainer import CoFiTrainer
    from ..training import TrainArgs
    work = Path(tempfile.mkdtemp(prefix="prunekit-distill-"))
    try:
        settings = CoFiConfig(device=config.device, progress=config.progress)
        steps_per_epoch = math.ceil(len(task.train) / config.batch_size)
        args = TrainArgs(output=str(work), epochs=config.distill_steps / steps_per_epoch + 1, lr=config.distill_lr,
                         batch_size=config.batch_size, weight_decay=0.0, warmup_ratio=0.0, seed=config.seed,
                         max_steps=config.distill_steps, eval_every=config.distill_steps,
                         save_every=config.distill_steps, precision=config.distill_precision, device=config.device,
                         progress=config.progress)
        distiller = LayerDistiller(compact.config.hidden_size, teacher_layers(teacher.config.num_layers))
        CoFiTrainer(compact.train(), teacher, task, args, settings, distiller, keep="final").fit()
        distilled = type(compact).from_pretrained(str(work)).to(config.device).eval()
        distilled.tokenizer = compact.tokenizer
        return distilled
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compact_vs_masked(compact, model, masks: Masks, examples: list, device) -> float:
    """Max abs logit difference between the compact model and the masked dense model on a batch."""
    batch = collate(examples)
    batch.pop("labels", None)
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        return (compact(**batch).logits - model(**batch, masks=masks.to(device)).logits).abs().max().item()


def build_report(task, constraint, config, teacher_cfg, compact, sample, fisher: FisherResult, search: SearchStage,
                 rearranged: RearrangeResult, tuned: TuneResult, metrics, watch: Stopwatch, diff, warnings) -> dict:
    """report.json from the stage results."""
    from ..metrics import main_metric
    rep = cost_report(compact.config, lengths=lengths(sample), reference=teacher_cfg)
    wall, cpu = watch.total(STAGES)
    report = {
        "method": "post-training",
        "task": task.name,
        "constraint": {"kind": constraint.kind, "value": constraint.value,
                       "teacher_assistant": math.sqrt(constraint.value), "budget": search.final.budget,
                       "cost_under_search_model": search.final.cost, **search.details},
        "macs_kept": rep.macs_kept,
        "params_kept": rep.params_kept,
        "structure": rep.structure,
        "main_metric": main_metric(task.name),
        "dev_metrics": metrics,  # stage -> metrics: teacher, search, rearranged, tuned, compact
        "seconds": {**{k: round(v, 3) for k, v in watch.seconds.items()}, "pruning": round(wall, 3)},
        "cpu_seconds": {**{k: round(v, 3) for k, v in watch.cpu_seconds.items()}, "pruning": round(cpu, 3)},
        "threads": torch.get_num_threads(),
        "num_samples": len(sample), "fisher_batches": fisher.batches,
        "fisher_batching": "by length" if fisher.by_length else "random", "fisher_precision": fisher.precision,
        "tune_precision": tuned.precision,
        "batch_size": config.batch_size, "seed": config.seed,
        "rearrangement_objective": rearranged.objective,
        "tuning": [_finite(asdict(f)) for f in tuned.fits],
        "tuning_ridge": config.ridge, "tuning_max_fit_tokens": config.max_fit_tokens,
        "tuning_examples": tuned.examples, "tuning_tokens": tuned.tokens, "tuning_ffn_target": config.ffn_target,
        "tuning_teacher": config.tune_teacher,
        "allow_empty_sublayers": config.allow_empty_sublayers,
        "distill_steps": config.distill_steps, "distill_lr": config.distill_lr,
        "distill_precision": config.distill_precision,
        "compact_vs_masked_max_abs_diff": diff,
        "warnings": warnings,
    }
    if constraint.kind == "latency":
        L, H, F = teacher_cfg.num_layers, teacher_cfg.num_heads[0], teacher_cfg.ffn_dim[0]
        mha, ffn = search.table["mha"], search.table["ffn"]
        report["latency_kept_table"] = (estimate_latency(tuned.masks.z_head != 0, tuned.masks.z_int != 0, mha, ffn)
                                        / estimate_latency(torch.ones(L, H), torch.ones(L, F), mha, ffn))
    return report


def _finite(d: dict) -> dict:
    """NaN (a skipped fit's errors) -> None, so report.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def default_max_length(task_name: str) -> int:
    """Kwon et al.'s choice: 64 tokens for the single-sentence tasks SST-2 and CoLA, 128 for pairs."""
    from ..data import canonical_task
    return 64 if canonical_task(task_name or "") in ("sst2", "cola") else 128


def run(teacher: str, task_name: str, output: str, constraint: Constraint, config: PostTrainConfig | None = None,
        data: dict | None = None, overwrite: bool = False) -> dict:
    """The CLI's job: load the teacher and the task, compress, write output/ atomically.

    data: load_task's keyword arguments (glue_dir, max_length, train_file, ...); max_length None
    means Kwon et al.'s choice (default_max_length)."""
    from ..io import output_dir, write_json
    config = (config or PostTrainConfig()).check()
    constraint.check()
    if not task_name:
        raise PrunekitError("give --task")
    check_output(output, overwrite)
    data = dict(data or {})
    model, task, warnings = load_teacher_and_task(teacher, task_name, data, purpose="post-training pruning",
                                                  default_max_length=default_max_length(task_name))
    n_warned = len(warnings)
    compact, tuned, report = compress(model, task, constraint, config, warnings=warnings)
    from .. import distributed
    for w in warnings[n_warned:] if distributed.is_main() else []:
        print(f"warning: {w}", file=sys.stderr)
    report = {"teacher": str(teacher), "max_length": data["max_length"], **report}
    compact.config.finetuning_task = task.name
    if not distributed.is_main():  # under torchrun: every process pruned alike, rank 0 writes
        return report
    with output_dir(output, overwrite) as tmp:
        compact.save_pretrained(tmp)
        tuned.save(tmp / "masks.safetensors")
        write_json(tmp / "report.json", report)
    return report

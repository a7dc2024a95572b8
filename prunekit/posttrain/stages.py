"""The stages of post-training pruning and what each produces (pipeline.py runs them in order):
sampling, Fisher, search, rearrangement and tuning, each a function of the previous stages' results
and the PostTrainConfig.
"""
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..budget import Budget
from ..cost import macs, unit_macs
from ..data import batch_indices, collate, lengths
from ..errors import PrunekitError
from ..evaluation import evaluate, torch_predictor
from ..latency import estimate_latency, fit_piecewise_linear
from ..masks import Masks
from ..metrics import main_metric
from .fisher import diagonal_fisher, mask_gradients, resolve_precision
from .rearrange import pruned_set_objective, rearrange
from .search import SearchResult, search_latency, search_mac
from .tune import SublayerFit, tune_masks


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
    table: dict | None = None         # the latency tables (latency budget only)

    @property
    def masks(self) -> Masks:
        return Masks(z_head=self.final.head_mask, z_int=self.final.neuron_mask)


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


@dataclass
class StageChoice:
    """Which stage's masks surgery cuts with: the best on training examples the masks were not fitted
    on (a stage that makes the model worse there is not kept)."""
    stage: str                        # "search", "rearranged" or "tuned"
    heldout: dict                     # stage -> metrics on the held-out examples
    examples: int                     # how many (0: no choice made, the tuned masks are kept)


@dataclass
class Pruned:
    """Everything the stages produced, in order: what the compact model is cut with and the report says."""
    sample: list
    fisher: FisherResult
    search: SearchStage
    rearranged: RearrangeResult
    tuned: TuneResult
    choice: StageChoice

    @property
    def masks(self) -> Masks:
        """The kept stage's masks."""
        return {"search": self.search.masks, "rearranged": self.rearranged.masks, "tuned": self.tuned.masks}[
            self.choice.stage]


def heldout_examples(train: list, sample: list, count: int, seed: int) -> list:
    """Up to `count` training examples outside the sample, drawn at random (seeded)."""
    taken = {id(e) for e in sample}
    rest = [e for e in train if id(e) not in taken]
    order = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed + 1))[:count]
    return [rest[i] for i in order.tolist()]


def choose_stage(model, candidates: dict, heldout: list, task_name: str, config) -> StageChoice:
    """The stage whose masks score best on `heldout` (main metric); a tie goes to the later stage.
    candidates: stage -> Masks, in stage order. No held-out examples: the last stage, unjudged."""
    if not heldout:
        return StageChoice(list(candidates)[-1], {}, 0)
    metric = main_metric(task_name)
    scores = {stage: evaluate(torch_predictor(model, config.device, masks), heldout, task_name,
                              config.eval_batch_size, progress=False) for stage, masks in candidates.items()}
    best = max(reversed(list(scores)), key=lambda stage: scores[stage][metric])  # max keeps the first of equals
    return StageChoice(best, scores, len(heldout))


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
    down, while the whole sample would be walked through both the teacher-assistant and the student
    (fitting a random part of the tokens of every example saves nothing: attention still runs over
    whole sequences)."""
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


def search_masks(budget: Budget, config, head_imp, neuron_imp, sample_lengths, table=None, progress=True,
                 allow_empty: bool = False) -> SearchStage:
    """Binary masks at c and the teacher-assistant masks at sqrt c, with the details for the report.
    table: the latency tables (prunekit.budget.latency_table) for a latency budget. allow_empty:
    whether a layer may lose all its heads or all its neurons (see search.py on why not by default)."""
    details = {}
    if budget.kind == "macs":
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
    results = [run(frac) for frac in tqdm([budget.value, math.sqrt(budget.value)], desc="search",
                                          disable=not progress, leave=False)]
    return SearchStage(results[0], results[1], details, table)


def run_fisher(model, sample: list, config) -> FisherResult:
    """The Fisher pass with config.kernels (the model's own kernels restored after)."""
    batches = fisher_batches(sample, config.batch_size, config.fisher_by_length, config.seed)
    precision = resolve_precision(config.fisher_precision, config.device)
    kernels = model.kernels
    model.set_kernels(config.kernels)
    try:
        g_head, g_int = mask_gradients(model, batches, config.progress, precision=precision)
    finally:
        model.set_kernels(kernels)
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


def run_tune(model, sample: list, teacher: Masks, student: Masks, config) -> TuneResult:
    # re-batched by length: padding is dropped from the fit anyway, so this only saves work
    subset = tuning_subset(sample, config.max_fit_tokens)
    plan = batch_indices(subset, 64, group_by_length=True, megabatch=len(subset))
    batches = [collate([subset[i] for i in idx]) for idx in plan]
    precision = resolve_precision(config.tune_precision, config.device)
    # only [CLS] reaches the pooler, so the last layer reconstructs [CLS] alone (classification and regression)
    tuned, fits = tune_masks(model, batches, teacher, student, cls_only_last=True, ridge=config.ridge,
                             precision=precision, ffn_target=config.ffn_target, progress=config.progress)
    return TuneResult(tuned, fits, len(subset), sum(lengths(subset)), precision)


def check_budget(budget: Budget, config, model_config, train: list):
    """Refuse a MACs budget that cannot keep the minimum structure (before minutes of Fisher, not after)."""
    if budget.kind != "macs":
        return
    lens = lengths(train[:4096])
    head, neuron = unit_macs(model_config, lengths=lens)
    least = min(head, neuron) if config.allow_empty_sublayers else model_config.num_layers * (head + neuron)
    if budget.value * macs(model_config, lengths=lens)["total"] < least:
        what = "a single head or FFN neuron" if config.allow_empty_sublayers else "one head and one FFN neuron per layer"
        raise PrunekitError(f"--macs {budget.value:g} is too small to keep {what}")

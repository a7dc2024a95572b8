"""report.json of post-training pruning: the budget and how the search met it, per-stage time, and
what every stage did (sample, Fisher batches, rearrangement objective, tuning fits), besides the fields
every method writes (prunekit.harness.common_report)."""
import math
from dataclasses import asdict

from ..latency import latency_kept
from ..timing import Stopwatch
from .stages import Pruned

STAGES = ("gradual", "fisher", "search", "rearrange", "tune", "choose")  # what "pruning time" adds up (evaluation excluded)


def method_report(pruned: Pruned, budget, config, watch: Stopwatch) -> dict:
    search, fisher, tuned = pruned.search, pruned.fisher, pruned.tuned
    wall, cpu = watch.total(STAGES)
    report = {
        "constraint": {"kind": budget.kind, "value": budget.value, "teacher_assistant": math.sqrt(budget.value),
                       "budget": search.final.budget, "cost_under_search_model": search.final.cost, **search.details},
        "seconds": {**{k: round(v, 3) for k, v in watch.seconds.items()}, "pruning": round(wall, 3)},
        "cpu_seconds": {**{k: round(v, 3) for k, v in watch.cpu_seconds.items()}, "pruning": round(cpu, 3)},
        "num_samples": len(pruned.sample), "fisher_batches": fisher.batches,
        "fisher_batching": "by length" if fisher.by_length else "random", "fisher_precision": fisher.precision,
        "tune_precision": tuned.precision,
        "batch_size": config.batch_size, "seed": config.seed,
        "rearrangement_objective": pruned.rearranged.objective,
        "tuning": [_finite(asdict(f)) for f in tuned.fits],
        "tuning_ridge": config.ridge, "tuning_max_fit_tokens": config.max_fit_tokens,
        "tuning_examples": tuned.examples, "tuning_tokens": tuned.tokens, "tuning_ffn_target": config.ffn_target,
        "tuning_teacher": config.tune_teacher,
        "allow_empty_sublayers": config.allow_empty_sublayers,
        "stage_kept": pruned.choice.stage, "heldout_examples": pruned.choice.examples,
        "heldout_metrics": pruned.choice.heldout,
        "distill_steps": config.distill_steps, "distill_lr": config.distill_lr,
        "distill_precision": config.distill_precision,
    }
    if budget.kind == "latency":
        report["latency_kept_table"] = latency_kept(search.table, pruned.masks.z_head, pruned.masks.z_int)
    return report


def _finite(d: dict) -> dict:
    """NaN (a skipped fit's errors) -> None, so report.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

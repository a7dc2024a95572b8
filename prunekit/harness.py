"""What every compression method shares, so that a method is only

    compress(model, task, budget, config, warnings=...) -> Compressed       (+ workdir=, resume= if resumable)

working on objects (a loaded teacher, a tokenised Task, a Budget, its settings) and writing nothing
but its own checkpoints in `workdir` (a resumable method), and this module does the rest:

  Method          a method's name, settings class, compress function, the budgets it takes, its default
                  length per task, whether it is resumable, and the work files its output keeps
  Compressed      (model, masks, report): what a method returns
  Scores          the dev metrics after each stage
  common_report   the report fields of every method (sizes, structure, dev metrics, the surgery check)
  check_compact   compact model == masked model on the run's own examples, else a warning
  check_device, check_speed_options   --device, --kernels and --precision against this machine, before
                  any model or data is loaded
  run             `prunekit compress`: every check before any work, the teacher and data loaded, then
  run_loaded      what it shares with prunekit.compress (which brings its own model and data): the checks
                  that need them, the output claimed (locked), the method run, its result written at once
                  (or, without an output, nothing written)

The output directory: while a resumable method works, it holds INCOMPLETE, run_args.json and the
method's work (CoFi: prune/, finetune/). The finished directory (compact model, masks.safetensors,
report.json, kept work files) is built beside it and swapped in whole (prunekit.io.output_dir), so the
directory is a run under way or a finished one, never half of each.
"""
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from . import distributed
from .budget import Budget
from .checkpoints import config_of, resolve
from .cost import cost_report
from .data import canonical_task
from .errors import PrunekitError
from .evaluation import evaluate_task, torch_predictor
from .io import check_output, output_dir, write_json
from .machine import check_precision
from .masks import Masks
from .model import resolve_kernels
from .metrics import main_metric
from .progress import Warnings
from .rundir import claim_output, data_inputs, started
from .surgery import compact_vs_masked
from .teachers import load_teacher_and_task
from .timing import Stopwatch

FREE_ON_RESUME = ("device", "progress", "eval_batch_size", "save_every")  # settings a resume may change
MASKED_TOLERANCE = 1e-3  # max abs logit difference beyond which surgery's result is reported as suspect


class Compressed(NamedTuple):
    model: torch.nn.Module   # the compact model
    masks: Masks             # the masks it was cut with (for the dense teacher)
    report: dict             # report.json's method fields


@dataclass(frozen=True)
class ByTask:
    """A default that depends on the task: `default`, or the task's own value."""
    default: int
    tasks: tuple = ()        # ((task, value), ...)

    def __call__(self, task_name: str) -> int:
        return dict(self.tasks).get(canonical_task(task_name or ""), self.default)

    def __str__(self) -> str:
        by_value = {}
        for task, value in self.tasks:
            by_value.setdefault(value, []).append(task)
        own = "; ".join(f"{v} for {' and '.join(ts)}" for v, ts in by_value.items())
        return f"{own}, else {self.default}" if own else str(self.default)


@dataclass(frozen=True)
class Method:
    """A compression method as the harness and the CLI see it."""
    name: str                    # --method NAME
    summary: str                 # one line for --method's help
    config: type                 # its settings dataclass; its option fields become the method's flags
    compress: Callable           # compress(model, task, budget, config, warnings=...) -> Compressed
    budgets: tuple               # Budget kinds it takes
    max_length: ByTask           # tokens per example when --max-length is not given
    check: Callable              # check(model, task, budget, config): what fails before any work, once they are loaded
    resumable: bool = False      # keeps checkpoints in a work directory: compress(..., workdir=, resume=)
    logs: dict = field(default_factory=dict)  # output file -> work file it is copied from


def begin(method: str, config, overrides: dict, budget: Budget, budgets: tuple, teacher, task,
          warnings: Warnings | None) -> tuple:
    """The start every method's compress shares: (its settings with `overrides` applied, checked; the
    run's Warnings). The budget must be one the method takes, the teacher dense, the training set at
    least one batch."""
    config = replace(config, **overrides).check()
    budget.check(budgets)
    if not teacher.config.is_uniform():
        raise PrunekitError(f"{method} needs a dense teacher (same head count and FFN width in every layer); this "
                            "model is already compact")
    if len(task.train) < config.batch_size:
        raise PrunekitError(f"the training set has {len(task.train)} examples, fewer than one batch "
                            f"({config.batch_size})")
    return config, Warnings() if warnings is None else warnings


def common_report(method: str, task, compact, teacher_config, lengths, metrics: dict, diff: float,
                  warnings: list) -> dict:
    """The report fields every method writes; lengths: the length distribution its MACs are counted at."""
    rep = cost_report(compact.config, lengths=lengths, reference=teacher_config)
    return {"method": method, "task": task.name, "sparsity": rep.sparsity, "macs_kept": rep.macs_kept,
            "params_kept": rep.params_kept, "structure": rep.structure, "main_metric": main_metric(task.name),
            "dev_metrics": dict(metrics), "threads": torch.get_num_threads(), "compact_vs_masked_max_abs_diff": diff,
            "warnings": warnings}


class Scores(dict):
    """stage -> dev metrics of a method's model after that stage; scores("tuned", model, masks) evaluates
    (under the stopwatch's "evaluation") unless evaluation is off."""

    def __init__(self, task, watch: Stopwatch, config, enabled: bool = True):
        super().__init__()
        self.task, self.watch, self.config, self.enabled = task, watch, config, enabled

    def __call__(self, stage: str, model, masks: Masks | None = None) -> dict | None:
        if self.enabled:
            c = self.config
            with self.watch("evaluation"):
                self[stage] = evaluate_task(torch_predictor(model, c.device, masks), self.task, c.eval_batch_size,
                                            c.progress)
        return self.get(stage)


def check_compact(compact, model, masks: Masks, examples: list, device, warnings: Warnings) -> float:
    """Surgery's promise on the run's own examples: the compact model computes what the masked one did."""
    diff = compact_vs_masked(compact, model, masks, examples, device)
    if diff > MASKED_TOLERANCE:
        warnings.warn(f"the compact model differs from the masked model by {diff:.2e} on a dev batch")
    return diff


def run_settings(method: Method, teacher: str, model, task, budget: Budget, config, data: dict) -> dict:
    """What defines a run: a resume must match it (the device, progress bars and the checkpoint interval
    may change)."""
    settings = {k: v for k, v in asdict(config).items() if k not in FREE_ON_RESUME}
    return {"method": method.name, "teacher": str(teacher), "task": task.name, "data": data,
            "budget": budget.as_dict(), "settings": settings,
            "teacher_shape": [model.config.num_heads, model.config.ffn_dim, model.config.hidden_size]}


def check_speed_options(kernels: str | None, precision: str | None, device, model: str | None = None) -> None:
    """--kernels and --precision against this machine, before any model or data is loaded (the head
    dim comes from the model's config.json when `model` names one)."""
    if precision:
        check_precision(precision, device)
    if kernels == "triton" and model is not None:
        resolve_kernels(kernels, device, config_of(resolve(model)).head_dim)
    elif kernels:
        resolve_kernels(kernels, device)


def check_device(device: str):
    """cpu, or cuda where torch sees a GPU: before any model or data is loaded."""
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise PrunekitError(f"unknown --device {device!r} (cpu or cuda)") from e
    if kind not in ("cpu", "cuda"):
        raise PrunekitError(f"unknown --device {device!r} (cpu or cuda)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise PrunekitError("--device cuda, but torch sees no CUDA GPU here; use --device cpu")


def run(method: Method, teacher: str, task_name: str, output, budget: Budget, config=None, data: dict | None = None,
        overwrite: bool = False, resume: bool = False, command: str | None = None) -> dict:
    """The CLI's compress: check everything, load the teacher and the task, then run_loaded. data:
    load_task's keyword arguments; max_length None means the method's default for the task."""
    config = check_settings(method, budget, config, resume)
    if not task_name:
        raise PrunekitError("give --task")
    data = dict(data or {})
    inputs = (teacher, getattr(config, "student", None), budget.deployment.lut_cache, *data_inputs(data))
    check_output(output, inputs, overwrite, resume)
    warnings = Warnings()
    model, task, _ = load_teacher_and_task(teacher, task_name, data, method.name, method.max_length(task_name),
                                           warnings)
    source = {"teacher": str(teacher), "data": data, "max_length": data["max_length"],
              "command": command or " ".join(sys.argv)}
    return run_loaded(method, model, task, budget, config, source, output, inputs, overwrite, resume, warnings).report


def check_settings(method: Method, budget: Budget, config, resume: bool = False):
    """What is checked before anything is loaded: the settings (returned), the budget, a resume."""
    config = (config or method.config()).check()
    budget.check(method.budgets)
    if resume and not method.resumable:
        raise PrunekitError(f"--method {method.name} keeps no checkpoints: there is nothing to --resume")
    return config


def run_loaded(method: Method, model, task, budget: Budget, config, source: dict, output=None, inputs=(),
               overwrite: bool = False, resume: bool = False, warnings: Warnings | None = None) -> Compressed:
    """What `prunekit compress` and prunekit.compress share, once the teacher and the task are loaded: the
    checks that need them, the method run, and (with `output`) its result written at once. Returns the
    result with the whole of report.json as its report.
    source: how the run names its inputs in the report and a resume's settings: "teacher" (a name), "data"
    (what the task was read from), "max_length" (tokens per example), "command" (the call);
    without output: the method runs in memory (CoFi: in a temporary work directory) and nothing is written."""
    warnings = Warnings() if warnings is None else warnings
    budget.check_model(model.config, source["teacher"])
    begin(method.name, config, {}, budget, method.budgets, model, task, warnings)
    method.check(model, task, budget, config)  # all before an old output is replaced
    if hasattr(config, "max_length"):
        config.max_length = source["max_length"]

    def finished(result: Compressed) -> Compressed:
        result.model.config.finetuning_task = task.name
        return result._replace(report={"teacher": source["teacher"], "max_length": source["max_length"],
                                       "command": source["command"], **result.report})
    if output is None:
        return finished(method.compress(model, task, budget, config, warnings=warnings))
    with claim_output(output, inputs, overwrite, resume) as out:
        result = finished(run_method(method, out, model, task, budget, config, warnings, resume,
                                     run_settings(method, source["teacher"], model, task, budget, config,
                                                  source["data"])))
        if distributed.is_main():  # under torchrun every process computed the same result; rank 0 writes
            write_result(out, method, result, result.report)
        return result


def run_method(method: Method, out: Path, model, task, budget, config, warnings, resume: bool,
               settings: dict) -> Compressed:
    """The method's compress: in memory, or (a resumable method) with `out` as its work directory."""
    if not method.resumable:
        return method.compress(model, task, budget, config, warnings=warnings)
    with started(out, settings, resume):  # not a model until the finished one is swapped in
        return method.compress(model, task, budget, config, warnings=warnings, workdir=out, resume=resume)


def write_result(out: Path, method: Method, result: Compressed, report: dict) -> None:
    """The finished directory, built beside `out` and swapped in at once (replacing the work directory)."""
    with output_dir(out, overwrite=True) as tmp:
        result.model.save_pretrained(tmp)
        result.masks.save(tmp / "masks.safetensors")
        for name, work_file in method.logs.items():
            if (out / work_file).is_file():
                shutil.copy(out / work_file, tmp / name)
        write_json(tmp / "report.json", report)

"""prunekit.compress: both compression methods from Python, over the code `prunekit compress` runs.

    compact, report = prunekit.compress(model, train_data, eval_data, method="post-training", macs=0.5,
                                        distill_steps=1000)        # or method="cofi", target_sparsity=0.9

  model        a prunekit model, an HF Bert/Roberta/DistilBert/ElectraForSequenceClassification object, or a
               model directory or name (what --teacher takes)
  train_data,  a GLUE task name (eval_data None: its dev sets), data files, HF datasets / pandas tables with
  eval_data    named text and label columns, or DataLoaders of tokenised batches (prunekit.inputs)
  the budget   one of macs=, target_sparsity=, latency= (as the method takes them)
  settings     the method's settings by name (PostTrainConfig, CoFiConfig; a latency budget's Deployment)

The checks, the run and the files written are prunekit.harness.run_loaded's, which the CLI's compress
goes through too: the same one-line PrunekitErrors, and with output= the same directory (compact model,
masks.safetensors, report.json, the method's logs). Without output= nothing is written (CoFi keeps its
checkpoints in a temporary directory, removed after). The report is report.json's fields.
"""
import os
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from .budget import KINDS, Budget, Deployment
from .checkpoints import from_object, resolve
from .data import canonical_task
from .errors import PrunekitError
from .harness import check_device, check_settings, check_speed_options, run_loaded
from .inputs import user_task
from .io import check_output
from .methods import METHODS
from .progress import Warnings
from .teachers import load_teacher
from .tokenizer import load_tokenizer

BUDGET_ARGS = {"macs": "macs", "sparsity": "target_sparsity", "latency": "latency"}  # Budget kind -> keyword
FIXED = ("progress", "max_length")  # settings compress sets itself (its progress= and the data's length)


class Report(dict):
    """report.json's fields, as a dict (json.dumps writes report.json's content) and as attributes
    (report.macs_kept, report.dev_metrics)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the report has no field {name!r} (fields: {', '.join(self)})") from None

    def __dir__(self):
        return [*super().__dir__(), *self]


def compress(model, train_data, eval_data=None, *, method: str = "post-training",
             # the budget: one of these, among those the method takes, a fraction in (0, 1)
             macs: float | None = None, target_sparsity: float | None = None, latency: float | None = None,
             # the data (tables and files; a GLUE task name or DataLoaders need none of them)
             task: str | None = None, text_column: str | None = None, text_pair_column: str | None = None,
             label_column: str | None = None, label_list=None, max_length: int | None = None, glue_dir=None,
             tokenizer=None,
             # the run
             output=None, overwrite: bool = False, progress: bool = True, **settings):
    """Compress a fine-tuned classifier: (the compact model, its Report).

    task: the task's name (GLUE names bring their metrics and label names; default: the model's
    fine-tuning task, else "custom"); text_column / text_pair_column / label_column (default "label"):
    a table's columns; label_list: label names in id order, for string labels; max_length: tokens per
    example (default: the method's for the task, cut to the model's limit); glue_dir: for a GLUE task
    name (default $GLUE_DIR, else HF datasets); tokenizer: the teacher's, where the model object has none.
    output: a directory to write as `prunekit compress --output` does (overwrite: replace an earlier one);
    progress: the progress bars. settings: the method's settings by name (device, seed, distill_steps,
    prune_epochs, ...), and for a latency budget its deployment (latency_batch, latency_seq_len, ...)."""
    if method not in METHODS:
        raise PrunekitError(f"unknown method {method!r} ({', '.join(METHODS)})")
    m = METHODS[method]
    budget_values = {"macs": macs, "sparsity": target_sparsity, "latency": latency}
    config, deployment = split_settings(m, settings)
    budget = budget_of(m, budget_values, deployment)
    config = check_settings(m, budget, config)
    config.progress = progress
    check_device(config.device)
    path = model if isinstance(model, (str, os.PathLike)) else None
    check_speed_options(getattr(config, "kernels", None), getattr(config, "precision", None), config.device,
                        None if path is None else str(path))
    named = [x for x in (train_data, eval_data) if isinstance(x, (str, os.PathLike)) and Path(x).exists()]
    glue = (glue_dir or os.environ.get("GLUE_DIR")) if isinstance(train_data, str) and canonical_task(train_data) else None
    inputs = (None if path is None else resolve(str(path)), getattr(config, "student", None),
              budget.deployment.lut_cache, glue, *named)
    if output is not None:
        check_output(output, inputs, overwrite)
    warnings = Warnings()
    with bars(progress):
        teacher, name = load(model, tokenizer, m.name, warnings)
        task_, source = user_task(teacher, train_data, eval_data, task=task, text_column=text_column,
                                  text_pair_column=text_pair_column, label_column=label_column, label_list=label_list,
                                  max_length=max_length, glue_dir=glue_dir, default_length=m.max_length,
                                  model_name=name)
        given = dict(method=method, **{BUDGET_ARGS[k]: v for k, v in budget_values.items() if v is not None},
                     **settings)
        source.update(teacher=name, command=call_text(model, train_data, eval_data, given))
        result = run_loaded(m, teacher, task_, budget, config, source, output, inputs, overwrite, warnings=warnings)
    return result.model, Report(result.report)


def split_settings(method, settings: dict) -> tuple:
    """The method's settings (its config, built and not yet checked) and the deployment's; an unknown
    name is a PrunekitError listing the valid ones."""
    own = [f.name for f in fields(method.config) if f.name not in FIXED]
    deploy = [f.name for f in fields(Deployment)] if "latency" in method.budgets else []
    unknown = [k for k in settings if k not in own and k not in deploy]
    if unknown:
        verb = "is not a setting" if len(unknown) == 1 else "are not settings"
        raise PrunekitError(f"{', '.join(map(repr, unknown))} {verb} of method {method.name} (its settings: "
                            f"{', '.join(sorted(own + deploy))})")
    config = method.config(**{k: v for k, v in settings.items() if k in own})
    return config, Deployment(**{k: v for k, v in settings.items() if k in deploy})


def budget_of(method, values: dict, deployment: Deployment) -> Budget:
    """The one budget given among those the method takes (parser.budget_of's rule, by keyword)."""
    kinds = [k for k, v in values.items() if v is not None]
    if len(kinds) != 1 or kinds[0] not in method.budgets:
        raise PrunekitError(f"method {method.name} takes exactly one budget: " + ", ".join(
            f"{BUDGET_ARGS[k]}=F ({KINDS[k][1]})" for k in method.budgets) + ", F in (0, 1)")
    return Budget(kinds[0], values[kinds[0]], deployment)


def load(model, tokenizer, purpose: str, warnings: Warnings) -> tuple:
    """(the teacher as a prunekit model with a tokenizer where one is known, its name for the report)."""
    if isinstance(model, (str, os.PathLike)):
        teacher = load_teacher(str(model), purpose, warnings)
        name = str(model)
    else:
        teacher = from_object(model)
        name = teacher.config.name_or_path or f"a {type(model).__name__} object"
        if teacher is not model and tokenizer is None and Path(teacher.config.name_or_path or "").is_dir():
            tokenizer = load_tokenizer(teacher.config.name_or_path)  # the directory it came from
    if tokenizer is not None:
        teacher.tokenizer = tokenizer  # the compact model carries (and saves) it
    return teacher, name


def call_text(model, train_data, eval_data, given: dict) -> str:
    """The call, as report.json's "command" records it (objects by their type)."""
    shown = lambda x: repr(str(x)) if isinstance(x, (str, os.PathLike)) else f"<{type(x).__name__}>"  # noqa: E731
    args = [shown(model), shown(train_data)] + ([] if eval_data is None else [shown(eval_data)])
    return f"prunekit.compress({', '.join(args + [f'{k}={v!r}' for k, v in given.items()])})"


@contextmanager
def bars(progress: bool):
    """progress=False: transformers' own bars (a model's weights loading) off as well, for the call."""
    if progress:
        yield
        return
    from transformers.utils import logging as hf_logging
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()

"""A model and its task: dev-set scoring, the checks that a model fits a task, and the feeds other
verbs read from a task.

- evaluate(predict, examples, task_name): scores any `predict(batch) -> logits`, so the same code
  scores a PyTorch model, masked or not (torch_predictor), or an ONNX Runtime session (load_predictor).
- resolve_max_length / trained_labels / check_labels / set_task_labels: the tokens per example and
  the label names a model and a task must agree on.
- calibration_feeds: training examples of a task as ONNX Runtime feeds (static int8's calibration).
"""
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoints import load_model
from .data import Task, collate, load_task
from .errors import PrunekitError
from .metrics import compute_metrics
from .progress import bar_interval
from .tokenizer import require_tokenizer

DEFAULT_MAX_LENGTH = 128   # tokens per example: BERT's GLUE length (CoFi's too)
EVAL_BATCH_SIZE = 128      # evaluation batches in length order pad little, so they can be big
CALIBRATION_SAMPLES = 256  # static int8: training examples whose activations set the scales (min-max)


def torch_predictor(model, device="cpu", masks=None):
    """predict(batch) -> logits on the CPU, for a PyTorch model (in eval mode while it runs), under
    `masks` when given (the masked model)."""
    masks = None if masks is None else masks.to(device)

    def predict(batch):
        model.eval()
        with torch.no_grad():
            return model(**{k: v.to(device) for k, v in batch.items()}, masks=masks).logits.float().cpu()
    return predict


def evaluate(predict, examples, task_name: str, batch_size: int = EVAL_BATCH_SIZE, progress: bool = True) -> dict:
    """Run `predict` over `examples` and score the predictions with the task's GLUE metrics.

    predict gets input_ids, attention_mask and token_type_ids (no labels) and returns (B, C)
    logits, as a tensor or anything torch.as_tensor takes (an ORT output). Examples are batched in
    length order, which pads little, and the logits are put back in the examples' order.
    """
    if not examples:
        raise PrunekitError(f"{task_name}: no examples to evaluate")
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    logits = [None] * len(examples)
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=f"eval {task_name}", unit="batch", leave=False,
                          disable=not progress or len(order) <= batch_size, mininterval=bar_interval()):
            idx = order[start:start + batch_size]
            batch = collate([examples[i] for i in idx])
            batch.pop("labels", None)
            out = torch.as_tensor(predict(batch)).float()   # (B, C)
            for i, row in zip(idx, out):
                logits[i] = row
    labels = torch.tensor([e["label"] for e in examples])
    return compute_metrics(task_name, torch.stack(logits), labels)


def dev_suffix(name: str) -> str:
    """Key suffix for a secondary dev set's metrics: GLUE's '_mm' for MNLI mismatched."""
    return "_mm" if name == "dev_mismatched" else f"_{name}"


def evaluate_task(predict, task: Task, batch_size: int = EVAL_BATCH_SIZE, progress: bool = True) -> dict:
    """All dev sets of a task in one flat dict: the primary set's metrics under their own names,
    the others with a suffix (MNLI: accuracy = matched, accuracy_mm = mismatched)."""
    metrics = {}
    for i, (name, examples) in enumerate(task.dev_sets.items()):
        m = evaluate(predict, examples, task.name, batch_size, progress)
        metrics.update(m if i == 0 else {k + dev_suffix(name): v for k, v in m.items()})
    return metrics


def resolve_max_length(config, max_length, default: int = DEFAULT_MAX_LENGTH, model_name="the model") -> int:
    """The tokens per example: the one asked for, which must fit the model's position table (else an
    IndexError deep in the embedding), or the default, cut to what the model can take."""
    if max_length is None:
        return min(default, config.longest_sequence)
    if max_length > config.longest_sequence:
        raise PrunekitError(f"--max-length {max_length} is longer than {model_name} can take "
                            f"({config.longest_sequence} positions)")
    return max_length


def trained_labels(config) -> list | None:
    """The label names a model was trained with, or None while they are HF's placeholders (LABEL_0...)."""
    names = [config.id2label[i] for i in sorted(config.id2label)]
    return None if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


def check_labels(config, task: Task):
    """A model fits a task when it has as many outputs as the task has labels, with the same names."""
    if config.num_labels != task.num_labels:
        raise PrunekitError(f"the model has {config.num_labels} outputs but task {task.name} has {task.num_labels} "
                            "labels")
    names = trained_labels(config)
    if task.labels is not None and names is not None and names != task.labels:
        raise PrunekitError(f"the model was trained with labels {names} but task {task.name} has {task.labels}")


def set_task_labels(config, task: Task):
    """Write the task's label names and name into the model config, so they travel with the model."""
    check_labels(config, task)
    names = task.labels or ["score"]
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    config.finetuning_task = task.name


def load_text_model(model_name: str, why: str):
    """load_model for a verb that reads text: the model's own errors first, then missing tokenizer files
    as the one error (not the loader's warning about them followed by the error)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no tokenizer files")
        model = load_model(model_name)
    require_tokenizer(model.tokenizer, model_name, why)
    return model


def load_predictor(model_dir, device="cpu"):
    """What `prunekit eval` scores: (predict(batch) -> logits, tokenizer, config). A PyTorch model, or
    ONNX Runtime for a directory written by `prunekit export --onnx` (it holds model.onnx)."""
    if (Path(model_dir) / "model.onnx").is_file():
        from prunekit.export.runtime import onnx_predictor  # onnxruntime: heavy, and only for ONNX directories
        return onnx_predictor(model_dir, device)
    model = load_text_model(model_dir, "evaluation reads text").to(device)
    return torch_predictor(model, device), model.tokenizer, model.config


def task_for(config, tokenizer, task_name: str | None, model_name: str, with_train: bool = True, **data) -> Task:
    """The task a model is scored or calibrated on (default: the one it was fine-tuned on), tokenised
    for it, at a length it can take, with labels that fit it. data: load_task's keyword arguments."""
    task_name = task_name or getattr(config, "finetuning_task", None)
    if not task_name:
        raise PrunekitError(f"{model_name} does not say which task it was trained on: give --task")
    data["max_length"] = resolve_max_length(config, data.get("max_length"), model_name=model_name)
    task = load_task(task_name, tokenizer, with_train=with_train, labels=trained_labels(config), **data)
    check_labels(config, task)
    return task


def calibration_feeds(model, model_name: str, task: str | None, glue_dir: str | None,
                      samples: int = CALIBRATION_SAMPLES) -> list[dict]:
    """Static int8's calibration set: `samples` training examples of `task` (default: the model's own
    fine-tuning task), as ORT feed dicts of 16 examples each."""
    if not (task or getattr(model.config, "finetuning_task", None)):
        raise PrunekitError("--quantize int8-static calibrates on a task's training examples: give --task")
    data = task_for(model.config, model.tokenizer, task, model_name, glue_dir=glue_dir)
    g = torch.Generator().manual_seed(0)
    picked = [data.train[i] for i in torch.randperm(len(data.train), generator=g)[:samples].tolist()]
    feeds = []
    for i in range(0, len(picked), 16):
        batch = collate(picked[i:i + 16])
        feeds.append({k: batch[k].numpy().astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return feeds

"""The fine-tuned teacher a compression method starts from: loading it with its task, and the checks
both methods make (labels that match the data, a classifier that was trained, a dev metric above
chance)."""
import torch

from .checkpoints import BODY_PREFIX, HF_ARCHS, hf_key_map, read_config, read_weights, resolve
from .data import load_task
from .evaluation import DEFAULT_MAX_LENGTH, check_labels, load_text_model, resolve_max_length, trained_labels
from .progress import Warnings


def load_teacher_and_task(teacher: str, task_name: str, data: dict, purpose: str,
                          default_max_length: int = DEFAULT_MAX_LENGTH, warnings: Warnings | None = None):
    """(model, task, warnings): the teacher, and the task's data tokenised by its tokenizer with its
    label names. A label count or label names that differ from the data's are an error; an HF
    checkpoint without classifier weights (so not fine-tuned) is a warning.
    data["max_length"] is set to the length used (given, or the default cut to the model's limit)."""
    warnings = Warnings() if warnings is None else warnings
    model = load_teacher(teacher, purpose, warnings)
    return model, teacher_task(model, teacher, task_name, data, default_max_length), warnings


def load_teacher(teacher: str, purpose: str, warnings: Warnings):
    """The teacher model of a directory or name, with its tokenizer (else an error); an HF checkpoint
    without classifier weights is a warning."""
    path = resolve(teacher)
    arch = read_config(path).get("model_type")
    if arch in HF_ARCHS and hf_key_map(arch, 1)["classifier.weight"] not in {
            k.removeprefix(BODY_PREFIX[arch]) for k in read_weights(path)}:
        warnings.warn(f"{teacher} has no classifier weights: its classifier is freshly initialised, so it is not "
                      f"fine-tuned; {purpose} needs a fine-tuned teacher")
    return load_text_model(teacher, f"{purpose} reads the task's text")


def teacher_task(model, teacher: str, task_name: str, data: dict, default_max_length: int = DEFAULT_MAX_LENGTH):
    """load_task for a loaded teacher: its tokenizer, its label names, a length it can take (set in
    data["max_length"]); labels that do not fit it are an error."""
    data["max_length"] = resolve_max_length(model.config, data.get("max_length"), default_max_length, teacher)
    task = load_task(task_name, model.tokenizer, labels=trained_labels(model.config), **data)
    check_labels(model.config, task)
    return task


def warn_if_not_fine_tuned(task, metrics: dict, warnings: Warnings, purpose: str = "post-training pruning",
                           loud: bool = False):
    """A teacher at chance level on dev was probably never fine-tuned for this task (a user report
    on the post-training reference: a pre-trained checkpoint given as the teacher). loud: in capitals
    (hours of CoFi distillation from a teacher at chance teach nothing)."""
    message = None
    if task.is_regression:
        if not metrics.get("spearman", 0) > 0.1:
            message = (f"the teacher's dev spearman is {metrics.get('spearman', float('nan')):.3f}: is it fine-tuned "
                       f"on this task? {purpose} needs a fine-tuned teacher")
    else:
        counts = torch.bincount(torch.tensor([e["label"] for e in task.dev]), minlength=task.num_labels)
        majority = float(counts.max()) / len(task.dev)
        acc = metrics.get("accuracy")
        if acc is not None and acc <= majority + 0.02:
            message = (f"the teacher's dev accuracy {acc:.3f} is at chance (majority class {majority:.3f}): is it "
                       f"fine-tuned on this task? {purpose} needs a fine-tuned teacher")
    if message:
        warnings.warn(message.upper() if loud else message)

"""Fine-tuning and evaluation: the loop that makes a task teacher, and dev-set scoring.

- evaluate(predict, examples, task_name): scores any `predict(batch) -> logits`, so the same code
  scores a PyTorch model (torch_predictor) or, later, an ONNX Runtime session.
- Trainer: AdamW with linear warm-up and decay, gradient clipping, dev evaluation every
  `eval_every` steps (default: each epoch), the best model kept in the output directory
  (save_pretrained), and a resumable checkpoint in <output>/last. CoFi reuses it by overriding
  loss() and parameter_groups(); nothing here is global, so one Trainer per process can run under DDP.

Output directory of a run:
  config.json, model.safetensors, tokenizer files   the best model so far (by the task's main metric)
  metrics.json                                      best and final dev metrics, steps, wall time
  log.jsonl                                         one line per evaluation
  train_args.json                                   the settings of the run
  last/                                             resume checkpoint (removed when the run completes):
     model.safetensors, optimizer.safetensors, rng.safetensors, state.json (step, scheduler, best, history)

The batch order of epoch e depends only on (seed, e), and the dropout RNG is saved with each
checkpoint, so a resumed run on CPU ends with the same weights as an uninterrupted one.
"""
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .data import Task, batch_indices, collate
from .errors import PrunekitError
from .io import output_dir
from .metrics import compute_metrics, main_metric

LAST = "last"
# settings that must not change between a run and its resumption
RESUME_KEYS = ("epochs", "lr", "batch_size", "weight_decay", "warmup_ratio", "max_grad_norm", "seed", "max_steps",
               "group_by_length")


# ---------------------------------------------------------------------------------------------
# Evaluation


def bar_interval() -> float:
    """Seconds between progress-bar updates: live on a terminal, sparse in a log file (nohup)."""
    return 1 if sys.stderr.isatty() else 30


def torch_predictor(model, device="cpu"):
    """predict(batch) -> logits on the CPU, for a PyTorch model (in eval mode while it runs)."""
    def predict(batch):
        model.eval()
        return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
    return predict


def evaluate(predict, examples, task_name: str, batch_size: int = 128, progress: bool = True) -> dict:
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


def evaluate_task(predict, task: Task, batch_size: int = 128, progress: bool = True) -> dict:
    """All dev sets of a task in one flat dict: the primary set's metrics under their own names,
    the others with a suffix (MNLI: accuracy = matched, accuracy_mm = mismatched)."""
    metrics = {}
    for i, (name, examples) in enumerate(task.dev_sets.items()):
        m = evaluate(predict, examples, task.name, batch_size, progress)
        metrics.update(m if i == 0 else {k + dev_suffix(name): v for k, v in m.items()})
    return metrics


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainArgs:
    output: str
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    max_steps: int | None = None      # stop after this many steps (the schedule is fitted to it)
    eval_every: int | None = None     # steps between dev evaluations; None = once per epoch
    save_every: int | None = None     # steps between resume checkpoints; None = at each evaluation, at most 200
    eval_batch_size: int = 128
    group_by_length: bool = True
    device: str = "cpu"
    progress: bool = True


def linear_warmup_decay(warmup: int, total: int):
    """lr factor: 0 -> 1 over `warmup` steps, then 1 -> 0 at `total` (HF's linear schedule)."""
    def factor(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


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


class Trainer:
    """Fine-tunes `model` on `task.train`, scoring on `task.dev_sets`.

    Subclasses change what is learned by overriding loss() (e.g. distillation plus a sparsity
    penalty) and parameter_groups() (e.g. mask logits with their own learning rate).
    """

    def __init__(self, model, task: Task, args: TrainArgs):
        if not task.train:
            raise PrunekitError(f"{task.name}: no training examples")
        if not task.dev_sets:
            raise PrunekitError(f"{task.name}: no dev set to evaluate on")
        counts = (args.batch_size, args.max_steps, args.eval_every, args.save_every, args.eval_batch_size)
        if args.lr <= 0 or args.epochs <= 0 or any(n is not None and n < 1 for n in counts):
            raise PrunekitError("learning rate, epochs, batch sizes, max steps, eval and save intervals "
                                "must be positive")
        self.model, self.task, self.args = model.to(args.device), task, args
        set_task_labels(model.config, task)
        self.out = Path(args.output)
        self.metric = main_metric(task.name)
        self.steps_per_epoch = math.ceil(len(task.train) / args.batch_size)
        self.total_steps = math.ceil(args.epochs * self.steps_per_epoch)
        if args.max_steps is not None:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.eval_every = args.eval_every or self.steps_per_epoch
        self.save_every = args.save_every or min(self.eval_every, 200)  # an interruption loses minutes, not an epoch
        # fused: one kernel for all parameters; on CPU it cuts the optimiser's share of a step ~4x (92 -> 25 ms)
        self.optimizer = torch.optim.AdamW(self.parameter_groups(), lr=args.lr, fused=True)
        warmup = round(args.warmup_ratio * self.total_steps)
        schedule = linear_warmup_decay(warmup, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.step = 0
        self.best = None          # {"step", metrics...} of the best evaluation so far
        self.history = []         # one dict per evaluation
        self.losses = []          # training losses since the last evaluation
        self.train_seconds = 0.0

    # -- what is learned (override these) -------------------------------------------------------
    def loss(self, batch) -> torch.Tensor:
        """The training loss of one batch."""
        return self.model(**batch).loss

    def parameter_groups(self) -> list[dict]:
        """No weight decay on biases and LayerNorm weights (the BERT recipe)."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if name.endswith("bias") or ".norm." in name else decay).append(p)
        return [{"params": decay, "weight_decay": self.args.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self, batch) -> float:
        """One optimisation step on one batch; returns the loss."""
        loss = self.loss(batch)
        if not torch.isfinite(loss):
            raise PrunekitError(f"loss became {loss.item()} at step {self.step + 1}; try a lower --lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def fit(self, resume: bool = False) -> dict:
        """Train to the end (or resume from <output>/last), then return the metrics summary."""
        a = self.args
        if resume:
            self.load_checkpoint()
        else:
            torch.manual_seed(a.seed)  # dropout
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "train_args.json", {**asdict(a), "task": self.task.name,
                                                      "total_steps": self.total_steps,
                                                      "train_examples": len(self.task.train)})
            (self.out / "log.jsonl").write_text("")
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"finetune {self.task.name}", unit="step",
                   disable=not a.progress, mininterval=bar_interval())
        started = time.perf_counter()
        while self.step < self.total_steps:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            plan = batch_indices(self.task.train, a.batch_size, shuffle=True, seed=a.seed + epoch,
                                 group_by_length=a.group_by_length)
            for idx in plan[skip:]:
                batch = {k: v.to(a.device) for k, v in collate([self.task.train[i] for i in idx]).items()}
                self.losses.append(self.train_step(batch))
                self.step += 1
                recent = self.losses[-50:]
                bar.update(1)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                refresh=False)
                done = self.step >= self.total_steps
                if self.step % self.eval_every == 0 or done:
                    self.train_seconds += time.perf_counter() - started
                    self.evaluate_and_keep_best(bar)
                    started = time.perf_counter()
                if self.step % self.save_every == 0 and not done:
                    self.train_seconds += time.perf_counter() - started
                    self.save_checkpoint()
                    started = time.perf_counter()
                if done:
                    break
        bar.close()
        summary = {"task": self.task.name, "main_metric": self.metric, "best": self.best,
                   "final": self.history[-1] if self.history else None, "steps": self.step,
                   "epochs": self.step / self.steps_per_epoch, "train_seconds": round(self.train_seconds, 1),
                   "seconds_per_step": round(self.train_seconds / max(1, self.step), 4)}
        write_json(self.out / "metrics.json", summary)
        shutil.rmtree(self.out / LAST, ignore_errors=True)  # the run is complete; nothing left to resume
        return summary

    def evaluate(self) -> dict:
        predict = torch_predictor(self.model, self.args.device)
        metrics = evaluate_task(predict, self.task, self.args.eval_batch_size, self.args.progress)
        self.model.train()
        return metrics

    def evaluate_and_keep_best(self, bar=None):
        train_loss = sum(self.losses) / len(self.losses)
        self.losses = []
        record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3),
                  "train_loss": round(train_loss, 5), **self.evaluate()}
        self.history.append(record)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        improved = self.best is None or record[self.metric] > self.best[self.metric]
        if improved:
            self.best = record
            self.model.save_pretrained(self.out)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("step", "epoch"))
        (bar.write if bar is not None else print)(f"step {self.step}: {shown}{'  (best)' if improved else ''}")

    # -- resumable checkpoint ----------------------------------------------------------------
    def save_checkpoint(self):
        """<output>/last: weights, optimizer moments, RNG and loop state; built beside it, then swapped in."""
        opt = self.optimizer.state_dict()
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        with output_dir(self.out / LAST, overwrite=True) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()},
                      str(tmp / "model.safetensors"))
            save_file({f"{i}.{k}": v.contiguous().cpu() for i, s in opt["state"].items() for k, v in s.items()},
                      str(tmp / "optimizer.safetensors"))
            save_file(rng, str(tmp / "rng.safetensors"))
            write_json(tmp / "state.json", {
                "step": self.step, "best": self.best, "history": self.history, "losses": self.losses,
                "train_seconds": self.train_seconds,
                "param_groups": opt["param_groups"], "scheduler": self.scheduler.state_dict(),
                "args": {k: getattr(self.args, k) for k in RESUME_KEYS}, "total_steps": self.total_steps})

    def load_checkpoint(self):
        last = self.out / LAST
        if not (last / "state.json").is_file():
            raise PrunekitError(f"nothing to resume in {self.out}: no {LAST}/ checkpoint (a finished run removes it)")
        state = json.loads((last / "state.json").read_text())
        changed = [f"{k} {state['args'][k]} then, {getattr(self.args, k)} now" for k in RESUME_KEYS
                   if state["args"].get(k) != getattr(self.args, k)]
        if changed or state["total_steps"] != self.total_steps:
            raise PrunekitError(f"cannot resume {self.out} with different settings: "
                                f"{'; '.join(changed) or 'a different number of training examples'}")
        self.model.load_state_dict(load_file(str(last / "model.safetensors"), device=str(self.args.device)))
        moments = load_file(str(last / "optimizer.safetensors"), device=str(self.args.device))
        opt_state = {}
        for key, t in moments.items():
            i, name = key.split(".", 1)
            opt_state.setdefault(int(i), {})[name] = t
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.scheduler.load_state_dict(state["scheduler"])
        rng = load_file(str(last / "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and "cuda0" in rng:
            torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count())])
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.losses = state["losses"]
        self.train_seconds = state["train_seconds"]
        with open(self.out / "log.jsonl", "w") as f:  # drop evaluations made after this checkpoint
            f.writelines(json.dumps(r) + "\n" for r in self.history)


def write_json(path: Path, obj):
    """Write JSON through a temp file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def prepare_output(output, resume: bool, overwrite: bool) -> Path:
    """Refuse to clobber an existing run unless asked; clear it when asked (only if it looks like one)."""
    out = Path(output)
    if resume and overwrite:
        raise PrunekitError("--resume and --overwrite contradict each other")
    if resume or not out.exists():
        return out
    if not out.is_dir():
        raise PrunekitError(f"--output {out} is a file")
    if not any(out.iterdir()):
        return out
    if not overwrite:
        raise PrunekitError(f"--output {out} already exists (use --overwrite to replace it, or --resume to continue)")
    marks = ("train_args.json", "config.json", LAST)
    if not any((out / m).exists() for m in marks):
        raise PrunekitError(f"refusing to overwrite {out}: it does not look like a prunekit run "
                            f"(none of {', '.join(marks)})")
    shutil.rmtree(out)
    return out


def finetune(model_name: str, task_name: str, args: TrainArgs, resume: bool = False, overwrite: bool = False,
             **data) -> dict:
    """`prunekit finetune`: load a model and a task, train, keep the best model in args.output.

    data: load_task's keyword arguments (glue_dir, max_length, train_file, dev_file, text_columns,
    label_column, max_train_samples).
    """
    from .checkpoints import load_model, load_tokenizer, resolve
    from .data import load_task
    prepare_output(args.output, resume, overwrite)
    tokenizer = load_tokenizer(resolve(model_name))
    if tokenizer is None:
        raise PrunekitError(f"{model_name} has no tokenizer files (vocab.txt / tokenizer.json)")
    task = load_task(task_name, tokenizer, **data)
    torch.manual_seed(args.seed)  # a fresh classifier head starts the same way for a given seed
    model = load_model(model_name, num_labels=task.num_labels)
    return Trainer(model, task, args).fit(resume=resume)

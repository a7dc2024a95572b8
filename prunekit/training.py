"""Fine-tuning: the loop that makes a task teacher, and that distillation (prunekit.distill) and CoFi
build on.

Trainer: AdamW with linear warm-up and decay (transformers' schedule), gradient clipping, dev
evaluation every `eval_every` steps (default: each epoch), the best model kept, and a resumable
checkpoint in <output>/last. A subclass changes what is learned through loss() or train_step(),
trainable() (what the model optimiser owns), optimizers() and step_optimizers(), evaluate(),
eligible(), and the hooks for what a checkpoint holds (checkpoint_module(), extra_state(),
snapshot_best() / write_best() / read_best()). Under torchrun each process trains on its share of
every batch (prunekit.distributed). With output=None nothing is written: the kept state stays in
memory (best_state).

Output directory of a run:
  config.json, model.safetensors, tokenizer files   the best model (by the task's main metric), written
                                                    at the end (and into last/best with each checkpoint)
  metrics.json                                      best and final dev metrics, steps, wall time
  log.jsonl                                         one line per evaluation
  train_args.json                                   the settings of the run
  INCOMPLETE                                        while the run is under way (it is not a model yet)
  last/                                             resume checkpoint (removed when the run completes):
     model.safetensors, optimizer-<name>.safetensors, rng.safetensors, best/,
     state.json (step, schedulers, best, history, a subclass's extra state)

The batch order of epoch e depends only on (seed, e), and the dropout RNG is saved with each
checkpoint (every process's), so a resumed run on CPU ends with the same weights as an
uninterrupted one.
"""
import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from . import distributed
from .checkpoints import config_of, load_model, resolve
from .data import Task, batch_indices, collate, load_task
from .errors import PrunekitError
from .evaluation import EVAL_BATCH_SIZE, evaluate_task, resolve_max_length, set_task_labels, torch_predictor
from .io import INCOMPLETE, check_output, output_dir, write_json
from .machine import keep_freed_memory
from .metrics import main_metric
from .model import KERNELS
from .options import COUNT, RATE, SEED, Range, check_options, option
from .progress import bar_interval
from .rundir import claim_output, data_inputs, mark_incomplete, started
from .timing import Stopwatch
from .tokenizer import load_tokenizer, require_tokenizer

LAST = "last"
SAVE_EVERY_CAP = 200   # steps between resume checkpoints at most: an interruption loses minutes, not an epoch
PRECISIONS = ("fp32", "bf16")
# settings that must not change between a run and its resumption
RESUME_KEYS = ("epochs", "lr", "batch_size", "weight_decay", "warmup_ratio", "max_grad_norm", "seed", "max_steps",
               "group_by_length")


def kernels_option():
    """The --kernels option of every settings class that runs the model for gradients."""
    return option("torch", "attention / FFN implementation for training (and post-training's Fisher pass): torch "
                  "(exact eager), sdpa (PyTorch's fused attention), triton (fused kernels, CUDA), auto (triton on "
                  "CUDA, torch elsewhere; on the CPU the fast path is bf16 precision)",
                  choices=KERNELS)  # the exact eager path, the one every exactness test uses


@dataclass
class TrainArgs:
    """Fine-tuning settings; `prunekit finetune`'s options are generated from these fields."""
    output: str | None                # run directory (the best model, metrics, logs, resume checkpoint); None: none
    # Basic
    epochs: float = option(3.0, "epochs", range=Range(0, 10**4, low_open=True))  # BERT's GLUE recipe: 2-4
    lr: float = option(5e-5, "peak learning rate", range=RATE)  # the top of BERT's {2,3,5}e-5 grid
    batch_size: int = option(32, "batch size", range=Range(1, 10**5))  # BERT's GLUE batch size
    seed: int = option(42, "batch order, dropout and a fresh classifier's init", range=SEED)
    max_steps: int | None = option(None, "stop after this many steps (quick runs; the schedule is fitted to it)",
                                   range=Range(1, 10**9))
    # Advanced
    weight_decay: float = option(0.01, "AdamW weight decay, off for biases and LayerNorm",
                                 range=Range(0, 10))  # BERT's
    warmup_ratio: float = option(0.1, "share of steps with linear warm-up, then linear decay",
                                 range=Range(0, 1, high_open=True))  # BERT's
    max_grad_norm: float = option(1.0, "gradient clipping", range=Range(0), flag=False)  # as HF's Trainer
    eval_every: int | None = option(None, "steps between dev evaluations", range=COUNT, default_text="once per epoch")
    save_every: int | None = option(None, "steps between resume checkpoints", range=COUNT,
                                    default_text=f"at each evaluation, at most {SAVE_EVERY_CAP}")
    eval_batch_size: int = option(EVAL_BATCH_SIZE, "evaluation batch", range=COUNT, flag=False)
    group_by_length: bool = option(True, "plain shuffled batches (slower: more padding)",
                                   flag="--no-group-by-length")  # similar lengths: far less padding
    kernels: str = kernels_option()
    precision: str = option("fp32", "bf16: forward passes under bfloat16 autocast with fp32 master weights (fast "
                            "where the CPU or GPU has native bf16)", choices=PRECISIONS)  # exact by default
    device: str = "cpu"
    progress: bool = True             # tqdm bars


class Trainer:
    """Fine-tunes `model` on `task.train`, scoring on `task.dev_sets`.

    Subclasses change what is learned by overriding loss() or train_step() (distillation; CoFi adds the
    Lagrangian and two more optimisers) and trainable() (which weights the model optimiser owns).
    """

    name = "finetune"  # what the progress bar says

    def __init__(self, model, task: Task, args: TrainArgs):
        if not task.train:
            raise PrunekitError(f"{task.name}: no training examples")
        if not task.dev_sets:
            raise PrunekitError(f"{task.name}: no dev set to evaluate on")
        check_options(args)
        if args.batch_size < distributed.world_size():
            raise PrunekitError(f"--batch-size {args.batch_size} is smaller than the {distributed.world_size()} "
                                "processes: every process needs examples of each (global) batch")
        keep_freed_memory()  # every step reallocates the same big buffers: no page faults for them
        self.model, self.task, self.args = model.to(args.device), task, args
        model.set_kernels(args.kernels)
        self.net = model  # what the training forward calls: the model, or its DDP wrapper under torchrun
        if distributed.world_size() > 1:
            self.net = DistributedDataParallel(model, device_ids=None if args.device == "cpu" else [args.device])
        set_task_labels(model.config, task)
        self.out = None if args.output is None else Path(args.output)
        self.metric = main_metric(task.name)
        self.steps_per_epoch = math.ceil(len(task.train) / args.batch_size)
        self.total_steps = math.ceil(args.epochs * self.steps_per_epoch)
        if args.max_steps is not None:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.eval_every = args.eval_every or self.steps_per_epoch
        self.save_every = args.save_every or min(self.eval_every, SAVE_EVERY_CAP)
        # fused: one kernel for all parameters, much cheaper on CPU
        self.optimizer = torch.optim.AdamW(self.parameter_groups(), lr=args.lr, fused=True)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, round(args.warmup_ratio * self.total_steps),
                                                         self.total_steps)
        self.step = 0
        self.best = None          # {"step", metrics...} of the best evaluation so far
        self.history = []         # one dict per evaluation
        self.losses = []          # training losses since the last evaluation
        self.watch = Stopwatch()  # "train": the optimisation steps only (no evaluation, no checkpoints)
        self.best_state = None    # the kept state (snapshot_best), written with checkpoints and at the end
        self.train_seconds_before = 0.0  # training time of the run before a resume

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (rank 0, and only with an output directory)."""
        return self.out is not None and distributed.is_main()

    # -- what is learned (override these) -------------------------------------------------------
    def loss(self, batch) -> torch.Tensor:
        """The training loss of one batch."""
        return self.net(**batch).loss

    def trainable(self):
        """(name, parameter) of the weights the model optimiser updates: the model's trainable ones."""
        return ((name, p) for name, p in self.model.named_parameters() if p.requires_grad)

    def parameter_groups(self) -> list[dict]:
        """No weight decay on biases and LayerNorm weights (the BERT recipe)."""
        decay, no_decay = [], []
        for name, p in self.trainable():
            (no_decay if name.endswith("bias") or ".norm." in name else decay).append(p)
        return [{"params": decay, "weight_decay": self.args.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def optimizers(self) -> dict:
        """name -> (optimizer, scheduler or None): what a checkpoint saves and a resume restores."""
        return {"model": (self.optimizer, self.scheduler)}

    def checkpoint_module(self) -> torch.nn.Module:
        """The module whose state_dict a checkpoint holds (a subclass may add gates, projections...)."""
        return self.model

    def extra_state(self) -> dict:
        """JSON-able loop state a subclass keeps in the checkpoint (restored by load_extra_state)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def postfix(self) -> dict:
        """What the progress bar shows besides the step count."""
        recent = self.losses[-50:]
        return {"loss": f"{sum(recent) / len(recent):.4f}", "lr": f"{self.scheduler.get_last_lr()[0]:.2e}"}

    @property
    def train_seconds(self) -> float:
        return self.train_seconds_before + self.watch.seconds.get("train", 0.0)

    # -- the loop ------------------------------------------------------------------------------
    def autocast(self):
        """The forward's precision context: bf16 autocast for precision="bf16", else a no-op."""
        return torch.autocast(torch.device(self.args.device).type, dtype=torch.bfloat16,
                              enabled=self.args.precision == "bf16")

    def train_step(self, batch) -> float:
        """One optimisation step on one batch; returns the loss."""
        with self.autocast():
            loss = self.loss(batch)
        return self.optimise(loss)

    def optimise(self, loss: torch.Tensor) -> float:
        """Backward, clip, step every optimiser, clear the gradients; returns the loss."""
        if not torch.isfinite(loss):
            raise PrunekitError(f"loss became {loss.item()} at step {self.step + 1}; try a lower --lr")
        loss.backward()  # under DDP the weight gradients are averaged over the processes here
        self.after_backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable()], self.args.max_grad_norm)
        self.step_optimizers()
        for opt, _ in self.optimizers().values():
            opt.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)  # frozen weights may still hold a gradient
        return loss.item()

    def after_backward(self) -> None:
        """Between backward and clipping (a subclass averages what DDP does not own)."""

    def step_optimizers(self) -> None:
        self.optimizer.step()
        self.scheduler.step()

    def fit(self, resume: bool = False) -> dict:
        """Train to the end (or resume from <output>/last), then return the metrics summary."""
        a = self.args
        self.start(resume)
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.name} {self.task.name}", unit="step",
                   disable=not a.progress or not distributed.is_main(), mininterval=bar_interval())
        while self.step < self.total_steps:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            plan = batch_indices(self.task.train, a.batch_size, shuffle=True, seed=a.seed + epoch,
                                 group_by_length=a.group_by_length)
            for idx in plan[skip:]:
                idx = distributed.shard(idx)  # this process's share of the global batch
                batch = {k: v.to(a.device) for k, v in collate([self.task.train[i] for i in idx]).items()}
                with self.watch("train"):
                    self.losses.append(distributed.mean(self.train_step(batch)))
                self.step += 1
                bar.update(1)
                bar.set_postfix(self.postfix(), refresh=False)
                done = self.step >= self.total_steps
                if self.step % self.eval_every == 0 or done:
                    self.evaluate_and_keep_best(bar)
                if self.step % self.save_every == 0 and not done:
                    self.save_checkpoint()
                if done:
                    break
        bar.close()
        return self.finish()

    def start(self, resume: bool) -> None:
        """Restore the checkpoint of a resumed run, or start a fresh one (and its run directory)."""
        a = self.args
        if resume and self.out is not None and not (self.out / LAST / "state.json").is_file() \
                and (self.out / INCOMPLETE).is_file():
            print(f"{self.out}: interrupted before its first checkpoint; starting again from step 0", file=sys.stderr)
            resume = False
        if resume:
            self.load_checkpoint()
        else:
            torch.manual_seed(a.seed + distributed.rank())  # dropout (each process its own masks)
            if self.writes:
                self.out.mkdir(parents=True, exist_ok=True)
                write_json(self.out / "train_args.json", {**asdict(a), "task": self.task.name,
                                                          "total_steps": self.total_steps,
                                                          "train_examples": len(self.task.train),
                                                          "processes": distributed.world_size()})
                (self.out / "log.jsonl").write_text("")
        if self.writes:
            mark_incomplete(self.out)

    def finish(self) -> dict:
        """The metrics summary; the kept model and the summary written, the checkpoint and the INCOMPLETE
        mark removed (the mark last)."""
        summary = {"task": self.task.name, "main_metric": self.metric, "best": self.best,
                   "final": self.history[-1] if self.history else None, "steps": self.step,
                   "epochs": self.step / self.steps_per_epoch, "train_seconds": round(self.train_seconds, 1),
                   "seconds_per_step": round(self.train_seconds / max(1, self.step), 4)}
        if self.writes:
            if self.best_state is not None:
                self.write_best(self.out, self.best_state)
            write_json(self.out / "metrics.json", summary)
            shutil.rmtree(self.out / LAST, ignore_errors=True)  # the run is complete; nothing left to resume
            (self.out / INCOMPLETE).unlink(missing_ok=True)
        distributed.barrier()
        return summary

    def evaluate(self) -> dict:
        predict = torch_predictor(self.model, self.args.device)
        metrics = evaluate_task(predict, self.task, self.args.eval_batch_size, self.args.progress)
        self.model.train()
        return metrics

    def eligible(self, record: dict) -> bool:
        """Whether this evaluation may become the kept model (CoFi: only once near its target size)."""
        return True

    # The kept (best) state is held in memory and reaches the disk with each checkpoint (last/best) and
    # at the end of the run: so what is on disk always belongs to the checkpoint a resume starts from.
    def snapshot_best(self) -> dict:
        """The kept state, as CPU tensors (the model's weights; CoFi adds its gates)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def write_best(self, directory: Path, snapshot: dict):
        """Write a kept state where a user finds it: the model, by save_pretrained."""
        with torch.random.fork_rng(devices=[]):  # building a model draws initial weights: not from the run's stream
            model = type(self.model)(self.model.config)
        model.load_state_dict(snapshot)
        model.tokenizer = self.model.tokenizer
        model.save_pretrained(directory)

    def read_best(self, directory: Path) -> dict:
        return load_file(str(directory / "model.safetensors"))

    def evaluate_and_keep_best(self, bar=None):
        train_loss = sum(self.losses) / len(self.losses)
        self.losses = []
        record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3),
                  "train_loss": round(train_loss, 5), **self.evaluate()}
        self.history.append(record)
        improved = self.eligible(record) and (self.best is None or record[self.metric] > self.best[self.metric])
        if improved:
            self.best = record
            self.best_state = self.snapshot_best()
        if not distributed.is_main():
            return
        if self.writes:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                          if k not in ("step", "epoch"))
        if self.args.progress:  # off: quiet (log.jsonl, where written, keeps every evaluation)
            (bar.write if bar is not None else print)(f"step {self.step}: {shown}{'  (best)' if improved else ''}")

    # -- resumable checkpoint ----------------------------------------------------------------
    def save_checkpoint(self):
        """<output>/last: weights, optimizer moments, RNG and loop state; built beside it, then swapped in
        (by rank 0 under torchrun: every process holds the same weights and optimiser state)."""
        if self.out is None:
            return
        states = distributed.gather_state(torch.get_rng_state())  # each process's dropout stream
        if not distributed.is_main():
            distributed.barrier()
            return
        rng = {"torch": torch.get_rng_state(), **{f"torch.rank{r}": s for r, s in enumerate(states)}}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        groups, schedulers = {}, {}
        with output_dir(self.out / LAST, overwrite=True) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.checkpoint_module().state_dict().items()},
                      str(tmp / "model.safetensors"))
            for name, (opt, sched) in self.optimizers().items():
                state = opt.state_dict()
                save_file({f"{i}.{k}": torch.as_tensor(v).contiguous().cpu()
                           for i, s in state["state"].items() for k, v in s.items()},
                          str(tmp / f"optimizer-{name}.safetensors"))
                groups[name] = state["param_groups"]
                schedulers[name] = None if sched is None else sched.state_dict()
            save_file(rng, str(tmp / "rng.safetensors"))
            if self.best_state is not None:
                self.write_best(tmp / "best", self.best_state)
            write_json(tmp / "state.json", {
                "step": self.step, "best": self.best, "history": self.history, "losses": self.losses,
                "train_seconds": self.train_seconds, "param_groups": groups, "schedulers": schedulers,
                "extra": self.extra_state(),
                "args": {k: getattr(self.args, k) for k in RESUME_KEYS}, "total_steps": self.total_steps})
        distributed.barrier()

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
        self.checkpoint_module().load_state_dict(load_file(str(last / "model.safetensors"), device=str(self.args.device)))
        for name, (opt, sched) in self.optimizers().items():
            opt_state = {}
            for key, t in load_file(str(last / f"optimizer-{name}.safetensors"), device=str(self.args.device)).items():
                i, k = key.split(".", 1)
                opt_state.setdefault(int(i), {})[k] = t
            opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"][name]})
            if sched is not None:
                sched.load_state_dict(state["schedulers"][name])
        rng = load_file(str(last / "rng.safetensors"))
        torch.set_rng_state(rng.get(f"torch.rank{distributed.rank()}", rng["torch"]))
        if torch.cuda.is_available() and "cuda0" in rng:
            torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count())])
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.best_state = self.read_best(last / "best") if (last / "best").is_dir() else None
        self.losses = state["losses"]
        self.train_seconds_before = state["train_seconds"]
        self.load_extra_state(state["extra"])
        with open(self.out / "log.jsonl", "w") as f:  # drop evaluations made after this checkpoint
            f.writelines(json.dumps(r) + "\n" for r in self.history)


def finetune(model_name: str, task_name: str, args: TrainArgs, resume: bool = False, overwrite: bool = False,
             **data) -> dict:
    """`prunekit finetune`: load a model and a task, train, keep the best model in args.output.

    Everything is checked (output, model, tokenizer, task and data) before an old run in args.output
    is replaced. data: load_task's keyword arguments (glue_dir, max_length, train_file, dev_file,
    text_columns, label_column, max_train_samples).
    """
    check_options(args)
    inputs = (model_name, *data_inputs(data))
    check_output(args.output, inputs, overwrite, resume)
    path = resolve(model_name)
    data = {**data, "max_length": resolve_max_length(config_of(path), data.get("max_length"), model_name=model_name)}
    tokenizer = require_tokenizer(load_tokenizer(path), model_name, "fine-tuning reads text")
    task = load_task(task_name, tokenizer, **data)
    settings = {"model": str(model_name), "task": task.name, **data}
    with claim_output(args.output, inputs, overwrite, resume) as out, started(out, settings, resume):
        torch.manual_seed(args.seed)  # a fresh classifier head starts the same way for a given seed
        model = load_model(model_name, num_labels=task.num_labels)
        return Trainer(model, task, args).fit(resume=resume)

"""The `prunekit` command. Each verb parses and validates its arguments, calls an importable
function that does the work, and reports. Bad input ends with one line on stderr and exit code 2."""
import argparse
import json
import math
import os
import shlex
import sys
import warnings
from dataclasses import fields
from pathlib import Path


def defaults(cls) -> dict:
    """field name -> default of a settings dataclass (TrainArgs, PostTrainConfig, ...): the CLI
    declares no default of its own."""
    return {f.name: f.default for f in fields(cls)}


def cmd_info(args):
    from .checkpoints import load_model
    from .cost import cost_report, format_report
    model = load_model(args.model)
    report = cost_report(model.config, seq_len=args.seq_len)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report, args.model))


def cmd_prune(args):
    from .checkpoints import load_model
    from .cost import cost_report, format_report
    from .io import check_output_path, output_dir
    from .masks import Masks
    from .surgery import prune
    check_output_path(args.output, args.model)
    model = load_model(args.model)
    masks = Masks.load(args.masks, model.config)
    compact = prune(model, masks)
    with output_dir(args.output, args.overwrite) as tmp:
        compact.save_pretrained(tmp)
    print(format_report(cost_report(compact.config, seq_len=args.seq_len, reference=model.config), args.output))


def cmd_finetune(args):
    from .training import TrainArgs, finetune
    set_threads(args)
    train_args = TrainArgs(output=args.output, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                           weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, seed=args.seed,
                           max_steps=args.max_steps, eval_every=args.eval_every, save_every=args.save_every,
                           group_by_length=not args.no_group_by_length, device=args.device,
                           kernels=args.kernels, precision=args.precision)
    check_device(args.device)
    from .model import check_speed_options
    check_speed_options(args.kernels, args.precision, args.device, args.model)
    from .io import check_output_path
    check_output_path(args.output, args.model)
    summary = finetune(args.model, args.task, train_args, resume=args.resume, overwrite=args.overwrite,
                       **data_args(args), max_train_samples=args.max_train_samples)
    best, metric = summary["best"], summary["main_metric"]
    from .distributed import is_main
    if is_main():
        print(f"best {metric} {best[metric]:.4f} at step {best['step']} of {summary['steps']}; model in "
              f"{args.output} ({summary['train_seconds']:.0f} s training, {summary['seconds_per_step']:.3f} s/step)")


def load_predictor(model_dir, device="cpu"):
    """What `prunekit eval` scores: (predict(batch) -> logits, tokenizer, config). A PyTorch model, or
    ONNX Runtime for a directory written by `prunekit export --onnx` (it holds model.onnx)."""
    if (Path(model_dir) / "model.onnx").is_file():
        from prunekit.export.runtime import onnx_predictor
        return onnx_predictor(model_dir, device)
    from .checkpoints import load_model
    from .tokenizer import require_tokenizer
    from .training import torch_predictor
    model = load_model(model_dir).to(device)
    require_tokenizer(model.tokenizer, model_dir, "evaluation reads text")
    return torch_predictor(model, device), model.tokenizer, model.config


def cmd_eval(args):
    import time
    from .data import load_task
    from .errors import PrunekitError
    from .io import write_json
    from .training import check_labels, evaluate_task, resolve_max_length, trained_labels
    set_threads(args)
    check_device(args.device)
    if args.output and Path(args.output).is_dir():
        raise PrunekitError(f"--output {args.output} is a directory; it names the JSON file to write")
    if args.output and Path(args.output).exists() and not args.overwrite:
        raise PrunekitError(f"--output {args.output} already exists; pass --overwrite to replace it")
    if args.output:
        from .io import check_output_path
        check_output_path(args.output)
    if args.batch_size < 1:
        raise PrunekitError(f"--batch-size must be >= 1, got {args.batch_size}")
    predict, tokenizer, config = load_predictor(args.model, args.device)
    data = {**data_args(args), "max_length": resolve_max_length(config, args.max_length, model_name=args.model)}
    task_name = args.task or getattr(config, "finetuning_task", None)
    if not task_name:
        raise PrunekitError(f"{args.model} does not say which task it was trained on: give --task")
    task = load_task(task_name, tokenizer, with_train=False, labels=trained_labels(config), **data)
    check_labels(config, task)
    start = time.perf_counter()
    metrics = evaluate_task(predict, task, args.batch_size)
    seconds = time.perf_counter() - start
    sizes = ", ".join(f"{name} {len(ex)}" for name, ex in task.dev_sets.items())
    print(f"{task.name} ({sizes} examples): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if args.output:
        write_json(Path(args.output), {"model": str(args.model), "task": task.name, "metrics": metrics,
                                       "examples": {n: len(ex) for n, ex in task.dev_sets.items()},
                                       "seconds": round(seconds, 2)})
        print(f"metrics written to {args.output}")


def cmd_export(args):
    from .checkpoints import load_model
    from .errors import PrunekitError
    if not args.onnx:
        raise PrunekitError("name the format: --onnx (the only one so far)")
    from prunekit.export.onnx_export import check_output_dir, check_request, export_onnx
    check_request(args.opset, args.quantize, args.fp16, args.device)  # before the model is loaded
    from .io import check_output_path
    check_output_path(args.output, args.model)
    if args.keep_fused and not args.optimize:
        raise PrunekitError("--keep-fused goes with --optimize (it keeps the fused graph without timing it)")
    if args.quantize != "int8-static" and (args.task or args.glue_dir or args.calibration_samples):
        raise PrunekitError("--task, --glue-dir and --calibration-samples calibrate --quantize int8-static only")
    args.calibration_samples = args.calibration_samples or 256
    if not args.overwrite:
        check_output_dir(Path(args.output), overwrite=False)
    from .tokenizer import require_tokenizer
    model = load_model(args.model)
    require_tokenizer(model.tokenizer, args.model, "export validates on real text and ships them")
    calibration = (calibration_feeds(model, args.model, args.task, args.glue_dir, args.calibration_samples)
                   if args.quantize == "int8-static" else None)
    r = export_onnx(model, args.output, opset=args.opset, optimize=args.optimize, quantize=args.quantize,
                    keep_fused=True if args.keep_fused else None, calibration=calibration,
                    fp16=args.fp16, device=args.device, overwrite=args.overwrite, source=args.model, progress=True)
    parity = ", ".join(f"{k} {v['max_abs_diff']:.1e}" for k, v in r["parity"].items())
    print(f"{args.model} -> {args.output}/model.onnx ({r['variant']}{', optimised' if r['optimized'] else ''}, "
          f"opset {r['opset']}, {r['size_bytes'] / 2**20:.1f} MiB{', external data' if r['external_data'] else ''})")
    print(f"parity with PyTorch on {len(r['validation']['inputs'])} inputs (ORT CPU, max abs diff of logits, "
          f"atol {next(iter(r['parity'].values()))['atol']:.0e}): {parity}")
    timing = r.get("fusion", {}).get("timing")
    if timing:
        print(f"fusion timed at b{timing['shape'][0]}/s{timing['shape'][1]} on {timing['device']}: plain "
              f"{timing['plain_ms']:.1f} ms, fused {timing['fused_ms']:.1f} ms -> {timing['kept']} graph kept")
    if r["optimized"]:
        f = r["fusion"]
        print(f"fused: {f['attention_nodes']} Attention nodes for {f['layers_with_heads']} layers with heads "
              f"(heads {f['attention_num_heads']}); " + ", ".join(f"{k} {v}" for k, v in f["fused_ops"].items()))
    if "quantized" in r:
        q = r["quantized"]
        agree = "" if q["argmax_agreement"] is None else f", argmax agreement {q['argmax_agreement']:.1%}"
        print(f"{r['variant']}: logits move by up to {q['max_abs_diff']:.1e}{agree}; judge it by the task metric: "
              f"prunekit eval --model {args.output} --task TASK" + (" --device cuda" if args.device == "cuda" else ""))
    if "cuda" in r:
        print(f"CUDA provider: logits within {r['cuda']['max_abs_diff']:.1e} of PyTorch")
    print(f"report: {args.output}/export_report.json")


# options of `compress` that belong to one method; parsed with default None so that the method's
# config dataclass supplies its own default, and a user's value for the other method is an error
POST_TRAINING_OPTIONS = {"num_samples": "--num-samples", "fisher_precision": "--fisher-precision", "no_eval": "--no-eval",
                         "allow_empty_sublayers": "--allow-empty-sublayers", "distill_steps": "--distill-steps",
                         "distill_precision": "--distill-precision"}
COFI_OPTIONS = {"target_sparsity": "--target-sparsity", "prune_epochs": "--prune-epochs",
                "finetune_epochs": "--finetune-epochs", "pre_prune_epochs": "--pre-prune-epochs",
                "lagrangian_warmup": "--lagrangian-warmup", "lr": "--lr", "finetune_lr": "--finetune-lr",
                "reg_lr": "--reg-lr", "temperature": "--temperature", "alpha_pred": "--alpha-pred",
                "alpha_layer": "--alpha-layer", "alpha_task": "--alpha-task", "distill_layers": "--distill-layers",
                "sparsity_epsilon": "--sparsity-epsilon", "max_steps": "--max-steps", "eval_every": "--eval-every",
                "save_every": "--save-every", "student": "--student", "finetune_keep": "--finetune-keep",
                "resume": "--resume", "precision": "--precision", "init_from": "--init-from"}


def given(args, names) -> dict:
    """The options among `names` the user set (parsed with default None / False)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None and getattr(args, n) is not False}


def calibration_feeds(model, model_name: str, task: str | None, glue_dir: str | None,
                      samples: int) -> list[dict]:
    """Static int8's calibration set: `samples` training examples of `task` (default: the model's own
    fine-tuning task), as ORT feed dicts of 16 examples each."""
    import numpy as np
    import torch

    from .data import collate, load_task
    from .errors import PrunekitError
    from .training import resolve_max_length, trained_labels
    task_name = task or getattr(model.config, "finetuning_task", None)
    if not task_name:
        raise PrunekitError("--quantize int8-static calibrates on a task's training examples: give --task")
    data = load_task(task_name, model.tokenizer, glue_dir=glue_dir, labels=trained_labels(model.config),
                     max_length=resolve_max_length(model.config, None, model_name=model_name))
    g = torch.Generator().manual_seed(0)
    picked = [data.train[i] for i in torch.randperm(len(data.train), generator=g)[:samples].tolist()]
    feeds = []
    for i in range(0, len(picked), 16):
        batch = collate(picked[i:i + 16])
        feeds.append({k: batch[k].numpy().astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return feeds


def cmd_compress(args):
    from .errors import PrunekitError
    methods = {"post-training": (cmd_post_training, COFI_OPTIONS), "cofi": (cmd_cofi, POST_TRAINING_OPTIONS)}
    if args.method not in methods:
        raise PrunekitError(f"unknown --method {args.method!r} (post-training or cofi)")
    run_method, foreign = methods[args.method]
    from .io import check_output_path
    check_output_path(args.output, args.teacher)
    wrong = given(args, foreign)
    if wrong:
        flags = ", ".join(foreign[n] for n in wrong)
        raise PrunekitError(f"{flags} {'is not an option' if len(wrong) == 1 else 'are not options'} of "
                            f"--method {args.method}")
    set_threads(args)
    check_device(args.device)
    from .model import check_speed_options
    check_speed_options(args.kernels, getattr(args, "precision", None), args.device, args.teacher)
    run_method(args)


def cmd_post_training(args):
    from .distributed import is_main
    from .errors import PrunekitError
    from .posttrain.pipeline import Constraint, PostTrainConfig, run
    if (args.macs is None) == (args.latency is None):
        raise PrunekitError("give exactly one budget: --macs FRACTION or --latency FRACTION (the part kept, in (0, 1))")
    if args.distill_precision and not args.distill_steps:
        raise PrunekitError("--distill-precision goes with --distill-steps N (the precision of that distillation)")
    kind, value = ("macs", args.macs) if args.macs is not None else ("latency", args.latency)
    constraint = Constraint(kind, value, device=args.device, **given(args, (
        "latency_batch", "latency_seq_len", "lut_cache", "latency_runtime", "latency_threads")))
    config = PostTrainConfig(device=args.device, evaluate=not args.no_eval, **given(args, (
        "num_samples", "seed", "batch_size", "allow_empty_sublayers", "fisher_precision", "kernels", "distill_steps",
        "distill_precision")))
    report = run(args.teacher, args.task, args.output, constraint, config, data=data_args(args),
                 overwrite=args.overwrite)
    if is_main():
        print(summarise_compress(report, args.output))


def cmd_cofi(args):
    from .cofi.pipeline import CoFiConfig, run
    from .cofi.sparsity import Target
    from .errors import PrunekitError
    targets = {k: v for k, v in (("sparsity", args.target_sparsity), ("macs", args.macs), ("latency", args.latency))
               if v is not None}
    if len(targets) != 1:
        raise PrunekitError("give exactly one target: --target-sparsity S (share of encoder parameters removed), "
                            "--macs C (share of MACs kept) or --latency C (share of block latency kept), each in (0, 1)")
    (kind, value), = targets.items()
    target = Target(kind, value)
    if kind == "latency":
        from .posttrain.pipeline import Constraint
        target.latency = Constraint("latency", value, device=args.device, **given(args, (
            "latency_batch", "latency_seq_len", "lut_cache", "latency_runtime", "latency_threads")))
    options = given(args, ("prune_epochs", "finetune_epochs", "pre_prune_epochs", "lagrangian_warmup", "lr",
                           "finetune_lr", "reg_lr", "temperature", "alpha_pred", "alpha_layer", "alpha_task",
                           "sparsity_epsilon", "max_steps", "eval_every", "save_every", "student", "finetune_keep",
                           "seed", "batch_size", "kernels", "precision", "init_from"))
    if args.distill_layers is not None:
        try:
            options["distill_layers"] = tuple(int(x) for x in args.distill_layers.split(","))
        except ValueError as e:
            raise PrunekitError(f"--distill-layers takes layer numbers separated by commas, not "
                                f"{args.distill_layers!r}") from e
    if args.resume and args.overwrite:
        raise PrunekitError("--resume and --overwrite contradict each other")
    report = run(args.teacher, args.task, args.output, target.check(), CoFiConfig(device=args.device, **options),
                 data=data_args(args), overwrite=args.overwrite, resume=args.resume, command=args.command_line)
    from .distributed import is_main
    if is_main():
        print(summarise_cofi(report, args.output))


def summarise_cofi(r: dict, output) -> str:
    c, m = r["constraint"], r["main_metric"]
    want = {"sparsity": "sparsity", "macs": "MACs kept", "latency": "block latency kept"}[c["kind"]] + f" {c['value']:g}"
    lines = [f"{r['task']}: CoFi to {want} -> sparsity {r['sparsity']:.3f}, MACs kept {r['macs_kept']:.3f}, "
             f"params kept {r['params_kept']:.3f}, hidden size {r['hidden_size']}",
             "heads per layer " + " ".join(str(x["heads"]) for x in r["structure"]) +
             "; FFN per layer " + " ".join(str(x["ffn"]) for x in r["structure"])]
    dev = r["dev_metrics"]
    lines.append(f"dev {m}: " + ", ".join(f"{stage} {v[m]:.4f}" for stage, v in dev.items() if m in v))
    if lat := r.get("latency"):
        lines.append(f"latency at b{lat['batch']}/s{lat['seq_len']}: {lat['kept_by_table']:.3f} of the teacher's by the "
                     f"tables, {lat['kept_measured']:.3f} measured in ONNX Runtime ({lat['measured_ms']['compact']:.1f} vs "
                     f"{lat['measured_ms']['teacher']:.1f} ms)")
    sec = r["seconds"]
    lines.append(f"pruning {sec.get('prune_train', 0):.0f} s, fine-tuning {sec.get('finetune_train', 0):.0f} s of "
                 f"training ({r['seconds_per_step']['prune']:.3f} s/step while pruning)")
    lines.append(f"compact model, masks.safetensors and report.json in {output}")
    return "\n".join(lines)


def summarise_compress(r: dict, output) -> str:
    c = r["constraint"]
    lines = [f"{r['task']}: {c['kind']} kept <= {c['value']:g} -> MACs kept {r['macs_kept']:.3f}, "
             f"params kept {r['params_kept']:.3f}" + (f", block latency kept {r['latency_kept_table']:.3f} (table)"
                                                    if "latency_kept_table" in r else "")]
    lines.append("heads per layer " + " ".join(str(x["heads"]) for x in r["structure"]) +
                 "; FFN per layer " + " ".join(str(x["ffn"]) for x in r["structure"]))
    if r["dev_metrics"]:
        m = r["main_metric"]
        lines.append(f"dev {m}: " + ", ".join(f"{stage} {v[m]:.4f}" for stage, v in r["dev_metrics"].items()))
    sec = r["seconds"]
    lines.append(f"pruning {sec['pruning']:.1f} s (" + ", ".join(f"{s} {sec.get(s, 0):.1f}" for s in
                                                           ("fisher", "search", "rearrange", "tune")) + ")" +
                 (f"; evaluation {sec['evaluation']:.1f} s" if "evaluation" in sec else ""))
    lines.append(f"compact model, masks.safetensors and report.json in {output}")
    return "\n".join(lines)


def check_device(device: str):
    """cpu, or cuda where torch sees a GPU: before any model or data is loaded."""
    import torch

    from .errors import PrunekitError
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise PrunekitError(f"unknown --device {device!r} (cpu or cuda)") from e
    if kind not in ("cpu", "cuda"):
        raise PrunekitError(f"unknown --device {device!r} (cpu or cuda)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise PrunekitError("--device cuda, but torch sees no CUDA GPU here; use --device cpu")


def set_threads(args):
    if args.threads is not None:
        if args.threads < 1:
            from .errors import PrunekitError
            raise PrunekitError(f"--threads must be at least 1, got {args.threads}")
        import torch
        torch.set_num_threads(args.threads)


def data_args(args) -> dict:
    """load_task's data arguments from the shared --glue-dir/--train-file/... options."""
    columns = [c.strip() for c in args.text_columns.split(",")] if args.text_columns else None
    return dict(glue_dir=args.glue_dir, max_length=args.max_length, train_file=getattr(args, "train_file", None),
                dev_file=args.dev_file, text_columns=columns, label_column=args.label_column)


def add_data_options(p, train: bool):
    p.add_argument("--task", required=train, help="GLUE task (sst2, mrpc, rte, cola, stsb, qqp, mnli, qnli, wnli; "
                   "SST-2 style names work too) or a name for custom data" + ("" if train else
                   " (default: the task the model was fine-tuned on)"))
    p.add_argument("--glue-dir", help="glue_data directory with <TASK>/train.tsv, dev.tsv (default: $GLUE_DIR; "
                   "without either, HF datasets' glue)")
    if train:
        p.add_argument("--train-file", help="custom training data (.tsv, .csv or .jsonl, with a header)")
    p.add_argument("--dev-file", help="custom dev data (.tsv, .csv or .jsonl)")
    p.add_argument("--text-columns", help="custom data: one or two text columns, comma-separated (e.g. premise,hypothesis)")
    p.add_argument("--label-column", help="custom data: the label column (default: label)")
    p.add_argument("--max-length", type=int, help="tokens per example, truncating longer ones (default 128, or the "
                   "model's limit if that is shorter)")
    p.add_argument("--device", default=default_device(), help="cpu or cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core); "
                   "1 is much faster when other jobs share the cores")


def add_speed_options(p, defaults: dict, precision: bool = True):
    from .model import KERNELS
    p.add_argument("--kernels", choices=KERNELS, default=defaults["kernels"],
                   help="attention / FFN implementation while training: torch (exact eager; default), sdpa "
                   "(PyTorch's fused attention), triton (fused kernels, CUDA), auto (triton on CUDA, torch elsewhere); "
                   "on CPU the fast path is --precision bf16 (bench/results/train_speed_paths.md)")
    if precision:
        p.add_argument("--precision", choices=("fp32", "bf16"), default=defaults["precision"],
                       help="bf16: forward passes under bfloat16 autocast with fp32 master weights (fast where the "
                       "CPU or GPU has native bf16; default %(default)s)")


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite int or float within [low, high] (or open ends); else a usage error."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        bad = not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or \
            (high is not None and (value >= high if high_open else value > high))
        if bad:
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be finite{', ' if lo or hi else ''}"
                                             f"{' and '.join(x for x in (lo, hi) if x)})")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT, POSITIVE, NON_NEGATIVE = number(int, 1), number(float, 0, low_open=True), number(float, 0)
FRACTION = number(float, 0, 1, low_open=True, high_open=True)
# every numeric option of every verb, by its dest: checked as it is parsed, before any work
COUNT = number(int, 1, 10**7)       # sizes and counts: positive, and not absurd (1e20 examples, 1e5 threads)
EPOCHS = number(float, 0, 10**4)
RATE = number(float, 1e-10, 10)     # learning rates: 1e-300 trains nothing, 1e3 diverges at once
NUMERIC = {
    "seq_len": COUNT, "max_length": number(int, 2, 10**6), "threads": number(int, 1, 1024), "epochs": number(float, 0, 10**4, low_open=True),
    "lr": RATE, "batch_size": number(int, 1, 10**5), "weight_decay": number(float, 0, 10), "warmup_ratio":
    number(float, 0, 1, high_open=True), "max_steps": number(int, 1, 10**9), "max_train_samples": COUNT,
    "eval_every": COUNT, "save_every": COUNT, "num_samples": COUNT, "calibration_samples": number(int, 1, 10**5),
    "distill_steps": number(int, 0, 10**7), "latency_batch": number(int, 1, 10**5),
    "latency_seq_len": number(int, 2, 10**6), "latency_threads": number(int, 1, 1024), "opset": number(int, 14, 20),
    "seed": number(int, 0, 2**32 - 1), "macs": FRACTION, "latency": FRACTION, "target_sparsity": FRACTION,
    "prune_epochs": EPOCHS, "finetune_epochs": EPOCHS, "pre_prune_epochs": EPOCHS,
    "lagrangian_warmup": number(float, 0, 1), "finetune_lr": RATE, "reg_lr": RATE, "temperature": number(float, 0, 100,
    low_open=True), "alpha_pred": NON_NEGATIVE, "alpha_layer": NON_NEGATIVE, "alpha_task": NON_NEGATIVE,
    "sparsity_epsilon": number(float, 0, 1),
}


def check_numbers(parser):
    """Give every numeric option its range-checking type (NUMERIC), in every sub-parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                check_numbers(sub)
        elif action.dest in NUMERIC and action.type in (int, float):
            action.type = NUMERIC[action.dest]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ("prunekit compress: error: ...") and exit code 2,
    like every other error of the CLI; `--help` still prints the full usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .cofi.pipeline import CoFiConfig
    from .posttrain.pipeline import Constraint, PostTrainConfig
    from .training import TrainArgs
    T, P, C, K = defaults(TrainArgs), defaults(PostTrainConfig), defaults(Constraint), defaults(CoFiConfig)
    parser = OneLineParser(prog="prunekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("info", help="per-layer structure, params and MACs of a model")
    p.add_argument("model", help="'minilm', a model directory, or a hub id")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length for MACs (default 128)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("prune", help="apply a masks file (surgery) and save the compact model")
    p.add_argument("--model", required=True, help="dense model: 'minilm' or a model directory")
    p.add_argument("--masks", required=True, help="masks.safetensors with any of z_mha z_head z_ffn z_int z_hidden")
    p.add_argument("--output", required=True, help="directory for the compact model")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length for the MACs report")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help="fine-tune a model on a task (makes the teacher)")
    p.add_argument("--model", default="minilm", help="'minilm' (default), a model directory, or a hub id")
    p.add_argument("--output", required=True, help="run directory; the best model is saved there")
    add_data_options(p, train=True)
    p.add_argument("--epochs", type=float, default=T["epochs"], help="default %(default)s")
    p.add_argument("--lr", type=float, default=T["lr"], help="peak learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=T["batch_size"], help="default %(default)s")
    p.add_argument("--weight-decay", type=float, default=T["weight_decay"], help="default %(default)s")
    p.add_argument("--warmup-ratio", type=float, default=T["warmup_ratio"],
                   help="share of steps with linear warm-up (default %(default)s)")
    p.add_argument("--seed", type=int, default=T["seed"], help="default %(default)s")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (quick runs)")
    p.add_argument("--max-train-samples", type=int, help="use only the first N training examples")
    p.add_argument("--eval-every", type=int, help="steps between dev evaluations (default: once per epoch)")
    p.add_argument("--save-every", type=int, help="steps between resume checkpoints (default: at each evaluation, "
                   "at most 200)")
    p.add_argument("--no-group-by-length", action="store_true", help="plain shuffled batches (slower: more padding)")
    add_speed_options(p, T)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from <output>/last")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output run")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("eval", help="score a model on a task's dev set(s)")
    p.add_argument("--model", required=True, help="a fine-tuned model directory (dense or compact)")
    add_data_options(p, train=False)
    p.add_argument("--batch-size", type=int, default=128, help="default 128")
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export a model to ONNX, validated against PyTorch (optionally fused, int8, fp16)")
    p.add_argument("--onnx", action="store_true", help="export to ONNX (the only format so far)")
    p.add_argument("--model", required=True, help="'minilm' or a model directory (dense or compact)")
    p.add_argument("--output", required=True, help="directory for model.onnx, config.json, tokenizer, export_report.json")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 14-20 (default 17)")
    p.add_argument("--optimize", action="store_true", help="ONNX Runtime transformer fusion (per-layer head counts); "
                   "the fused graph is kept only if it is faster than the plain one at b32/s128 on the target device")
    p.add_argument("--keep-fused", action="store_true", help="with --optimize: keep the fused graph without timing it")
    p.add_argument("--quantize", choices=("int8", "int8-static"), help="int8: dynamic quantisation for the CPU "
                   "provider; int8-static: activations too, scales calibrated on --task's training examples")
    p.add_argument("--task", help="int8-static: the task whose training examples calibrate (default: the model's)")
    p.add_argument("--glue-dir", help="int8-static: glue_data directory (default: $GLUE_DIR)")
    p.add_argument("--calibration-samples", type=int, help="int8-static: examples (default 256)")
    p.add_argument("--fp16", action="store_true", help="half precision for the CUDA provider (needs --device cuda)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: the provider the export targets")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compress", help="prune a fine-tuned model (CoFi or post-training) and save the compact model")
    p.add_argument("--method", default="post-training", help="post-training (Kwon et al. 2022: seconds, no "
                   "retraining; default) or cofi (Xia et al. 2022: L0 masks learned with distillation; hours on a CPU)")
    p.add_argument("--teacher", required=True, help="fine-tuned model directory (prunekit finetune, or an HF BERT "
                   "classifier)")
    add_data_options(p, train=True)
    p.add_argument("--output", required=True, help="directory for the compact model, masks.safetensors, report.json")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--macs", type=float, help="fraction of the teacher's MACs to keep, in (0, 1), at the task's "
                   "measured length distribution (both methods)")
    p.add_argument("--seed", type=int, help=f"default {P['seed']} (post-training: the sample), {K['seed']} (cofi)")
    p.add_argument("--batch-size", type=int, help=f"Fisher batch (post-training) or training batch (cofi); "
                   f"default {P['batch_size']}")
    add_speed_options(p, {"kernels": None}, precision=False)
    p.add_argument("--latency", type=float, help="fraction of the teacher's block latency to keep, in (0, 1), from "
                   "latency tables measured at --latency-batch x --latency-seq-len")
    p.add_argument("--latency-batch", type=int,
                   help=f"deployment batch size for the latency tables (default {C['latency_batch']})")
    p.add_argument("--latency-seq-len", type=int, help=f"deployment sequence length (default {C['latency_seq_len']})")
    p.add_argument("--latency-runtime", choices=("ort", "torch"),
                   help=f"runtime the latency tables are timed on (default {C['latency_runtime']}: ONNX Runtime, as deployed)")
    p.add_argument("--latency-threads", type=int, help="CPU threads of the deployment runtime (default: torch's)")
    p.add_argument("--lut-cache", help="latency table cache, JSON (default ~/.cache/prunekit/latency_lut.json)")
    for action in p._actions:  # each method's own default max length, not the shared one
        if action.dest == "max_length":
            action.help = (f"tokens per example (default: post-training 64 for sst2 and cola, as Kwon et al., else "
                           f"128; cofi {K['max_length']})")

    g = p.add_argument_group("post-training (--method post-training)")
    g.add_argument("--num-samples", type=int, help=f"training examples for Fisher and tuning (default {P['num_samples']})")
    g.add_argument("--fisher-precision", choices=("fp32", "bf16", "auto"),
                   help=f"precision of the Fisher pass (default {P['fisher_precision']}; bf16 is faster on CPUs/GPUs "
                   "with native bf16; it flips near-ties in the ranking, with no measurable cost to the dev metric over "
                   "five sampling seeds: bench/results/fisher_precision.md; auto = bf16 where native)")
    g.add_argument("--no-eval", action="store_true", help="skip the dev evaluations (they are not pruning time)")
    g.add_argument("--distill-steps", type=int, help="after surgery, this many steps of distillation fine-tuning of "
                   "the compact model from the teacher (CoFi's losses; default 0: none)")
    g.add_argument("--distill-precision", choices=("fp32", "bf16"), help="its forward passes in bf16 autocast (fp32 "
                   f"weights; fast where the CPU has native bf16; default {P['distill_precision']})")
    g.add_argument("--allow-empty-sublayers", action="store_true", help="let a layer lose all its heads or all its "
                   "FFN neurons (the sublayer, LayerNorm included, is then removed; off by default: it can wreck accuracy)")

    g = p.add_argument_group("CoFi (--method cofi)")
    g.add_argument("--target-sparsity", type=float, help="fraction of the encoder parameters to remove, in (0, 1) "
                   "(CoFi's sparsity); or give --macs")
    g.add_argument("--prune-epochs", type=float, help="epochs of pruning (default: 10 on tasks with < 10k training "
                   "examples, 1 on larger ones)")
    g.add_argument("--finetune-epochs", type=float, help="epochs of fine-tuning the compact model (default: 5 small, "
                   "0.5 large; 0 skips it)")
    g.add_argument("--pre-prune-epochs", type=float, help=f"distillation epochs before the gates start "
                   f"(default {K['pre_prune_epochs']:g})")
    g.add_argument("--lagrangian-warmup", type=float, help=f"share of the pruning steps over which the target rises "
                   f"from 0 (default {K['lagrangian_warmup']:g})")
    g.add_argument("--lr", type=float, help=f"learning rate of the weights while pruning (default {K['lr']:g})")
    g.add_argument("--finetune-lr", type=float, help=f"... while fine-tuning (default {K['finetune_lr']:g})")
    g.add_argument("--reg-lr", type=float, help=f"learning rate of log alpha and lambda (default {K['reg_lr']:g})")
    g.add_argument("--temperature", type=float, help=f"prediction distillation temperature (default {K['temperature']:g})")
    g.add_argument("--alpha-pred", type=float, help=f"weight of prediction distillation (default {K['alpha_pred']:g})")
    g.add_argument("--alpha-layer", type=float, help=f"weight of layer distillation (default {K['alpha_layer']:g})")
    g.add_argument("--alpha-task", type=float, help=f"weight of the gold-label loss (default {K['alpha_task']:g})")
    g.add_argument("--distill-layers", help="teacher layers to distil, 0-based, comma-separated (default: every "
                   "third ending at the top one)")
    g.add_argument("--sparsity-epsilon", type=float, help=f"a pruning checkpoint may be kept while its expected "
                   f"sparsity and that of its deterministic masks are within this of the target "
                   f"(default {K['sparsity_epsilon']:g})")
    g.add_argument("--max-steps", type=int, help="cap on the steps of each phase (quick runs)")
    g.add_argument("--eval-every", type=int, help="steps between dev evaluations (default: each epoch, at most 500)")
    g.add_argument("--save-every", type=int, help="steps between resume checkpoints (default: each evaluation, at most 200)")
    g.add_argument("--student", help="start the student from this model instead of a copy of the teacher (e.g. "
                   "minilm, the pre-trained model, as the paper)")
    g.add_argument("--finetune-keep", choices=("final", "best"), help="which fine-tuned model to keep (default "
                   f"{K['finetune_keep']}; best picks by the dev metric, which flatters it)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted CoFi run in --output")
    g.add_argument("--init-from", choices=("posttrain",), help="warm start: head and unit gates from post-training "
                   "pruning's masks at the target's MACs, the target at its value from the first step")
    g.add_argument("--precision", choices=("fp32", "bf16"), help=f"forward passes in bf16 autocast, weights, gates "
                   f"and lambda in fp32 (default {K['precision']})")
    p.set_defaults(func=cmd_compress, max_length=None)
    check_numbers(parser)
    return parser


def main(argv=None) -> int:
    from transformers.utils import logging as hf_logging

    from .errors import PrunekitError
    hf_logging.disable_progress_bar()  # transformers' per-load "Loading weights" bar is noise here
    hf_logging.set_verbosity_error()   # and its load reports: the CLI says what went wrong in one line
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"  # one line each
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
        args.command_line = shlex.join(["prunekit", *argv])  # what the reports record
    except SystemExit as e:  # usage errors (exit 2) and --help (exit 0) return their code to the caller
        return e.code if isinstance(e.code, int) else 2
    try:
        from .distributed import init_from_env
        if init_from_env(getattr(args, "device", "cpu")) and args.command not in ("finetune", "compress"):
            raise PrunekitError(f"`prunekit {args.command}` runs in one process; torchrun is for finetune and "
                                "compress --method cofi")
        args.func(args)
    except PrunekitError as e:
        print(f"prunekit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prunekit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # whatever broke underneath (OSError, torch, ORT...): still one line, exit 2
        if os.environ.get("PRUNEKIT_DEBUG"):
            raise
        print(f"prunekit {args.command}: error: {describe(e)} (PRUNEKIT_DEBUG=1 shows where)", file=sys.stderr)
        return 2
    return 0


def describe(e: BaseException) -> str:
    """One line for an exception that is not prunekit's own."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).strip().splitlines()
    return f"{text[0] if text else ''} ({type(e).__name__})".strip()


if __name__ == "__main__":
    sys.exit(main())

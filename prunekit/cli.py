"""The `prunekit` command: its verbs. Each checks its arguments, calls an importable function that does
the work and prints a summary; prunekit.parser declares the options. Bad input ends with one line on
stderr and exit code 2."""
import json
import os
import shlex
import sys
import time
import warnings

import torch
from transformers.utils import logging as hf_logging

from . import distributed
from .checkpoints import inspect, load_model
from .cost import cost_report, format_report
from .errors import PrunekitError
from .evaluation import CALIBRATION_SAMPLES, calibration_feeds, evaluate_task, load_predictor, load_text_model, task_for
from .export.onnx_export import check_request, export_onnx
from .harness import check_device, check_speed_options, run as run_method
from .io import check_output, output_dir, write_json
from .masks import Masks
from .methods import METHODS
from .options import given
from .parser import budget_of, build_parser, data_args, foreign_options
from .progress import close_bars
from .rundir import data_inputs
from .summaries import summarise_compress, summarise_eval, summarise_export
from .surgery import prune
from .training import TrainArgs, finetune


def cmd_info(args):
    report = cost_report(inspect(args.model), seq_len=args.seq_len)  # load_model's checks, no weights read
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report, args.model))


def cmd_prune(args):
    check_output(args.output, (args.model, args.masks), args.overwrite)
    model = load_model(args.model)
    compact = prune(model, Masks.load(args.masks, model.config))
    with output_dir(args.output, args.overwrite) as tmp:
        compact.save_pretrained(tmp)
    print(format_report(cost_report(compact.config, seq_len=args.seq_len, reference=model.config), args.output))


def cmd_finetune(args):
    train_args = TrainArgs(output=args.output, device=args.device, **given(args, TrainArgs))
    check_speed_options(args.kernels, args.precision, args.device, args.model)  # before any model or data is read
    summary = finetune(args.model, args.task, train_args, resume=args.resume, overwrite=args.overwrite,
                       **data_args(args), max_train_samples=args.max_train_samples)
    best, metric = summary["best"], summary["main_metric"]
    if distributed.is_main():
        print(f"best {metric} {best[metric]:.4f} at step {best['step']} of {summary['steps']}; model in "
              f"{args.output} ({summary['train_seconds']:.0f} s training, {summary['seconds_per_step']:.3f} s/step)")


def cmd_eval(args):
    data = data_args(args)
    if args.output:
        check_output(args.output, (args.model, *data_inputs(data)), args.overwrite, kind="file")
    predict, tokenizer, config = load_predictor(args.model, args.device)
    task = task_for(config, tokenizer, args.task, args.model, with_train=False, **data)
    start = time.perf_counter()
    metrics = evaluate_task(predict, task, args.batch_size)
    seconds = time.perf_counter() - start
    print(summarise_eval(task, metrics))
    if args.output:
        write_json(args.output, {"model": str(args.model), "task": task.name, "metrics": metrics,
                                 "examples": {n: len(ex) for n, ex in task.dev_sets.items()},
                                 "seconds": round(seconds, 2)})
        print(f"metrics written to {args.output}")


def cmd_export(args):
    if not args.onnx:
        raise PrunekitError("name the format: --onnx (the only one so far)")
    check_request(args.opset, args.quantize, args.fp16, args.device)
    if args.device == "cuda":  # no GPU at all: one line now, not ORT's own log lines from its CUDA probe
        check_device(args.device)
    if args.keep_fused and not args.optimize:
        raise PrunekitError("--keep-fused goes with --optimize (it keeps the fused graph without timing it)")
    static = args.quantize == "int8-static"
    if not static and (args.task or args.glue_dir or args.calibration_samples):
        raise PrunekitError("--task, --glue-dir and --calibration-samples calibrate --quantize int8-static only")
    calibration_data = data_inputs({"glue_dir": args.glue_dir}) if static else []
    check_output(args.output, (args.model, *calibration_data), args.overwrite)
    model = load_text_model(args.model, "export validates on real text and ships them")
    calibration = (calibration_feeds(model, args.model, args.task, args.glue_dir,
                                     args.calibration_samples or CALIBRATION_SAMPLES) if static else None)
    r = export_onnx(model, args.output, opset=args.opset, optimize=args.optimize, quantize=args.quantize,
                    keep_fused=True if args.keep_fused else None, calibration=calibration,
                    fp16=args.fp16, device=args.device, overwrite=args.overwrite, source=args.model, progress=True)
    print(summarise_export(r, args.model, args.output, args.device))


def cmd_compress(args):
    method = METHODS[args.method]
    wrong = foreign_options(args, method)
    if wrong:
        raise PrunekitError(f"{', '.join(wrong)} {'is not an option' if len(wrong) == 1 else 'are not options'} of "
                            f"--method {args.method}")
    check_speed_options(getattr(args, "kernels", None), getattr(args, "precision", None), args.device, args.teacher)
    budget = budget_of(args, method)
    config = method.config(device=args.device, **given(args, method.config))
    report = run_method(method, args.teacher, args.task, args.output, budget, config, data=data_args(args),
                        overwrite=args.overwrite, resume=bool(args.resume), command=args.command_line)
    if distributed.is_main():
        print(summarise_compress(report, args.output))


VERBS = {"info": cmd_info, "prune": cmd_prune, "finetune": cmd_finetune, "eval": cmd_eval, "export": cmd_export,
         "compress": cmd_compress}


def main(argv=None) -> int:
    hf_logging.disable_progress_bar()  # transformers' per-load "Loading weights" bar is noise here
    hf_logging.set_verbosity_error()   # and its load reports: the CLI says what went wrong in one line
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"  # one line each
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        args.command_line = shlex.join(["prunekit", *argv])  # what the reports record
    except SystemExit as e:  # usage errors (exit 2) and --help (exit 0) return their code to the caller
        return e.code if isinstance(e.code, int) else 2
    try:
        run_verb(args)
    except PrunekitError as e:
        return fail(args, str(e))
    except KeyboardInterrupt:
        return fail(args, "interrupted", code=130)
    except Exception as e:  # whatever broke underneath (OSError, torch, ORT...): still one line, exit 2
        if os.environ.get("PRUNEKIT_DEBUG"):
            raise
        return fail(args, f"{describe(e)} (PRUNEKIT_DEBUG=1 shows where)")
    return 0


def run_verb(args) -> None:
    """Threads and device first (before any work), then the verb."""
    if distributed.init_from_env(getattr(args, "device", "cpu")) and args.command not in ("finetune", "compress"):
        raise PrunekitError(f"`prunekit {args.command}` runs in one process; torchrun is for finetune and "
                            "compress --method cofi")
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    if args.command != "export":  # export's --device names an ONNX Runtime provider: checked with its options
        check_device(getattr(args, "device", "cpu"))
    VERBS[args.command](args)


def fail(args, message: str, code: int = 2) -> int:
    """The one line of an error, on a line of its own (progress bars closed first)."""
    close_bars()
    print(f"prunekit {args.command}: {'error: ' if code == 2 else ''}{message}", file=sys.stderr)
    return code


def describe(e: BaseException) -> str:
    """One line for an exception that is not prunekit's own."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    text = str(e).strip().splitlines()
    return f"{text[0] if text else ''} ({type(e).__name__})".strip()


if __name__ == "__main__":
    sys.exit(main())

"""The `prunekit` command line: its verbs and their options. The options of a settings dataclass
(TrainArgs, PostTrainConfig, CoFiConfig, Deployment) are generated from its fields (prunekit.options);
compress takes the options of every method in METHODS, each method's own refused for the others."""
import torch

from .budget import KINDS, Budget, Deployment
from .errors import PrunekitError
from .evaluation import CALIBRATION_SAMPLES, DEFAULT_MAX_LENGTH, EVAL_BATCH_SIZE
from .export.onnx_export import DEFAULT_OPSET, OPSETS
from .methods import DEFAULT_METHOD, METHODS
from .options import (COUNT, THREADS, OneLineParser, Range, add_option, add_options, flag_of, given, number,
                      option_fields)
from .training import TrainArgs

DESCRIPTION = "fine-tune, compress (CoFi or post-training), export and evaluate BERT encoders"


def dest_of(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def own_options(method) -> dict:
    """dest -> flag of every option a method takes besides the common ones: its settings' options, its
    budgets, --resume if it is resumable."""
    own = {name: flag_of(f) for name, f in option_fields(method.config).items()}
    own.update({dest_of(KINDS[k][0]): KINDS[k][0] for k in method.budgets})
    return {**own, "resume": "--resume"} if method.resumable else own


def foreign_options(args, method) -> list[str]:
    """The flags given that belong to other methods only (parsed with default None, so given = not None)."""
    own = own_options(method)
    return list(dict.fromkeys(flag for m in METHODS.values() if m is not method
                              for dest, flag in own_options(m).items()
                              if dest not in own and getattr(args, dest, None) is not None))


def budget_of(args, method) -> Budget:
    """The one budget given among those the method takes (--target-sparsity, --macs, --latency)."""
    kinds = [k for k in method.budgets if getattr(args, dest_of(KINDS[k][0])) is not None]
    if len(kinds) != 1:
        raise PrunekitError("give exactly one budget: " + ", ".join(f"{KINDS[k][0]} F ({KINDS[k][1]})"
                                                                    for k in method.budgets) + ", F in (0, 1)")
    return Budget(kinds[0], getattr(args, dest_of(KINDS[kinds[0]][0])), Deployment(**given(args, Deployment)))


def data_args(args) -> dict:
    """load_task's data arguments from the shared --glue-dir/--train-file/... options."""
    columns = [c.strip() for c in args.text_columns.split(",")] if args.text_columns else None
    return dict(glue_dir=args.glue_dir, max_length=args.max_length, train_file=getattr(args, "train_file", None),
                dev_file=args.dev_file, text_columns=columns, label_column=args.label_column,
                label_list=args.label_list.split(",") if args.label_list else None)


def add_data_options(p, train: bool, max_length: str = f"{DEFAULT_MAX_LENGTH}, or the model's limit if shorter"):
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
    p.add_argument("--label-list", help="custom data: the labels in id order, comma-separated (default: the "
                   "sorted values of the label column, refused when they look like text)")
    p.add_argument("--max-length", type=number(int, Range(2, 10**6)), help="tokens per example, truncating longer "
                   f"ones (default {max_length})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: %(default)s)")
    p.add_argument("--threads", type=number(int, THREADS), help="CPU threads for torch (default: torch's choice, one "
                   "per core); 1 is much faster when other jobs share the cores")


def add_output_options(p, what: str, resume: bool = False):
    p.add_argument("--output", required=True, help=what)
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")


def add_method_options(p):
    """compress's options: the methods' settings (one flag for a field several methods share, its
    defaults per method), then each method's own."""
    fields = {m.name: option_fields(m.config) for m in METHODS.values()}
    shared = [n for n in fields[DEFAULT_METHOD] if sum(n in f for f in fields.values()) > 1]
    for name in shared:
        having = {m: f[name] for m, f in fields.items() if name in f}
        helps = list(dict.fromkeys(f.metadata["option"]["help"] for f in having.values()))
        add_option(p, next(iter(having.values())), given_only=True, defaults={m: f.default for m, f in having.items()},
                   help=helps[0] if len(helps) == 1 else "; ".join(f"{h} ({m})" for h, m in zip(helps, having)))
    for kind, (flag, _, text) in KINDS.items():
        p.add_argument(flag, dest=dest_of(flag), type=number(float, Range(0, 1, True, True)),
                       help=text + " (" + ", ".join(m.name for m in METHODS.values() if kind in m.budgets) + ")")
    add_options(p.add_argument_group("latency budget (--latency)"), Deployment, given_only=True)
    for m in METHODS.values():
        g = p.add_argument_group(f"{m.name} (--method {m.name})")
        add_options(g, m.config, skip=shared, given_only=True)
        if m.resumable:
            g.add_argument("--resume", action="store_true", default=None,  # None: not given (see own_options)
                           help=f"continue an interrupted {m.name} run in --output")


def build_parser():
    parser = OneLineParser(prog="prunekit", description=f"The `prunekit` command: {DESCRIPTION}.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    seq_len = dict(type=number(int, COUNT), default=DEFAULT_MAX_LENGTH, help="sequence length for MACs (default "
                   "%(default)s)")

    p = sub.add_parser("info", help="per-layer structure, params and MACs of a model")
    p.add_argument("model", help="'minilm', a model directory, or a hub id")
    p.add_argument("--seq-len", **seq_len)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("prune", help="apply a masks file (surgery) and save the compact model")
    p.add_argument("--model", required=True, help="dense model: 'minilm' or a model directory")
    p.add_argument("--masks", required=True, help="masks.safetensors with any of z_mha z_head z_ffn z_int z_hidden")
    add_output_options(p, "directory for the compact model")
    p.add_argument("--seq-len", **seq_len)

    p = sub.add_parser("finetune", help="fine-tune a model on a task (makes the teacher)")
    p.add_argument("--model", default="minilm", help="'minilm' (default), a model directory, or a hub id")
    add_output_options(p, "run directory; the best model is saved there", resume=True)
    add_data_options(p, train=True)
    p.add_argument("--max-train-samples", type=number(int, COUNT), help="use only the first N training examples")
    add_options(p, TrainArgs)

    p = sub.add_parser("eval", help="score a model on a task's dev set(s)")
    p.add_argument("--model", required=True, help="a fine-tuned model directory (dense, compact or ONNX)")
    add_data_options(p, train=False)
    p.add_argument("--batch-size", type=number(int, Range(1, 10**5)), default=EVAL_BATCH_SIZE,
                   help="default %(default)s")
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")

    add_export_parser(sub)
    add_compress_parser(sub)
    return parser


def add_export_parser(sub):
    p = sub.add_parser("export", help="export a model to ONNX, validated against PyTorch (optionally fused, int8, fp16)")
    p.add_argument("--onnx", action="store_true", help="export to ONNX (the only format so far)")
    p.add_argument("--model", required=True, help="'minilm' or a model directory (dense or compact)")
    add_output_options(p, "directory for model.onnx, config.json, tokenizer, export_report.json")
    p.add_argument("--opset", type=number(int, Range(OPSETS[0], OPSETS[-1])), default=DEFAULT_OPSET,
                   help=f"ONNX opset, {OPSETS[0]}-{OPSETS[-1]} (default %(default)s)")
    p.add_argument("--optimize", action="store_true", help="ONNX Runtime transformer fusion (per-layer head counts); "
                   "the fused graph is kept only if it is faster than the plain one at b32/s128 on the target device")
    p.add_argument("--keep-fused", action="store_true", help="with --optimize: keep the fused graph without timing it")
    p.add_argument("--quantize", choices=("int8", "int8-static"), help="int8: dynamic quantisation for the CPU "
                   "provider; int8-static: activations too, scales calibrated on --task's training examples")
    p.add_argument("--task", help="int8-static: the task whose training examples calibrate (default: the model's)")
    p.add_argument("--glue-dir", help="int8-static: glue_data directory (default: $GLUE_DIR)")
    p.add_argument("--calibration-samples", type=number(int, Range(1, 10**5)),
                   help=f"int8-static: examples (default {CALIBRATION_SAMPLES})")
    p.add_argument("--fp16", action="store_true", help="half precision for the CUDA provider (needs --device cuda)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: the provider the export targets")


def add_compress_parser(sub):
    p = sub.add_parser("compress", help="prune a fine-tuned model (CoFi or post-training) and save the compact model")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help="; ".join(
        f"{m.name} ({m.summary})" for m in METHODS.values()) + f" (default {DEFAULT_METHOD})")
    p.add_argument("--teacher", required=True, help="fine-tuned model directory (prunekit finetune, or an HF BERT "
                   "classifier)")
    add_data_options(p, train=True, max_length="; ".join(f"{m.name} {m.max_length}" for m in METHODS.values()))
    add_output_options(p, "directory for the compact model, masks.safetensors, report.json")
    add_method_options(p)

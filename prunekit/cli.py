"""The `prunekit` command. Each verb parses and validates its arguments, calls an importable
function that does the work, and reports. Bad input ends with one line on stderr and exit code 2."""
import argparse
import json
import sys


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
    from .io import output_dir
    from .masks import Masks
    from .surgery import prune
    model = load_model(args.model)
    masks = Masks.load(args.masks, model.config)
    compact = prune(model, masks)
    with output_dir(args.output, args.overwrite) as tmp:
        compact.save_pretrained(tmp)
    print(format_report(cost_report(compact.config, seq_len=args.seq_len, reference=model.config), args.output))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

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
    return parser


def main(argv=None) -> int:
    from transformers.utils import logging as hf_logging

    from .errors import PrunekitError
    hf_logging.disable_progress_bar()  # transformers' per-load "Loading weights" bar is noise here
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except PrunekitError as e:
        print(f"prunekit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prunekit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

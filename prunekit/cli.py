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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="per-layer structure, params and MACs of a model")
    p.add_argument("model", help="'minilm', a model directory, or a hub id")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length for MACs (default 128)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    from .errors import PrunekitError
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

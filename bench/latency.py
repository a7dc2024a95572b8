"""Dense teacher vs pruned models, measured the way deployers measure: same run, same inputs.

    python bench/latency.py                                   # packaged MiniLM vs runs/*/ compact models
    python bench/latency.py --dense runs/teacher-sst2 --pruned runs/pt-sst2-0.5 runs/pt-sst2-0.4
    python bench/latency.py --full-grid --runtimes ort-opt    # batch {1,8,32,128} x seq {32,128,384}
    python bench/latency.py --device cuda                     # torch fp32/fp16 (CUDA events), ORT CUDA + IO binding
    python bench/latency.py --runtimes ort ort-shipped        # plain graph vs what `export --optimize` ships
    python bench/latency.py --runtimes ort openvino           # the same model.onnx in ORT and in OpenVINO
    python bench/latency.py --replot bench/results/latency.json   # the table and figures again, no timing

For every (batch, seq) cell and every runtime, the dense model and the pruned ones are warmed up
(by count and by time), then timed round-robin with the order rotating every round, so that drift
on the machine falls on all of them alike. Speed-up is P50(dense) / P50(model) within that cell.
ONNX exports are made with prunekit.export (validated against PyTorch) and cached under --cache.
Output: a Markdown table (stdout and OUT.md), OUT.json with an environment block, and OUT-latency.png
(P50 latency vs batch) plus OUT-pareto.png (dev metric vs speed-up) when models carry metrics.
"""
import json
import os
import sys
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

import prunekit
from common import (COUNT, CPU_RUNTIMES, CUDA_RUNTIMES, RUNTIMES, SECONDS, THREADS, TimingPlan, command_line,
                    latency_figures, parser, run_grid)
from prunekit.benchmark import Row, check_out, environment, markdown_table, render_results, script, write_results
from prunekit.errors import PrunekitError
from prunekit.export.runtime import runtime_versions
from prunekit.options import Range, number

PROG = "bench/latency.py"
MAX_FOUND = 6  # compact models timed when none are named (each adds a column of work to every cell)


def find_pruned(root: Path) -> list[Path]:
    """Compact models left by earlier `prunekit compress` runs (directories with a prunekit config)."""
    found = []
    for cfg in sorted(root.glob("*/config.json")):
        try:
            config = json.loads(cfg.read_text())
            if config.get("model_type") == "prunekit-bert" and (cfg.parent / "model.safetensors").exists():
                if len(set(config["num_heads"])) > 1 or "pt-" in cfg.parent.name or "pruned" in cfg.parent.name:
                    found.append(cfg.parent)
        except (OSError, json.JSONDecodeError):
            continue
    return found


def magnitude_pruned(dense, macs_kept: float = 0.5):
    """A stand-in compact model when no compress run exists: in every layer keep the heads and FFN
    units with the largest weight norms, evenly, at about `macs_kept` of the MACs. It is labelled as
    such in every output: its accuracy means nothing, only its shape and speed do."""
    cfg = dense.config
    H, Fw, L = cfg.num_heads[0], cfg.ffn_dim[0], cfg.num_layers
    z_head, z_int = torch.zeros(L, H), torch.zeros(L, Fw)
    for l, layer in enumerate(dense.bert.layers):
        head_norm = layer.attention.output.weight.view(cfg.hidden_size, H, cfg.head_dim).norm(dim=(0, 2))
        unit_norm = layer.ffn.down.weight.norm(dim=0)
        z_head[l, head_norm.topk(max(1, round(H * macs_kept))).indices] = 1
        z_int[l, unit_norm.topk(max(1, round(Fw * macs_kept))).indices] = 1
    return prunekit.prune(dense, prunekit.Masks(z_head=z_head, z_int=z_int))


def model_metric(path: Path | None) -> dict | None:
    """The dev metric a model directory carries, if any: eval.json (prunekit eval --output), the
    written model's entry in report.json (prunekit compress: post-training's compact or distilled
    model, CoFi's fine-tuned one) or the best entry of metrics.json (prunekit finetune writes the weights
    of its best evaluation; a teacher evaluated only at the end has best = final)."""
    if path is None:
        return None
    for name in ("eval.json", "report.json", "metrics.json"):
        f = path / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # a damaged file carries no metric; the latency is still worth measuring
        if not isinstance(data, dict):
            continue
        dev = data.get("dev_metrics") or {}  # compress: the model written (after distillation / fine-tuning)
        metrics = (data.get("metrics") or next((dev[k] for k in ("distilled", "finetuned", "compact", "pruned") if k in dev),
                                               None) or data.get("best"))
        if isinstance(metrics, dict):
            key = data.get("main_metric") or next((k for k in metrics if k not in ("step", "epoch", "train_loss")), None)
            if isinstance(metrics.get(key), (int, float)):
                return {"name": key, "value": float(metrics[key]), "task": data.get("task"), "file": str(f)}
    return None


def build_parser():
    plan = TimingPlan()
    p = parser(PROG, __doc__, out="bench/results/latency", files="OUT.md, OUT.json, OUT-*.png")
    p.add_argument("--dense", default="minilm", help="dense teacher: 'minilm' (default) or a model directory")
    p.add_argument("--pruned", nargs="*", help="compact model directories (default: runs/*/ compress outputs)")
    p.add_argument("--runs", default="runs", help="where to look for compact models when --pruned is not given")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--runtimes", nargs="+", help=f"CPU: {' '.join(CPU_RUNTIMES)}; CUDA: {' '.join(CUDA_RUNTIMES)}; "
                   "on request: ort-opt-int8, ort-shipped (export --optimize's choice: the fused graph only where "
                   "it was faster), openvino (the plain graph in OpenVINO: pip install 'prunekit[openvino]')")
    p.add_argument("--batch", nargs="+", type=COUNT, help="batch sizes (default 1 32; full grid 1 8 32 128)")
    p.add_argument("--seq", nargs="+", type=COUNT, help="sequence lengths (default 32 128; full grid 32 128 384)")
    p.add_argument("--full-grid", action="store_true", help="batch {1,8,32,128} x seq {32,128,384} (default on CUDA)")
    p.add_argument("--threads", type=THREADS, default=min(2, os.cpu_count() or 1), help="intra-op threads (fixed, recorded)")
    p.add_argument("--budget", type=SECONDS, default=plan.budget,
                   help=f"seconds of timed rounds per cell (default {plan.budget:g})")
    p.add_argument("--min-rounds", type=COUNT, default=plan.min_rounds)
    p.add_argument("--max-rounds", type=COUNT, default=plan.max_rounds)
    p.add_argument("--warmup-calls", type=number(int, Range(0, 10**6)), default=plan.warmup_calls)
    p.add_argument("--warmup-seconds", type=SECONDS, default=plan.warmup_seconds)
    p.add_argument("--cache", default="runs/bench-cache", help="where ONNX exports are cached")
    return p


@script(PROG)
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.replot:
        written = render_results(args.replot, lambda doc: redraw(doc, Path(args.replot)),
                                 needs=("command", "environment", "notes", "models", "rows"))
        print("\n".join(written))
        return 0
    if args.min_rounds > args.max_rounds:
        raise PrunekitError(f"--min-rounds {args.min_rounds} is more than --max-rounds {args.max_rounds}")
    batches, seqs, runtimes = grid(args)
    if missing := [d for d in args.pruned or [] if not Path(d).is_dir()]:
        raise PrunekitError(f"model directory not found: {missing[0]}")
    check_out(args.out)
    return measure(args, batches, seqs, runtimes, command_line(PROG, argv))


def grid(args) -> tuple[list, list, list]:
    """Batch sizes, sequence lengths and runtimes to time, checked."""
    full = args.full_grid or args.device == "cuda"
    batches = args.batch or ([1, 8, 32, 128] if full else [1, 32])
    seqs = args.seq or ([32, 128, 384] if full else [32, 128])
    runtimes = args.runtimes or list(CUDA_RUNTIMES if args.device == "cuda" else CPU_RUNTIMES)
    if bad := [r for r in runtimes if r not in RUNTIMES]:
        raise PrunekitError(f"unknown runtime(s) {bad}; choose from {' '.join(RUNTIMES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PrunekitError("--device cuda but torch sees no CUDA device")
    return batches, seqs, runtimes


def load_models(args, seqs) -> tuple[dict, list]:
    """name -> (model, directory or None), the dense teacher first; and the notes for the table."""
    torch.manual_seed(0)  # the packaged MiniLM has no classifier: make the fresh one reproducible
    dense = prunekit.load_model(args.dense, num_labels=None if args.dense != "minilm" else 2)
    if max(seqs) > dense.config.max_position_embeddings:
        raise PrunekitError(f"sequence length {max(seqs)} exceeds the model's {dense.config.max_position_embeddings} positions")
    models = {"dense:" + Path(args.dense).name: (dense, Path(args.dense) if Path(args.dense).is_dir() else None)}
    notes = []
    if args.pruned:
        pruned_dirs = [Path(d) for d in args.pruned]
    else:
        pruned_dirs = find_pruned(Path(args.runs))
        if len(pruned_dirs) > MAX_FOUND:  # newest first: the runs a user just made
            pruned_dirs = sorted(pruned_dirs, key=lambda d: (d / "model.safetensors").stat().st_mtime)[-MAX_FOUND:]
            notes.append(f"More than {MAX_FOUND} compact models under {args.runs}/: the {MAX_FOUND} newest are timed; "
                         "name others with --pruned.")
        print("compact models: " + (" ".join(str(d) for d in pruned_dirs) or "none found"), file=sys.stderr)
    for d in pruned_dirs:
        models["pruned:" + d.name] = (prunekit.load_model(d), d)
    if len(models) == 1:
        name = "magnitude-50%-stand-in"
        models[name] = (magnitude_pruned(dense), None)
        notes.append(f"No compact model was given or found under {args.runs}/; '{name}' was built by this script "
                     "(weight-magnitude selection at 50% of MACs, untrained): its speed is real, its accuracy is not.")
    return models, notes


def measure(args, batches, seqs, runtimes, command: str) -> int:
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    models, notes = load_models(args, seqs)
    plan = TimingPlan(args.budget, args.min_rounds, args.max_rounds, args.warmup_calls, args.warmup_seconds)
    rows = run_grid(models, runtimes, batches, seqs, args.device, args.threads, Path(args.cache), plan)
    metrics = {name: model_metric(path) for name, (_, path) in models.items()}
    doc = {"command": command, "environment": {**environment(args.threads, args.device), **runtime_versions(runtimes)}, "notes": notes, "models": {
        name: {"dir": str(path) if path else None, "num_heads": model.config.num_heads, "ffn_dim": model.config.ffn_dim,
               "hidden_size": model.config.hidden_size, "params_encoder": prunekit.param_counts(model.config)["encoder"],
               "metric": metrics[name]} for name, (model, path) in models.items()},
        "rows": [r.as_dict() for r in rows]}
    md = markdown(doc)
    print(md)
    doc["plots"] = latency_figures(rows, metrics, Path(args.out))
    write_results(args.out, md, doc)
    return 0


def markdown(doc: dict) -> str:
    """OUT.md from the results document (what a measuring run writes, and --replot writes again)."""
    env = doc["environment"]
    lines = [f"# Latency: dense teacher vs pruned ({env['device']}, {env['threads']} threads)", "",
             f"Command: `{doc['command']}`",
             f"Machine: {env['cpu']}, {env['cpu_count']} cores; torch {env['torch']}, onnxruntime {env['onnxruntime']}"
             + (f"; GPU {env['gpu']}" if env["gpu"] else ""), ""]
    lines += [f"Note: {n}" for n in doc["notes"]] + ([""] if doc["notes"] else [])
    lines += [f"- {name}: dev {m['name']} {m['value']:.4f} ({m['file']})"
              for name, m in ((name, model["metric"]) for name, model in doc["models"].items()) if m]
    lines += ["", markdown_table([Row.from_dict(r) for r in doc["rows"]]), ""]
    return "\n".join(lines) + doc.get("analysis", "")  # a reading of the run written afterwards, if any


def redraw(doc: dict, json_path: Path) -> list[str]:
    """OUT.md and the figures again from a results JSON (no timing); the JSON stays as it is."""
    out = json_path.with_suffix("")
    rows = [Row.from_dict(r) for r in doc["rows"]]
    metrics = {name: m.get("metric") for name, m in doc["models"].items()}
    return write_results(out, markdown(doc)) + latency_figures(rows, metrics, out)


if __name__ == "__main__":
    sys.exit(main())

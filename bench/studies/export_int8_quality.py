"""Study (finished): what int8 (and the fused graph) cost in task metric: a fine-tuned model's full
dev set scored with PyTorch fp32 and with each ONNX variant through ONNX Runtime, the same path as
`prunekit eval`. The answer is in bench/results/export_int8.md; bench/stacked.py scores what ships.

    python bench/studies/export_int8_quality.py --model runs/teacher-mrpc --task mrpc --glue-dir ../shared/data/glue
    # writes bench/results/export_int8.{md,json}; several --model/--task pairs may be given in turn
    # --glue-dir defaults to $GLUE_DIR; without either the script stops with one line
    python bench/studies/export_int8_quality.py --replot bench/results/export_int8.json

Prediction agreement with PyTorch is reported beside the metric: a metric can hold while single
predictions flip both ways.
"""
import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

import prunekit
from prunekit.benchmark import environment, glue_dir_option, require_glue_dir, rewrite_table, run_script, write_results
from prunekit.data import collate
from prunekit.evaluation import task_for, torch_predictor
from prunekit.export import OnnxClassifier, export_onnx
from prunekit.metrics import compute_metrics

PROG = "bench/studies/export_int8_quality.py"
VARIANTS = {"ORT fp32": {}, "ORT fp32 optimised": {"optimize": True}, "ORT int8": {"quantize": "int8"},
            "ORT int8 optimised": {"optimize": True, "quantize": "int8"}}


@torch.no_grad()
def logits_of(predict, examples, batch_size=64) -> torch.Tensor:
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))  # little padding
    parts = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([examples[i] for i in idx])
        batch.pop("labels", None)
        for i, row in zip(idx, torch.as_tensor(predict(batch)).float()):
            parts[i] = row
    return torch.stack([parts[i] for i in range(len(examples))])


def score(task, logits, labels) -> dict:
    preds = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
    return compute_metrics(task.name, preds.tolist(), labels)


def evaluate_model(model_dir: str, task_name: str, glue_dir: str | None, cache: Path) -> dict:
    model = prunekit.load_model(model_dir)
    task = task_for(model.config, model.tokenizer, task_name, model_dir, with_train=False, glue_dir=glue_dir)
    dev = task.dev
    labels = [e["label"] for e in dev]
    ref = logits_of(torch_predictor(model), dev)
    rows = [{"variant": "PyTorch fp32", **score(task, ref, labels), "agreement": 1.0, "max_abs_diff": 0.0}]
    for variant, kwargs in VARIANTS.items():
        out = cache / Path(model_dir).name / variant.replace(" ", "-")
        export_onnx(model, out, overwrite=True, source=model_dir, **kwargs)
        got = logits_of(OnnxClassifier(out), dev)
        agree = None if task.is_regression else float((got.argmax(-1) == ref.argmax(-1)).float().mean())
        rows.append({"variant": variant, **score(task, got, labels), "agreement": agree,
                     "max_abs_diff": float((got - ref).abs().max())})
    return {"model": model_dir, "task": task.name, "examples": len(dev), "rows": rows}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = ["# Task metric of the ONNX variants (full dev set, ORT CPU)", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {env['cpu']}, {env['cpu_count']} cores; onnxruntime {env['onnxruntime']}, torch {env['torch']}", ""]
    for r in result["results"]:
        metrics = [k for k in r["rows"][0] if k not in ("variant", "agreement", "max_abs_diff")]
        lines += [f"## {r['task']}: {r['model']} ({r['examples']} dev examples)", "",
                  "| variant | " + " | ".join(metrics) + " | Δ vs PyTorch | prediction agreement | max abs logit diff |",
                  "|---|" + "---:|" * (len(metrics) + 3)]
        base = r["rows"][0][metrics[0]]
        for x in r["rows"]:
            agree = "" if x["agreement"] is None else f"{x['agreement']:.2%}"
            lines.append(f"| {x['variant']} | " + " | ".join(f"{x[m]:.4f}" for m in metrics) +
                         f" | {x[metrics[0]] - base:+.4f} | {agree} | {x['max_abs_diff']:.1e} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    return run_script(PROG, body, argv)


def body(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[], help="fine-tuned model directory (repeatable)")
    p.add_argument("--task", action="append", default=[], help="its task (one per --model)")
    glue_dir_option(p)
    p.add_argument("--cache", default="runs/export-int8-quality", help="where the exports are written")
    p.add_argument("--out", default="bench/results/export_int8")
    p.add_argument("--replot", metavar="JSON", help="only write the table of an earlier OUT.json again")
    args = p.parse_args(argv)
    if args.replot:
        print("\n".join(rewrite_table(args.replot, lambda doc: markdown(doc) + "\n", needs=("results",))))
        return 0
    if not args.model or len(args.model) != len(args.task):
        p.error("give one --task per --model")
    glue_dir = require_glue_dir(args.glue_dir, args.task)
    start = time.time()
    results = [evaluate_model(m, t, glue_dir, Path(args.cache)) for m, t in zip(args.model, args.task)]
    result = {"command": shlex.join(["python", PROG, *argv]),
              "environment": environment(threads=None), "seconds": round(time.time() - start, 1), "results": results}
    write_results(args.out, markdown(result) + "\n", result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

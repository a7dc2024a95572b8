"""Pruning stacked with int8: dense and pruned models, each in fp32, dynamic int8 and static int8,
scored on the full dev set through ONNX Runtime and timed in ORT-CPU at b1/s128 and b32/s128.

    python bench/stacked.py --task sst2 --model teacher=runs/teacher-sst2 \
        --model post-training=runs/pt-sst2-macs0.5-d0 --model cofi=runs/cofi-sst2-macs0.5
    # the first --model is the dense fp32 reference of every speed-up; writes bench/results/stacked.{md,json}
    python bench/stacked.py ... --runtimes ort openvino   # each variant in ORT and in OpenVINO (the same model.onnx)
    python bench/stacked.py --replot bench/results/stacked.json   # the table and figure again, no work

Each variant is what `prunekit export --onnx --optimize [--quantize int8 | int8-static --task T]`
ships (the fused graph kept only where it is faster, export_report.json says which); static int8
calibrates on as many training examples as `prunekit export` does by default. All sessions of a
shape are timed round-robin with the order rotating each round (bench/latency.py's method, intra-op
spinning off), P50 reported. With several --runtimes every variant is scored and timed in each; the
reference is the dense fp32 model in the first.
"""
import sys
import time
from pathlib import Path

import prunekit
from common import COUNT, THREADS, command_line, make_runner, pareto_figure, parser, synthetic_batch
from prunekit.benchmark import (check_out, environment, glue_dir_option, render_results, require_glue_dir, script,
                                summarise, table, time_interleaved, warm_up, write_results)
from prunekit.cost import macs
from prunekit.errors import PrunekitError
from prunekit.evaluation import CALIBRATION_SAMPLES, calibration_feeds, evaluate_task, task_for
from prunekit.export import export_onnx
from prunekit.export.runtime import RUNTIMES, open_classifier, runtime_versions
from prunekit.metrics import main_metric

PROG = "bench/stacked.py"
VARIANTS = {"fp32": {}, "int8 dynamic": {"quantize": "int8"}, "int8 static": {"quantize": "int8-static"}}
SHAPES = ((1, 128), (32, 128))


def build_parser():
    p = parser(PROG, __doc__, out="bench/results/stacked", files="OUT.md, OUT.json, OUT-pareto.png")
    glue_dir_option(p)
    p.add_argument("--model", action="append", help="LABEL=DIR (repeatable; the first is the dense one)")
    p.add_argument("--task", help="the task the models were fine-tuned on (dev set scored through ORT)")
    p.add_argument("--threads", type=THREADS, default=2)
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=["ort"], help="ort and/or openvino")
    p.add_argument("--rounds", type=COUNT, default=30, help="timed rounds per shape (b1 gets 4x as many)")
    p.add_argument("--cache", default="runs/stacked", help="where the exports are written")
    return p


@script(PROG)
def main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.replot:
        print("\n".join(render_results(args.replot, lambda doc: redraw(doc, Path(args.replot)),
                                       needs=("command", "environment", "task", "rows"))))
        return 0
    if not args.model or not args.task:
        p.error("give --task and at least one --model LABEL=DIR (or --replot JSON)")
    models = labelled_models(p, args.model)
    check_out(args.out)
    glue_dir = require_glue_dir(args.glue_dir, [args.task])
    dense_config = prunekit.load_model(next(iter(models.values()))).config
    if (longest := max(s for _, s in SHAPES)) > dense_config.max_position_embeddings:
        raise PrunekitError(f"the models take {dense_config.max_position_embeddings} positions; this benchmark times "
                            f"sequences of {longest}")
    rows, sessions = score_variants(models, dense_config, args.task, glue_dir, Path(args.cache), args.threads,
                                    args.runtimes)
    time_variants(rows, sessions, dense_config.vocab_size, args.threads, args.rounds)
    doc = {"command": command_line(PROG, argv), "environment": {**environment(args.threads), **runtime_versions(args.runtimes)}, "task": args.task,
           "rows": rows}
    md = markdown(doc, Path(args.out).name)
    write_results(args.out, md, doc)
    figure(doc, Path(args.out))
    print(md)
    return 0


def labelled_models(p, given: list[str]) -> dict:
    """LABEL -> model directory, each checked before any work."""
    if bad := [m for m in given if "=" not in m]:
        p.error(f"--model takes LABEL=DIR, not {bad[0]!r}")
    models = dict(m.split("=", 1) for m in given)
    if len(models) != len(given):
        p.error("each --model needs its own label")
    if missing := [f"{label}={path}" for label, path in models.items() if not Path(path).is_dir()]:
        raise PrunekitError(f"--model {missing[0]}: model directory not found")
    return models


def score_variants(models: dict, dense_config, task_name: str, glue_dir: str, cache: Path,
                   threads: int, runtimes=("ort",)) -> tuple[list, dict]:
    """Every model exported as each variant and scored on the full dev set in each runtime: the rows,
    and (label, variant, runtime) -> export directory."""
    rows, sessions = [], {}
    for label, path in models.items():
        model = prunekit.load_model(path)
        task = task_for(model.config, model.tokenizer, task_name, path, with_train=False, glue_dir=glue_dir)
        kept = macs(model.config, seq_len=128)["total"] / macs(dense_config, seq_len=128)["total"]
        for variant, kwargs in VARIANTS.items():
            out = cache / label / variant.replace(" ", "-")
            calib = (calibration_feeds(model, path, task_name, glue_dir, CALIBRATION_SAMPLES)
                     if kwargs.get("quantize") == "int8-static" else None)
            start = time.perf_counter()
            report = export_onnx(model, out, optimize=True, overwrite=True, source=path, calibration=calib,
                                 check_with=tuple(r for r in runtimes if r != "ort"), **kwargs)
            export_s = time.perf_counter() - start
            for rt in runtimes:
                metrics = evaluate_task(open_classifier(out, rt, threads=threads), task, batch_size=64)
                rows.append({"model": label, "dir": path, "variant": variant, "runtime": rt,
                             "macs_kept": round(kept, 3), "graph_kept": report.get("fusion", {}).get("timing", {}).get("kept"),
                             "export_s": round(export_s, 1), **metrics})
                sessions[label, variant, rt] = out
                print(rows[-1], file=sys.stderr, flush=True)
    return rows, sessions


def time_variants(rows: list, sessions: dict, vocab: int, threads: int, rounds: int):
    """P50 and speed-up against the first model's fp32 export, per shape, all sessions interleaved."""
    dense = key_of(rows[0])
    for b, s in SHAPES:
        batch = synthetic_batch(vocab, b, s)
        runners = {key: make_runner(key[2], None, out, batch, "cpu", threads) for key, out in sessions.items()}
        for run in runners.values():
            warm_up(run, 3, 0.5)
        times = time_interleaved(runners, rounds * (4 if b == 1 else 1))
        p50 = {k: summarise(t, b).p50_ms for k, t in times.items()}
        for r in rows:
            key = key_of(r)
            r[f"p50_ms_b{b}_s{s}"] = round(p50[key], 2)
            r[f"speedup_b{b}_s{s}"] = round(p50[dense] / p50[key], 2)


def key_of(row: dict) -> tuple:
    """(model, variant, runtime) of a row; rows written before --runtimes existed ran in ORT."""
    return row["model"], row["variant"], row.get("runtime", "ort")


def runtimes_of(rows: list) -> list:
    return list(dict.fromkeys(r.get("runtime", "ort") for r in rows))


def variant_name(row: dict) -> str:
    return row["variant"] + ("" if row.get("runtime", "ort") == "ort" else f", {row['runtime']}")


def markdown(doc: dict, stem: str) -> str:
    env, rows = doc["environment"], doc["rows"]
    metric = main_metric(doc["task"])
    base = rows[0][metric]
    through = "ORT" if runtimes_of(rows) == ["ort"] else "the row's runtime (ORT unless named)"
    body = table(["model", "MACs kept", "variant", f"dev {metric}", "Δ vs dense fp32", "P50 b1/s128", "speed-up",
                  "P50 b32/s128", "speed-up"],
                 [[r["model"], f"{r['macs_kept']:.0%}", variant_name(r), f"{100 * r[metric]:.2f}",
                   f"{100 * (r[metric] - base):+.2f}", f"{r['p50_ms_b1_s128']:.1f} ms", f"{r['speedup_b1_s128']:.2f}×",
                   f"{r['p50_ms_b32_s128']:.1f} ms", f"{r['speedup_b32_s128']:.2f}×"] for r in rows], "lrlrrrrrr")
    return "\n".join(["# Pruning stacked with int8 (ORT CPU)", "",
                      f"`{doc['command']}`; {env['cpu']}, {env['threads']} threads, onnxruntime {env['onnxruntime']}; "
                      f"load average after: {env['load_average']}. Dev {metric} of the full dev set through "
                      f"{through}; P50 "
                      "latency over interleaved rounds; speed-up against the dense fp32 model in the same run.", "",
                      body, "", f"![accuracy vs speed-up]({stem}-pareto.png)"]) + "\n"


def figure(doc: dict, out: Path) -> str:
    """Dev metric (through ORT) against the b32/s128 speed-up, with the Pareto front."""
    metric = main_metric(doc["task"])
    points = [{"model": r["model"], "variant": r["variant"], "x": r["speedup_b32_s128"], "y": 100 * r[metric],
               "hollow": r.get("runtime", "ort") != "ort"} for r in doc["rows"]]
    return pareto_figure(points, VARIANTS, "speed-up vs dense fp32, ORT CPU, batch 32 / seq 128",
                         f"dev {metric}" + (" (ORT)" if runtimes_of(doc["rows"]) == ["ort"] else ""),
                         "accuracy vs speed-up: pruning x int8", Path(f"{out}-pareto.png"))


def redraw(doc: dict, json_path: Path) -> list[str]:
    out = json_path.with_suffix("")
    return write_results(out, markdown(doc, out.name)) + [figure(doc, out)]


if __name__ == "__main__":
    sys.exit(main())

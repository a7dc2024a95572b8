"""The compression frontier: every route at every MACs budget against the same teacher, with the
accuracy each keeps, the wall time it took and the ORT latency of what it ships (fp32 and int8).

    python bench/frontier.py --task sst2 --teacher runs/teacher-sst2 --routes pt-distill gradual --macs 0.2 0.1
    python bench/frontier.py --task sst2 --teacher runs/teacher-sst2 --no-runs     # measure and tabulate only
    python bench/frontier.py --replot bench/results/frontier.json                   # the table and figure again

Each (route, budget, seed, distillation steps N) is one `prunekit compress` process writing
runs/frontier/<task>/<route>-<macs>-s<seed>[-n<N>] (a rerun skips finished ones, whichever study ran
them); its wall and CPU time, the load average and the exact command are recorded. Then every finished model of the task and the teacher are exported (plain fp32 ONNX and
dynamic int8), the int8 graphs scored on the dev set, and all of them timed in ONNX Runtime in one
interleaved run per shape (b32/s128 and b1/s128): speed-ups are against the teacher's fp32 graph of
that same run. Rows of every task accumulate in OUT.json; OUT.md and OUT.png are drawn from it.
"""
import json
import resource
import shlex
import sys
from pathlib import Path

import prunekit
from common import (COUNT, FRACTION, THREADS, TimingPlan, export_cached, make_runner, parser, synthetic_batch,
                    time_cell)
from prunekit.benchmark import (check_out, environment, glue_dir_option, prunekit_command, render_results,
                                require_glue_dir, run_logged, save_figure, script, suffixed, summarise, table,
                                write_results)
from prunekit.errors import PrunekitError
from prunekit.evaluation import evaluate_task, task_for
from prunekit.export.runtime import open_classifier
from prunekit.metrics import main_metric
from prunekit.options import SEED, number

PROG = "bench/frontier.py"
SHAPES = ((32, 128), (1, 128))
VARIANTS = {"fp32": "ort", "int8": "ort-int8"}          # what is shipped -> bench/common's export runtime
GRADUAL = (0.5, 0.25, 0.125)                            # the intermediate budgets gradual pruning may pass through
# the goals of issue 22 for SST-2: MACs kept -> (route family, max drop in points, max minutes), int8 speed-up
GOALS = {0.2: ({"post-training": (1.0, 15), "cofi": (0.5, None)}, 8), 0.1: ({"post-training": (2.5, 30),
         "cofi": (1.5, 60)}, 14), 0.05: ({"cofi": (4.0, None)}, 20)}


def gradual_budgets(macs: float) -> list[float]:
    """The intermediate budgets on the way to `macs`: each at least 1.4x the next."""
    return [b for b in GRADUAL if b >= 1.4 * macs]


# route -> (family, what it is, its compress options for a budget, distillation steps and seed)
ROUTES = {
    "post-training": ("post-training", "Kwon et al. alone (seconds, no training)",
                      lambda m, n, s: ["--method", "post-training", "--macs", m, "--seed", s]),
    "pt-distill": ("post-training", "post-training + N steps of distillation from the teacher",
                   lambda m, n, s: ["--method", "post-training", "--macs", m, "--seed", s, "--distill-steps", n]),
    "pt-distill-lr3e-5": ("post-training", "the same at the old distillation learning rate 3e-5",
                          lambda m, n, s: ["--method", "post-training", "--macs", m, "--seed", s, "--distill-steps", n,
                                           "--distill-lr", "3e-5"]),
    "gradual": ("post-training", "post-training through the budgets of GRADUAL above the target, each round "
                "distilled N/4 steps, the last N",
                lambda m, n, s: ["--method", "post-training", "--macs", m, "--seed", s, "--distill-steps", n] +
                (["--gradual", ",".join(f"{b:g}" for b in gradual_budgets(float(m)))] if gradual_budgets(float(m))
                 else [])),
    "cofi-warm": ("cofi", "CoFi from post-training's masks (--init-from posttrain), 0.5 + 0.5 epochs, fine-tuning "
                  "at lr 1e-4",
                  lambda m, n, s: ["--method", "cofi", "--macs", m, "--seed", s, "--init-from", "posttrain",
                                   "--prune-epochs", "0.5", "--finetune-epochs", "0.5", "--finetune-lr", "1e-4"]),
}


def build_parser():
    p = parser(PROG, __doc__, out="bench/results/frontier", files="OUT.md, OUT.json, OUT.png")
    glue_dir_option(p)
    p.add_argument("--task", help="GLUE task of the teacher")
    p.add_argument("--teacher", help="the fine-tuned teacher directory (its final checkpoint, not one picked on dev)")
    p.add_argument("--routes", nargs="+", choices=list(ROUTES), default=["pt-distill"])
    p.add_argument("--macs", nargs="+", type=FRACTION, default=[0.5, 0.3, 0.2, 0.1, 0.05], help="budgets (MACs kept)")
    p.add_argument("--steps", type=COUNT, default=2000, help="distillation steps N (default 2000)")
    p.add_argument("--seeds", nargs="+", type=number(int, SEED), default=[0], help="post-training / CoFi seeds")
    p.add_argument("--threads", type=THREADS, default=2, help="torch threads of each run and of the timing")
    p.add_argument("--runs-dir", default="runs/frontier", help="where the compressed models go")
    p.add_argument("--no-runs", action="store_true", help="run nothing: measure and tabulate what is finished")
    p.add_argument("--no-latency", action="store_true", help="run only: no export, scoring or timing")
    p.add_argument("--analysis", metavar="MD", help="a Markdown file: what the rows show, kept in OUT.json and "
                   "written under the table (replaces an earlier one)")
    p.add_argument("--not-run", action="append", default=[], metavar="ROUTE@MACS=REASON",
                   help="a cell of the table left empty on purpose, and why (kept in OUT.json)")
    return p


@script(PROG)
def main(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.replot:
        print("\n".join(render_results(args.replot, lambda doc: redraw(doc, Path(args.replot)),
                                       needs=("environment", "rows", "not_run"))))
        return 0
    if not args.task or not args.teacher:
        p.error("give --task and --teacher (or --replot JSON)")
    if not Path(args.teacher).is_dir():
        raise PrunekitError(f"teacher directory not found: {args.teacher}")
    not_run = dict(parse_not_run(p, text) for text in args.not_run)
    analysis = read_analysis(args.analysis)
    check_out(args.out)
    glue_dir = require_glue_dir(args.glue_dir, [args.task])
    doc = previous(args.out)
    doc["not_run"].update(not_run)
    if not args.no_runs:
        for route in args.routes:
            for m in args.macs:
                for seed in args.seeds:
                    run_route(args, glue_dir, route, m, seed, doc)
    latest = previous(args.out)  # with the rows other studies added meanwhile
    doc.update(latest, not_run={**latest["not_run"], **doc["not_run"]})
    if not args.no_latency:
        measure(args, glue_dir, doc)
    doc["environment"] = environment(args.threads)
    if analysis:
        doc["analysis"] = analysis
    print("\n".join(redraw(doc, suffixed(args.out, ".json"), write_doc=True)))
    return 0


def read_analysis(path) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() + "\n"
    except (OSError, UnicodeDecodeError) as e:
        raise PrunekitError(f"--analysis {path}: cannot read it ({e.__class__.__name__})") from None


def parse_not_run(p, text: str) -> tuple:
    cell, _, reason = text.partition("=")
    route, _, m = cell.partition("@")
    if route not in ROUTES or not reason or not m:
        p.error(f"--not-run takes ROUTE@MACS=REASON with a known route, not {text!r}")
    return f"{route}@{float(m):g}", reason


def previous(out) -> dict:
    """The results so far (rows of other tasks and runs are kept), or a new document."""
    path = suffixed(out, ".json")
    if not path.is_file():
        return {"rows": [], "not_run": {}}
    return render_results(path, lambda doc: doc, needs=("rows", "not_run"))


def run_route(args, glue_dir: str, route: str, m: float, seed: int, doc: dict) -> None:
    """One `prunekit compress` run, unless its row exists; the row from its report.json."""
    options = ROUTES[route][2](f"{m:g}", str(args.steps), str(seed))
    steps = args.steps if "--distill-steps" in options else None
    key = dict(task=args.task, route=route, macs_target=m, seed=seed, steps=steps)
    if any(same_run(r, key) for r in previous(args.out)["rows"]):
        return
    if route == "gradual" and not gradual_budgets(m):
        doc["not_run"][f"{route}@{m:g}"] = "no intermediate budget above it: gradual = one shot here"
        return
    out = Path(args.runs_dir) / args.task / (f"{route}-{m:g}-s{seed}" + (f"-n{steps}" if steps else ""))
    cmd = prunekit_command("compress", "--teacher", args.teacher, "--task", args.task, "--glue-dir", glue_dir,
                           "--output", out, "--threads", args.threads, "--overwrite", *options)
    print(f"== {route} at {m:g} MACs, seed {seed}: {out}", file=sys.stderr, flush=True)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    ran = run_logged(cmd, out.with_name(out.name + ".log"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads((out / "report.json").read_text())
    metric = report["main_metric"]
    dev = report["dev_metrics"]
    final = dev.get("distilled") or dev.get("finetuned") or dev.get("compact") or dev[list(dev)[-1]]
    row = {**key, "family": ROUTES[route][0], "dir": str(out), "metric": metric,
           "teacher": dev["teacher"][metric], "value": final[metric],
           "drop": round(100 * (dev["teacher"][metric] - final[metric]), 2),
           "macs_kept": report["macs_kept"], "stage_kept": report.get("stage_kept"),
           "minutes": round(ran["wall_seconds"] / 60, 2),
           "cpu_minutes": round((after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime) / 60, 2),
           "threads": args.threads, "load": [ran["load_before"], ran["load_after"]],
           "command": "prunekit " + shlex.join(cmd[3:]).replace(glue_dir, "$GLUE_DIR")}
    # a row at a time, added to OUT.json as it is now: an interrupted study keeps what it finished, and
    # two studies of other routes or budgets writing the same OUT.json at once keep each other's rows
    current = previous(args.out)
    current["rows"] = [r for r in current["rows"] if not same_run(r, key)] + [row]
    current["not_run"] = {**current["not_run"], **doc["not_run"]}
    doc.update(current)
    write_results(args.out, doc=doc)


def same_run(row: dict, key: dict) -> bool:
    """The row of that run: task, route, budget, seed and distillation steps."""
    return all(row.get(k) == v for k, v in key.items())


def measure(args, glue_dir: str, doc: dict) -> None:
    """int8 dev metric and ORT latency (fp32 and int8, every shape) of the task's finished rows and the
    teacher, all sessions of a shape timed in one interleaved run."""
    rows = [r for r in doc["rows"] if r["task"] == args.task and (Path(r["dir"]) / "report.json").is_file()]
    teacher = prunekit.load_model(args.teacher)
    models = {"teacher": (teacher, Path(args.teacher))}
    models.update({r["dir"]: (prunekit.load_model(r["dir"]), Path(r["dir"])) for r in rows})
    cache = Path(args.runs_dir) / args.task / "onnx"
    dirs = {(name, v): export_cached(model, Path(name).name, rt, cache, max(f.stat().st_mtime for f in
                                                                             path.glob("*.safetensors")))
            for name, (model, path) in models.items() for v, rt in VARIANTS.items()}
    task = task_for(teacher.config, teacher.tokenizer, args.task, args.teacher, with_train=False, glue_dir=glue_dir)
    metric = main_metric(args.task)
    int8 = {name: evaluate_task(open_classifier(dirs[name, "int8"], threads=args.threads), task)[metric]
            for name in models}
    p50 = {}
    for b, s in SHAPES:
        batch = synthetic_batch(teacher.config.vocab_size, b, s)
        runners = {key: make_runner(VARIANTS[key[1]], None, d, batch, "cpu", args.threads) for key, d in dirs.items()}
        times = time_cell(runners, TimingPlan(budget=8.0, min_rounds=8))
        p50[b, s] = {key: summarise(t, b).p50_ms for key, t in times.items()}
    for r in [*rows, None]:
        name = r["dir"] if r else "teacher"
        target = r if r else doc.setdefault("teachers", {}).setdefault(args.task, {"dir": args.teacher})
        target["int8_value"] = int8[name]
        for (b, s), ms in p50.items():
            for v in VARIANTS:
                target[f"p50_ms_{v}_b{b}_s{s}"] = round(ms[name, v], 2)
                target[f"speedup_{v}_b{b}_s{s}"] = round(ms["teacher", "fp32"] / ms[name, v], 2)


# ---------------------------------------------------------------------------------------------
# The table and the figure


def verdict(r: dict) -> str:
    """Met / missed against issue 22's goals (SST-2 only)."""
    if r["task"] != "sst2" or r["macs_target"] not in GOALS or "speedup_int8_b32_s128" not in r:
        return ""
    goals, speed = GOALS[r["macs_target"]]
    if r["family"] not in goals:
        return ""
    drop, minutes = goals[r["family"]]
    ok = r["drop"] <= drop and (minutes is None or r["minutes"] <= minutes)
    fast = r["speedup_int8_b32_s128"] >= speed
    return (f"drop ≤ {drop}" + (f" in ≤ {minutes} min" if minutes else "") + f": {'met' if ok else 'missed'}; "
            f"int8 ≥ {speed}×: {'met' if fast else 'missed'}")


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = ["# The compression frontier", "",
             f"`python bench/frontier.py` (rows from several invocations; each row's command is its own); "
             f"{env['cpu']}, torch {env['torch']}, onnxruntime {env['onnxruntime']}; load average when tabulated "
             f"{env['load_average']}. Drop = teacher − model, in points of the task's main metric on the full dev "
             "set; the teacher is the final checkpoint of `prunekit finetune` (nothing picked on dev). Minutes = the "
             "whole `prunekit compress` process (wall; CPU minutes beside it, since the machine was shared: load "
             "before and after in the JSON). Latency: ONNX Runtime on the CPU, P50 over interleaved rounds of every "
             "model of the task in one run; speed-up against the teacher's fp32 graph of that run. int8 = dynamic "
             "int8 (`prunekit export --onnx --quantize int8`), scored on the dev set too.", ""]
    for task in dict.fromkeys(r["task"] for r in doc["rows"]):
        rows = sorted((r for r in doc["rows"] if r["task"] == task), key=lambda r: (-r["macs_target"], r["route"],
                                                                                    r.get("steps") or 0, r["seed"]))
        t = doc.get("teachers", {}).get(task, {})
        m = rows[0]["metric"]
        lines += [f"## {task} ({m}; teacher {100 * rows[0]['teacher']:.2f}"
                  + (f", int8 {100 * t['int8_value']:.2f}; teacher fp32 P50 {t['p50_ms_fp32_b32_s128']:.0f} ms at "
                     f"b32/s128, {t['p50_ms_fp32_b1_s128']:.1f} ms at b1/s128" if "int8_value" in t else "") + ")", ""]
        body = [[r["route"], f"{r['macs_target']:.0%}", f"{r['macs_kept']:.3f}", r["seed"],
                 r.get("steps") or "-", f"{100 * r['value']:.2f}",
                 f"{r['drop']:+.2f}", fmt(r, "int8_value", lambda v: f"{100 * v:.2f}"),
                 f"{r['minutes']:.1f} ({r['cpu_minutes']:.1f})",
                 fmt(r, "speedup_fp32_b32_s128", "{:.2f}×"), fmt(r, "speedup_int8_b32_s128", "{:.2f}×"),
                 fmt(r, "speedup_fp32_b1_s128", "{:.2f}×"), fmt(r, "speedup_int8_b1_s128", "{:.2f}×"), verdict(r)]
                for r in rows]
        lines += [table(["route", "MACs", "kept", "seed", "N", f"dev {m}", "drop", "int8 dev", "minutes (CPU)",
                         "fp32 b32", "int8 b32", "fp32 b1", "int8 b1", "goal"], body, "lrrrrrrrrrrrrl"), ""]
        lines += ["Commands:", ""] + [f"- {r['route']} {r['macs_target']:.0%} s{r['seed']}"
                                       + (f" N {r['steps']}" if r.get("steps") else "") + f": `{r['command']}`"
                                       for r in rows] + [""]
    if doc["not_run"]:
        lines += ["Not run:", ""] + [f"- {cell}: {why}" for cell, why in sorted(doc["not_run"].items())] + [""]
    lines += ["Routes:", ""] + [f"- {name}: {spec[1]}" for name, spec in ROUTES.items()]
    lines += ["", "![accuracy against latency](frontier.png)"]
    if doc.get("analysis"):  # a reading of the rows written afterwards
        lines += ["", doc["analysis"].rstrip("\n")]
    return "\n".join(lines) + "\n"


def fmt(r: dict, key: str, form) -> str:
    if key not in r:
        return "not measured"
    return form(r[key]) if callable(form) else form.format(r[key])


def figure(doc: dict, path: Path) -> str | None:
    """Dev metric against ORT P50 latency, fp32 (filled) and int8 (hollow), b32/s128 and b1/s128, one
    colour per route, one panel row per task; the teacher as a star."""
    rows = [r for r in doc["rows"] if "p50_ms_fp32_b32_s128" in r]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    colour = {route: matplotlib.colormaps["tab10"](i) for i, route in enumerate(ROUTES)}
    fig, axes = plt.subplots(len(tasks), len(SHAPES), figsize=(11, 4.2 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        t = doc.get("teachers", {}).get(task, {})
        for j, (b, s) in enumerate(SHAPES):
            ax = axes[i][j]
            for r in (r for r in rows if r["task"] == task):
                for v, face in (("fp32", colour[r["route"]]), ("int8", "none")):
                    ax.scatter(r[f"p50_ms_{v}_b{b}_s{s}"], 100 * (r["value"] if v == "fp32" else r["int8_value"]),
                               color=colour[r["route"]], facecolor=face, s=40, zorder=3)
                ax.annotate(f"{r['macs_target']:.0%}", (r[f"p50_ms_fp32_b{b}_s{s}"], 100 * r["value"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            if t:
                ax.scatter(t[f"p50_ms_fp32_b{b}_s{s}"], 100 * rows[0]["teacher"], marker="*", s=120, color="black",
                           zorder=4, label="teacher (fp32)")
            ax.set(xscale="log", xlabel=f"ORT P50 latency, batch {b} / seq {s} (ms)", ylabel=f"{task} dev",
                   title=f"{task}: filled fp32, hollow int8 dynamic")
            ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=r) for r, c in colour.items()
               if any(x["route"] == r for x in rows)]
    handles.append(Line2D([], [], color="black", marker="*", linestyle="", label="teacher"))
    legend = axes[0][-1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path, dpi=110, bbox_inches="tight", bbox_extra_artists=[legend])


def redraw(doc: dict, json_path: Path, write_doc: bool = False) -> list[str]:
    out = json_path.with_suffix("")
    written = write_results(out, markdown(doc), doc if write_doc else None)
    png = figure(doc, suffixed(out, ".png"))
    return written + ([png] if png else [])


if __name__ == "__main__":
    sys.exit(main())

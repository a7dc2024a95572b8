"""Study (finished): CoFi variants against plain CoFi, from finished runs: a latency target vs a
sparsity target at about the same measured ORT latency, and the post-training warm start vs the cold
start. The answers are in bench/results/cofi_variants.md and cofi_variants_mrpc.md.

    python bench/latency.py --dense runs/teacher-sst2 --pruned runs/cofi-sst2-0.6 runs/cofi-sst2-lat0.44 \
        runs/cofi-sst2-0.6-warm --runtimes ort --batch 32 --seq 128 --out bench/results/cofi_variants_latency
    python bench/studies/cofi_variants.py   # reads those runs and that JSON, writes bench/results/cofi_variants.md
    python bench/studies/cofi_variants.py --task mrpc   # runs/cofi-mrpc-*, bench/results/cofi_variants_mrpc*.{json,md}

The table reads the runs themselves (each one's report.json and its pruning log, the learning curve),
so it is written again only where those runs are, under runs/.

The runs (`prunekit compress --method cofi`, commands in each report.json) of one task share one
schedule (SCHEDULES), one thread each, two runs side by side on the 2-core machine.
"""
import argparse
import json
import sys
from pathlib import Path

from prunekit.benchmark import run_script, write_results
from prunekit.errors import PrunekitError

PROG = "bench/studies/cofi_variants.py"
RUNS = Path("runs")
RESULTS = Path("bench") / "results"
SCHEDULES = {"sst2": "1 epoch of pruning + 0.5 of fine-tuning, `--reg-lr 0.02 --eval-every 250`",
             "mrpc": "6 epochs of pruning + 3 of fine-tuning, `--reg-lr 0.05 --eval-every 40`"}
NAMES = {"sst2": "SST-2", "mrpc": "MRPC"}


def report(name: str) -> dict:
    return json.loads((RUNS / name / "report.json").read_text())


def curve(name: str) -> list[dict]:
    return [json.loads(line) for line in (RUNS / name / "log_prune.jsonl").read_text().splitlines() if line.strip()]


def final_metric(r: dict) -> float:
    dev = r["dev_metrics"]
    return dev.get("finetuned", dev["pruned"])[r["main_metric"]]


def main(argv=None) -> int:
    return run_script(PROG, body, argv)


def body(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=sorted(SCHEDULES), default="sst2")
    task = p.parse_args(argv).task
    stem = "cofi_variants" if task == "sst2" else f"cofi_variants_{task}"  # sst2 keeps its first file names
    lat_json = RESULTS / f"{stem}_latency.json"
    if not lat_json.is_file():
        raise PrunekitError(f"run bench/latency.py first (see the docstring); {lat_json} is missing")
    rows = json.loads(lat_json.read_text())["rows"]
    p50 = {r["model"].split(":", 1)[1]: (r["p50_ms"], r["speedup"]) for r in rows
           if (r["runtime"], r["batch"], r["seq"]) == ("ort", 32, 128)}
    cold_name, warm_name = f"cofi-{task}-0.6", f"cofi-{task}-0.6-warm"
    missing = [n for n in (cold_name, warm_name) if not (RUNS / n / "report.json").is_file()]
    if missing:
        raise PrunekitError(f"no finished run {', '.join('runs/' + n for n in missing)}")
    rc = report(cold_name)
    metric = rc["main_metric"]
    teacher_score = rc["dev_metrics"]["teacher"][metric]
    command = f"python {PROG}" + ("" if task == "sst2" else f" --task {task}")
    lines = [f"# CoFi variants on {NAMES[task]}: latency target, post-training warm start", "",
             f"Command: `{command}` (from the runs under runs/)", "",
             f"Teacher: runs/teacher-{task}, the final checkpoint (dev {metric} {100 * teacher_score:.2f}). Same "
             f"schedule for every run: {SCHEDULES[task]}, one thread each (two runs side by side on the 2-core "
             f"machine); commands in each run's report.json. ORT latency: `bench/results/{stem}_latency.md` (fp32, "
             "2 threads, batch 32, seq 128, interleaved with the teacher on the quiet machine).", "",
             "## Latency target vs sparsity target", "",
             "| run | target | sparsity | MACs kept | block latency kept (tables) | ORT P50 ms | speed-up | "
             f"dev {metric} | drop |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in (cold_name, f"cofi-{task}-lat0.44", warm_name, f"cofi-{task}-macs0.5"):
        if not (RUNS / name / "report.json").is_file():
            continue
        r = report(name)
        c = r["constraint"]
        table = r.get("latency", {}).get("kept_by_table")
        ms, sp = p50.get(name, (float("nan"), float("nan")))
        score = final_metric(r)
        lines.append(f"| {name} | {c['kind']} {c['value']:g} | {r['sparsity']:.3f} | {r['macs_kept']:.3f} | "
                     f"{'' if table is None else f'{table:.3f}'} | {ms:.1f} | {sp:.2f}× | {100 * score:.2f} | "
                     f"{100 * (teacher_score - score):+.2f} |")
    lines += ["", "## Warm start from post-training masks vs cold start (target sparsity 0.6)", "",
              f"Dev {metric} of the deterministic-mask model during pruning (before fine-tuning), with the expected "
              "sparsity at that step; the cold start's target rises from 0 over the first half of pruning, the warm "
              "start's holds from the first step.", "",
              f"| step | epoch | cold: {metric} | cold: expected sparsity | warm: {metric} | warm: expected sparsity |",
              "|---:|---:|---:|---:|---:|---:|"]
    cold, warm = curve(cold_name), curve(warm_name)
    by_step = {e["step"]: e for e in warm}
    for e in cold:
        w = by_step.get(e["step"], {})
        lines.append(f"| {e['step']} | {e['epoch']:.2f} | {100 * e[metric]:.2f} | {e['expected_sparsity']:.3f} | "
                     f"{100 * w.get(metric, float('nan')):.2f} | {w.get('expected_sparsity', float('nan')):.3f} |")
    cold_final = cold[-1][metric]
    epochs = cold[-1]["epoch"]
    eps = rc["constraint"].get("epsilon", 0.01)
    target = rc["constraint"]["target_sparsity"]
    reach = next((e for e in warm if e[metric] >= cold_final and abs(e["expected_sparsity"] - target) <= eps), None)
    rw = report(warm_name)
    lines += ["", f"Cold start after its {epochs:g} epoch(s) of pruning: {100 * cold_final:.2f}. "
              + (f"The warm start reaches it at step {reach['step']} (epoch {reach['epoch']:.2f}, at the target "
                 f"sparsity): {epochs - reach['epoch']:.2f} epochs of pruning saved ({1 - reach['epoch'] / epochs:.0%})."
                 if reach else "The warm start never reaches it within the pruning epochs."),
              f"After fine-tuning: cold {100 * final_metric(rc):.2f}, warm {100 * final_metric(rw):.2f} "
              f"(sparsity {rc['sparsity']:.3f} / {rw['sparsity']:.3f})."]
    late = lambda c: [e[metric] for e in c if e["epoch"] > epochs / 2]  # both at the target there
    lines += ["", "Single evaluations are noisy; the mean over the second half of pruning, where both runs hold "
              f"the target: cold {100 * sum(late(cold)) / len(late(cold)):.2f}, warm "
              f"{100 * sum(late(warm)) / len(late(warm)):.2f}."]
    write_results(RESULTS / stem, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

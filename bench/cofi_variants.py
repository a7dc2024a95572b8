"""CoFi variants on SST-2 against plain CoFi, from finished runs: a latency target vs a sparsity
target at about the same measured ORT latency, and the post-training warm start vs the cold start.

    python bench/latency.py --dense runs/teacher-sst2 --pruned runs/cofi-sst2-0.6 runs/cofi-sst2-lat0.44 \
        runs/cofi-sst2-0.6-warm --runtimes ort --batch 32 --seq 128 --out bench/results/cofi_variants_latency
    python bench/cofi_variants.py        # reads those runs and that JSON, writes bench/results/cofi_variants.md

The runs (`prunekit compress --method cofi`, commands in each report.json) share one schedule:
SST-2, 1 epoch of pruning, 0.5 of fine-tuning, --reg-lr 0.02, --eval-every 250, one thread each.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
OUT = ROOT / "bench" / "results" / "cofi_variants"


def report(name: str) -> dict:
    return json.loads((RUNS / name / "report.json").read_text())


def curve(name: str) -> list[dict]:
    return [json.loads(line) for line in (RUNS / name / "log_prune.jsonl").read_text().splitlines() if line.strip()]


def final_metric(r: dict) -> float:
    dev = r["dev_metrics"]
    return dev.get("finetuned", dev["pruned"])[r["main_metric"]]


def main():
    lat_json = ROOT / "bench" / "results" / "cofi_variants_latency.json"
    if not lat_json.is_file():
        sys.exit(f"bench/cofi_variants.py: error: run bench/latency.py first (see the docstring); {lat_json} is missing")
    rows = json.loads(lat_json.read_text())["rows"]
    p50 = {r["model"].split(":", 1)[1]: (r["p50_ms"], r["speedup"]) for r in rows
           if (r["runtime"], r["batch"], r["seq"]) == ("ort", 32, 128)}
    lines = ["# CoFi variants on SST-2: latency target, post-training warm start", "",
             "Teacher: runs/teacher-sst2, the final checkpoint (dev accuracy 88.07). Same schedule for every run: "
             "1 epoch of pruning + 0.5 of fine-tuning, `--reg-lr 0.02 --eval-every 250`, one thread each (two runs "
             "side by side on the 2-core machine); commands in each run's report.json. ORT latency: "
             "`bench/results/cofi_variants_latency.md` (fp32, 2 threads, batch 32, seq 128, interleaved with the "
             "teacher on the quiet machine).", "",
             "## Latency target vs sparsity target", "",
             "| run | target | sparsity | MACs kept | block latency kept (tables) | ORT P50 ms | speed-up | "
             "dev accuracy | drop |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    teacher_acc = report("cofi-sst2-0.6")["dev_metrics"]["teacher"]["accuracy"]
    for name in ("cofi-sst2-0.6", "cofi-sst2-lat0.44", "cofi-sst2-0.6-warm", "cofi-sst2-macs0.5"):
        if not (RUNS / name / "report.json").is_file():
            continue
        r = report(name)
        c = r["constraint"]
        table = r.get("latency", {}).get("kept_by_table")
        ms, sp = p50.get(name, (float("nan"), float("nan")))
        acc = final_metric(r)
        lines.append(f"| {name} | {c['kind']} {c['value']:g} | {r['sparsity']:.3f} | {r['macs_kept']:.3f} | "
                     f"{'' if table is None else f'{table:.3f}'} | {ms:.1f} | {sp:.2f}× | {100 * acc:.2f} | "
                     f"{100 * (teacher_acc - acc):+.2f} |")
    lines += ["", "## Warm start from post-training masks vs cold start (target sparsity 0.6)", "",
              "Dev accuracy of the deterministic-mask model during pruning (before fine-tuning), with the expected "
              "sparsity at that step; the cold start's target rises from 0 over the first half of pruning, the warm "
              "start's holds from the first step.", "",
              "| step | epoch | cold: accuracy | cold: expected sparsity | warm: accuracy | warm: expected sparsity |",
              "|---:|---:|---:|---:|---:|---:|"]
    cold, warm = curve("cofi-sst2-0.6"), curve("cofi-sst2-0.6-warm")
    by_step = {e["step"]: e for e in warm}
    for e in cold:
        w = by_step.get(e["step"], {})
        lines.append(f"| {e['step']} | {e['epoch']:.2f} | {100 * e['accuracy']:.2f} | {e['expected_sparsity']:.3f} | "
                     f"{100 * w.get('accuracy', float('nan')):.2f} | {w.get('expected_sparsity', float('nan')):.3f} |")
    cold_final = cold[-1]["accuracy"]
    eps = report("cofi-sst2-0.6")["constraint"].get("epsilon", 0.01)
    reach = next((e for e in warm if e["accuracy"] >= cold_final and abs(e["expected_sparsity"] - 0.6) <= eps), None)
    rc, rw = report("cofi-sst2-0.6"), report("cofi-sst2-0.6-warm")
    lines += ["", f"Cold start after its full epoch of pruning: {100 * cold_final:.2f}. "
              + (f"The warm start reaches it at step {reach['step']} (epoch {reach['epoch']:.2f}, at the target "
                 f"sparsity): {1 - reach['epoch']:.2f} of the epoch saved."
                 if reach else "The warm start never reaches it within the epoch."),
              f"After fine-tuning: cold {100 * final_metric(rc):.2f}, warm {100 * final_metric(rw):.2f} "
              f"(sparsity {rc['sparsity']:.3f} / {rw['sparsity']:.3f})."]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

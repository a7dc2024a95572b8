"""Collect the teacher runs (runs/teacher-<task>/metrics.json, runs/teacher-<task>.wall) and the
training-speed measurement (bench/results/train_speed.json) into bench/results/teachers.{md,json}."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main():
    teachers = []
    for wall in sorted((ROOT / "runs").glob("teacher-*.wall")):
        run = wall.with_suffix("")
        if not (run / "metrics.json").is_file():
            continue
        m, w = json.loads((run / "metrics.json").read_text()), json.loads(wall.read_text())
        args = json.loads((run / "train_args.json").read_text())
        teachers.append({"run": f"runs/{run.name}", "task": m["task"], "command": w["command"],
                         "wall_seconds": w["wall_seconds"], "machine": w["machine"], "main_metric": m["main_metric"],
                         "best": m["best"], "final": m["final"], "steps": m["steps"],
                         "seconds_per_step": m["seconds_per_step"], "train_examples": args["train_examples"],
                         "settings": {k: args[k] for k in ("epochs", "lr", "batch_size", "weight_decay", "warmup_ratio",
                                                            "seed", "eval_every", "group_by_length")}})
    speed_file = RESULTS / "train_speed.json"
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "teachers.json").write_text(json.dumps({"teachers": teachers, "train_speed": speed}, indent=2) + "\n")

    fmt = lambda rec: ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k not in ("step", "epoch", "train_loss"))
    lines = ["# MiniLM teachers (all-MiniLM-L6-v2 fine-tuned on GLUE dev sets)", "",
             "Best = the evaluation with the highest main metric (that checkpoint is the one saved, so it is chosen "
             "on the dev set it is scored on); final = the last evaluation. The teachers are evaluated once, at the "
             "end (`--eval-every 1000000`), so best = final and no checkpoint is picked on the dev set. An earlier "
             "SST-2 teacher, saved at the best of 9 evaluations (0.8933 at step 1750 of 2105, final 0.8807), is the "
             "one bench/results/posttrain.md and latency.md measured against.", "",
             "| run | task | lr | epochs | best (step) | final | steps | s/step | wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in teachers:
        lines.append(f"| {t['run']} | {t['task']} | {t['settings']['lr']:g} | {t['settings']['epochs']:g} "
                     f"| {fmt(t['best'])} ({t['best']['step']}) | {fmt(t['final'])} | {t['steps']} "
                     f"| {t['seconds_per_step']:.2f} | {t['wall_seconds'] / 60:.1f} min |")
    lines += ["", "Settings: the `prunekit finetune` defaults (AdamW, lr 5e-5, batch 32, weight decay 0.01, linear "
              "warm-up over 10% of the steps then linear decay, gradient clipping at 1.0, max length 128, "
              "length-grouped batches, seed 42) with 3 epochs for MRPC, 5 for RTE and 1 for SST-2. For RTE a second "
              "run with lr 1e-4 was tried and was no better; the teacher the other tools use is runs/teacher-<task>. "
              "Wall times include loading, tokenising and every dev evaluation, and were taken on a 2-core machine "
              "shared with other developers' jobs (load average at the end of each run is given), with one torch "
              "thread (`OMP_NUM_THREADS=1`), which is much faster than two when the other core is busy (see below).",
              "", "Commands (from the repository root, `GLUE_DIR=../shared/data/glue`, via `bench/teachers.sh`):", ""]
    lines += [f"- {t['run']}: `{t['command']}` ({t['machine']})" for t in teachers]
    if speed:
        lines += ["", "## Training speed, SST-2, batch 32", "",
                  "Each row is one run of bench/train_speed.py; the machine is shared with other developers' jobs, "
                  "so the load average is given with each.", "",
                  "| command | machine | load before | batches | s/step mean | s/step median | CPU s/step | mean padded length "
                  "| epoch estimate | note |", "|---|---|---|---|---|---|---|---|---|---|"]
        for m in speed:
            for r in m["rows"]:
                lines.append(f"| `{m['command']}` | {m['machine']} | {' '.join(m['load_before'])} "
                             f"| {'length-grouped' if r['group_by_length'] else 'plain shuffled'} "
                             f"| {r['seconds_per_step']:.3f} | {r['median_seconds_per_step']:.3f} | {r.get('cpu_seconds_per_step', '')} "
                             f"| {r['mean_padded_length']} | {r['epoch_minutes_estimate']} min |" + f" {m.get('note', '')} |")
    (RESULTS / "teachers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

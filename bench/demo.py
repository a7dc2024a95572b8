"""The whole pipeline on the embedded default, in one command (`make demo`):

  1. fine-tune the packaged MiniLM on SST-2 (a short schedule)      prunekit finetune (bf16 autocast where native)
  2. prune it post-training to 50% of its MACs                      prunekit compress --method post-training
  3. export teacher and pruned model to ONNX (validated, fused)     prunekit export --onnx --optimize --keep-fused
  4. score both on the SST-2 dev set, the pruned one through ORT    prunekit eval
  5. time both, same run, same inputs                               python bench/latency.py
  6. print teacher vs pruned: dev accuracy, MACs, params, speed-up

Every step is the command a user would type, printed before it runs. A step whose output already
exists is skipped, so an interrupted demo picks up where it stopped (`--fresh` starts over).
Data: $GLUE_DIR (glue_data layout) or, without it, HF datasets.
"""
import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from prunekit.benchmark import prunekit_command
from prunekit.io import write_text
from prunekit.machine import native_bf16

LATENCY = [sys.executable, str(Path(__file__).with_name("latency.py"))]  # bench/latency.py, by this interpreter


def step(title: str, cmd: list[str], done: Path, timings: dict):
    shown = ["prunekit", *cmd[3:]] if cmd[:3] == prunekit_command() else ["python", "bench/latency.py", *cmd[2:]]
    print(f"\n== {title}\n$ {shlex.join(shown)}", flush=True)
    if done.exists():
        print(f"(already done: {done} exists)")
        return
    start = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    timings[title] = round(time.perf_counter() - start, 1)
    if rc != 0:
        print(f"demo: step '{title}' failed with exit code {rc}", file=sys.stderr)
        sys.exit(rc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="where the demo writes (default runs/demo)")
    p.add_argument("--steps", type=int, default=800, help="fine-tuning steps (default 800, batch 32)")
    p.add_argument("--macs", type=float, default=0.5, help="fraction of MACs the pruned model keeps (default 0.5)")
    p.add_argument("--fresh", action="store_true", help="delete earlier demo outputs first")
    p.add_argument("--no-fast", dest="fast", action="store_false", help="fine-tune in exact fp32 eager even where "
                   "the CPU has native bf16 (default: bf16 autocast there)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    prunekit = prunekit_command()
    teacher, pruned = out / "teacher", out / "pruned"
    timings, start = {}, time.perf_counter()

    # the fast training path where the CPU has native bf16 (bench/results/train_speed_paths.md), else exact fp32
    fast = ["--precision", "bf16"] if args.fast and native_bf16("cpu") else []
    step("fine-tune the teacher", prunekit + ["finetune", "--model", "minilm", "--task", "sst2", "--output", str(teacher),
         "--max-steps", str(args.steps), "--max-length", "64", "--eval-every", str(args.steps), *fast],
         teacher / "model.safetensors", timings)
    step("prune post-training", prunekit + ["compress", "--method", "post-training", "--teacher", str(teacher),
         "--task", "sst2", "--macs", str(args.macs), "--output", str(pruned)], pruned / "model.safetensors", timings)
    # --keep-fused: ship the fused graph, the one the timing step measures (ort-opt), without first racing
    # it against the plain graph at batch 32 (what that race costs: bench/results/cpu_isa.md)
    for name, model in (("teacher", teacher), ("pruned", pruned)):
        step(f"export the {name} to ONNX", prunekit + ["export", "--onnx", "--optimize", "--keep-fused", "--model",
             str(model), "--output", str(out / f"{name}-onnx")], out / f"{name}-onnx" / "model.onnx", timings)
    step("score the teacher (PyTorch)", prunekit + ["eval", "--model", str(teacher), "--task", "sst2",
         "--output", str(teacher / "eval.json")], teacher / "eval.json", timings)
    step("score the pruned model (ONNX Runtime)", prunekit + ["eval", "--model", str(out / "pruned-onnx"), "--task", "sst2",
         "--output", str(pruned / "eval.json")], pruned / "eval.json", timings)
    step("time both", LATENCY + ["--dense", str(teacher), "--pruned", str(pruned),
         "--runtimes", "torch", "ort-opt", "--batch", "1", "32", "--seq", "128", "--budget", "3",
         "--cache", str(out / "bench-cache"),
         "--out", str(out / "latency")], out / "latency.json", timings)

    acc = {n: json.loads((m / "eval.json").read_text())["metrics"]["accuracy"] for n, m in (("teacher", teacher), ("pruned", pruned))}
    bench = json.loads((out / "latency.json").read_text())
    models = bench["models"]
    rows = [r for r in bench["rows"] if r["model"].startswith("pruned:")]
    report = json.loads((pruned / "report.json").read_text()) if (pruned / "report.json").exists() else {}
    sp = lambda rt, b: next((f"{r['speedup']:.2f}×" for r in rows if r["runtime"] == rt and r["batch"] == b and r["seq"] == 128), "")
    dense_params = next(m["params_encoder"] for n, m in models.items() if n.startswith("dense:"))
    pruned_params = next(m["params_encoder"] for n, m in models.items() if n.startswith("pruned:"))
    macs_kept = report.get("macs_kept")
    lines = [f"SST-2, packaged MiniLM teacher vs post-training pruned to {args.macs:g} of its MACs "
             f"(ORT CPU, {bench['environment']['threads']} threads)", "",
             "| model | dev accuracy | params (encoder) | MACs kept | speed-up b1/s128 (ORT opt) | "
             "speed-up b32/s128 (ORT opt) | speed-up b32/s128 (torch) |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| teacher | {acc['teacher']:.4f} | {dense_params:,} | 1.000 | 1.00× | 1.00× | 1.00× |",
             f"| pruned | {acc['pruned']:.4f} | {pruned_params:,} | "
             f"{'?' if macs_kept is None else f'{macs_kept:.3f}'} | {sp('ort-opt', 1)} | {sp('ort-opt', 32)} | {sp('torch', 32)} |",
             "", f"accuracy change {100 * (acc['pruned'] - acc['teacher']):+.2f} points; demo wall time "
             f"{time.perf_counter() - start:.0f} s; steps: " + ", ".join(f"{k} {v} s" for k, v in timings.items())]
    if report:
        d, s = report["dev_metrics"], report["seconds"]
        lines += ["", "Post-training pruning (report.json): dev accuracy " + ", ".join(
                      f"{k} {d[k]['accuracy']:.4f}" for k in ("teacher", "search", "rearranged", "tuned") if k in d)
                  + f"; pruning {s['pruning']:.1f} s (" + ", ".join(f"{k} {s[k]:.1f}" for k in
                                                                     ("fisher", "search", "rearrange", "tune") if k in s) + ")"]
    latency_md = (out / "latency.md").read_text().split("\n", 1)[1]  # without its title
    lines += ["", "## Latency (bench/latency.py, from the demo)", latency_md]
    write_text(out / "demo.md", "\n".join(lines).rstrip() + "\n")
    print("\n== result: " + "\n".join(lines))
    print(f"files: {out}/ (demo.md, models, ONNX exports, latency.md/json/png)")
    print(f"next: CoFi learns the masks with distillation instead (hours on a CPU, more accurate at high sparsity):\n"
          f"  prunekit compress --method cofi --teacher {out}/teacher --task sst2 --target-sparsity 0.6 "
          f"--output {out}/cofi-0.6")
    return 0


if __name__ == "__main__":
    sys.exit(main())

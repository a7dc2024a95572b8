"""Every CUDA path of prunekit, checked in one command on a machine with a CUDA GPU (under 8 minutes).

    bash bench/gpu_check.sh                     # = python bench/gpu_check.py --out bench/results/gpu_check
    python bench/gpu_check.py --only kernels,cofi --cofi-steps 100
    python bench/gpu_check.py --replot bench/results/gpu_check.json      # the table again from the JSON

Checks (each one a subprocess with its own time limit; a failing check is reported, the others run):
  kernels  tests/test_kernels.py compiled on the GPU (TRITON_INTERPRET=0): forward and every gradient
           against float64 PyTorch in fp32 (TF32), fp16 and bf16, strided inputs, masked training steps
  bench    bench/kernels.py: fused masked attention and FFN (forward + backward) vs the eager masked
           path vs SDPA, BERT-base and MiniLM shapes, sequence 128 and 512, bf16
  cofi     COFI_STEPS pruning steps of `prunekit compress --method cofi` with --kernels triton and with
           --kernels torch, both --precision bf16: seconds per step, and the train-loss curves (mean
           loss per evaluation interval) agree within LOSS_RTOL (the Triton attention has no
           attention-probability dropout, so the curves differ by more than rounding)
  export   fp16 ONNX export (--optimize --fp16 --device cuda) of the dense teacher and of a post-training
           pruned model: ORT CUDA drift against PyTorch (max abs logit diff, argmax agreement), then
           bench/latency.py --device cuda (ORT CUDA fp32 and fp16 with IO binding, teacher vs pruned)
  ddp      `prunekit finetune` as 2 NCCL processes (torchrun) vs 1 process, dropout as configured:
           the same number of steps and train losses within DDP_RTOL (needs 2 GPUs; skipped otherwise)
The teacher is the packaged MiniLM (`--teacher`); the data is $GLUE_DIR's SST-2, or without it a
synthetic sentiment task written to the work directory. Writes OUT.md (one table) and OUT.json after
each check (a table of an unfinished run names the checks not run); `--replot OUT.json` writes the
table again.
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import command_line, parser, replot
from prunekit.benchmark import check_out, script, write_results
from prunekit.errors import PrunekitError

PROG = "bench/gpu_check.py"
ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("kernels", "bench", "cofi", "export", "ddp")
COFI_STEPS = 200
LOSS_RTOL = 0.10          # train-loss curves, triton vs torch kernels (both bf16, different attention dropout)
DDP_RTOL = 0.02           # train losses, 2 processes vs 1 (same global batch; reduction order differs)
LIMITS = {"kernels": 150, "bench": 120, "cofi": 150, "export": 150, "ddp": 90}   # seconds per check


@dataclass
class Row:
    check: str
    status: str                       # pass, fail, skipped
    figures: dict = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0


def parse_args(argv=None):
    p = parser(PROG, __doc__, out="bench/results/gpu_check")
    p.add_argument("--work", default="runs/gpu_check", help="where the runs and exports go")
    p.add_argument("--only", type=checks_list, default=list(CHECKS),
                   help=f"comma-separated subset of {','.join(CHECKS)}")
    p.add_argument("--teacher", default="minilm", help="dense teacher for cofi, export and ddp (default minilm)")
    p.add_argument("--cofi-steps", type=int, default=COFI_STEPS,
                   help=f"pruning steps per CoFi run (default {COFI_STEPS})")
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR"), help="glue_data directory (default $GLUE_DIR); "
                   "without SST-2 there, a synthetic task is written to --work")
    args = p.parse_args(argv)
    if args.cofi_steps < 10:
        p.error(f"argument --cofi-steps: {args.cofi_steps} is out of range (must be >= 10)")
    return args


def checks_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown check(s) {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(CHECKS)}")
    return names


# ---------------------------------------------------------------------------------------------
# the table


def document(rows: list[Row], environment: dict, command: str, checks: list[str]) -> dict:
    """What OUT.json holds: the command, the GPU's environment, the checks asked for and the rows done."""
    return {"command": command, "environment": environment, "checks": checks, "rows": [asdict(r) for r in rows]}


def markdown(doc: dict) -> str:
    """One Markdown table: check, status, figures, seconds; the command and environment above it, and
    below it how many passed (and which checks asked for have not run, in an unfinished run)."""
    rows = [Row(**r) for r in doc["rows"]]
    env = ", ".join(f"{k} {v}" for k, v in doc["environment"].items())
    lines = ["# GPU check", "", f"Command: `{doc['command']}`", "", f"Environment: {env}.", "",
             "| check | status | figures | note | seconds |", "|---|---|---|---|---:|"]
    for r in rows:
        figs = "; ".join(f"{k} {fmt(v)}" for k, v in r.figures.items())
        lines.append(f"| {r.check} | {r.status} | {figs} | {r.note} | {r.seconds:.0f} |")
    passed = sum(r.status == "pass" for r in rows)
    lines += ["", f"{passed} of {len(rows)} checks passed; "
              f"{sum(r.status == 'skipped' for r in rows)} skipped, {sum(r.status == 'fail' for r in rows)} failed."]
    pending = [c for c in doc["checks"] if c not in {r.check for r in rows}]
    if pending:
        lines.append(f"Unfinished: {', '.join(pending)} not run (the run stopped, or is still running).")
    return "\n".join(lines) + "\n"


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return str(v)


# ---------------------------------------------------------------------------------------------
# running


def sh(cmd: list[str], limit: float, env: dict | None = None) -> tuple[int, str]:
    """Run cmd from the repository root; (exit code, its output's tail). 124 when it ran past limit."""
    print("$ " + " ".join(cmd), flush=True)
    try:
        p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                           timeout=limit)
    except subprocess.TimeoutExpired as e:
        return 124, (e.stdout or b"").decode(errors="replace")[-2000:] if isinstance(e.stdout, bytes) else str(e)
    return p.returncode, (p.stdout + p.stderr)[-2000:]


def failed(check: str, rc: int, tail: str) -> Row:
    last = next((line for line in reversed(tail.strip().splitlines()) if line.strip()), "")
    return Row(check, "fail", note=("timed out" if rc == 124 else f"exit {rc}") + f": {last[:200]}")


def task_args(args, work: Path) -> list[str]:
    """SST-2 from --glue-dir, or a synthetic sentiment task written to work/data."""
    if args.glue_dir and (Path(args.glue_dir) / "SST-2" / "train.tsv").is_file():
        return ["--task", "sst2", "--glue-dir", args.glue_dir]
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    good, bad, filler = "good great fine superb".split(), "bad awful poor dull".split(), "the film was a story".split()
    for split, n in (("train", 2048), ("dev", 256)):
        rows = []
        for i in range(n):
            words = [rng.choice(filler) for _ in range(rng.randint(4, 40))]
            words.insert(rng.randint(0, len(words)), rng.choice(good if i % 2 else bad))
            rows.append(f"{' '.join(words)}\t{i % 2}\n")
        (data / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    return ["--task", "synthetic", "--train-file", str(data / "train.tsv"), "--dev-file", str(data / "dev.tsv"),
            "--text-columns", "sentence"]


def losses(log: Path) -> list[float]:
    """The mean train loss of each evaluation interval, from a run's log (log.jsonl of a finetune run,
    log_prune.jsonl of a finished CoFi run)."""
    return [json.loads(line)["train_loss"] for line in log.read_text().splitlines() if line.strip()]


def max_rel_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b) or not a:
        return float("inf")
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def check_kernels(args, work: Path) -> Row:
    rc, tail = sh([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels.py"],
                  LIMITS["kernels"], env={"TRITON_INTERPRET": "0"})
    if rc != 0:
        return failed("kernels", rc, tail)
    summary = re.findall(r"(\d+) passed", tail)
    return Row("kernels", "pass", {"tests passed": int(summary[-1]) if summary else "?"}, "compiled, not interpreted")


def check_bench(args, work: Path) -> Row:
    out = work / "kernels"
    rc, tail = sh([sys.executable, "bench/kernels.py", "--dtype", "bf16", "--seqs", "128", "512", "--out", str(out)],
                  LIMITS["bench"])
    if rc != 0:
        return failed("bench", rc, tail)
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    figs = {f"{r['shape']} s{r['seq']} {r['op']} fused vs eager": f"{r['speedup_vs_eager']:.2f}x"
            for r in rows if r["path"] == "fused" and r["shape"] == "bert-base"}
    return Row("bench", "pass", figs, f"ms and TFLOP/s per path: {out}.md")


def check_cofi(args, work: Path) -> Row:
    runs, data = {}, task_args(args, work)
    for kernels in ("triton", "torch"):
        out = work / f"cofi-{kernels}"
        cmd = [sys.executable, "-m", "prunekit.cli", "compress", "--method", "cofi", "--teacher", args.teacher,
               *data, "--target-sparsity", "0.5", "--max-steps", str(args.cofi_steps), "--eval-every",
               str(max(1, args.cofi_steps // 10)), "--finetune-epochs", "0", "--kernels", kernels, "--precision",
               "bf16", "--device", "cuda", "--output", str(out), "--overwrite"]
        rc, tail = sh(cmd, LIMITS["cofi"] / 2)
        if rc != 0:
            return failed("cofi", rc, f"--kernels {kernels}: {tail}")
        runs[kernels] = {"step": json.loads((out / "report.json").read_text())["seconds_per_step"]["prune"],
                         "losses": losses(out / "log_prune.jsonl")}
    diff = max_rel_diff(runs["triton"]["losses"], runs["torch"]["losses"])
    figs = {"s/step triton": runs["triton"]["step"], "s/step torch": runs["torch"]["step"],
            "speed-up": runs["torch"]["step"] / runs["triton"]["step"], "loss curve max rel diff": diff}
    return Row("cofi", "pass" if diff <= LOSS_RTOL else "fail", figs,
               f"{args.cofi_steps} pruning steps each, bf16 (triton's include compiling and autotuning); "
               f"curves within {LOSS_RTOL:g} relative")


def check_export(args, work: Path) -> Row:
    pruned = work / "pruned"
    rc, tail = sh([sys.executable, "-m", "prunekit.cli", "compress", "--method", "post-training", "--teacher",
                   args.teacher, *task_args(args, work), "--macs", "0.5", "--device", "cuda", "--output", str(pruned),
                   "--overwrite", "--no-eval"], LIMITS["export"] / 3)
    if rc != 0:
        return failed("export", rc, f"post-training: {tail}")
    figs = {}
    for name, model in (("teacher", args.teacher), ("pruned", str(pruned))):
        out = work / f"{name}-fp16"
        rc, tail = sh([sys.executable, "-m", "prunekit.cli", "export", "--onnx", "--model", model, "--output", str(out),
                       "--optimize", "--fp16", "--device", "cuda", "--overwrite"], LIMITS["export"] / 6)
        if rc != 0:
            return failed("export", rc, f"{name}: {tail}")
        q = json.loads((out / "export_report.json").read_text())["quantized"]
        if "CUDAExecutionProvider" not in q["providers"]:
            return Row("export", "fail", note=f"{name}: ORT ran on {q['providers']}, not CUDA")
        figs[f"{name} fp16 max abs diff"] = q["max_abs_diff"]
        figs[f"{name} fp16 argmax agreement"] = q["argmax_agreement"]
    lat = work / "latency"
    rc, tail = sh([sys.executable, "bench/latency.py", "--device", "cuda", "--dense", args.teacher, "--pruned",
                   str(pruned), "--runtimes", "ort-cuda", "ort-cuda-fp16", "--batch", "1", "32", "--seq", "128",
                   "--budget", "2", "--cache", str(work / "bench-cache"), "--out", str(lat)], LIMITS["export"] / 3)
    if rc != 0:
        return failed("export", rc, f"latency: {tail}")
    for r in json.loads(lat.with_suffix(".json").read_text())["rows"]:
        if r["model"].startswith("pruned:"):
            figs[f"{r['runtime']} b{r['batch']} speed-up"] = f"{r['speedup']:.2f}x"
    ok = all(v >= 0.99 for k, v in figs.items() if k.endswith("agreement") and v is not None)
    return Row("export", "pass" if ok else "fail", figs, f"latency table: {lat}.md (IO binding)")


def check_ddp(args, work: Path) -> Row:
    import torch
    if torch.cuda.device_count() < 2:
        return Row("ddp", "skipped", note=f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    common = ["finetune", "--model", args.teacher, *task_args(args, work), "--max-steps", "60", "--eval-every", "20",
              "--batch-size", "32", "--device", "cuda", "--overwrite"]
    one, two = work / "ddp-1", work / "ddp-2"
    rc, tail = sh([sys.executable, "-m", "prunekit.cli", *common, "--output", str(one)], LIMITS["ddp"] / 2)
    if rc != 0:
        return failed("ddp", rc, f"1 process: {tail}")
    rc, tail = sh([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                   "prunekit.cli", *common, "--output", str(two)], LIMITS["ddp"] / 2)
    if rc != 0:
        return failed("ddp", rc, f"2 processes: {tail}")
    diff = max_rel_diff(losses(two / "log.jsonl"), losses(one / "log.jsonl"))
    return Row("ddp", "pass" if diff <= DDP_RTOL else "fail", {"train loss max rel diff": diff},
               f"NCCL, 2 processes vs 1, within {DDP_RTOL:g}")


RUN = {"kernels": check_kernels, "bench": check_bench, "cofi": check_cofi, "export": check_export, "ddp": check_ddp}


def environment() -> dict:
    import torch
    import triton
    return {"GPU": torch.cuda.get_device_name(0), "GPUs": torch.cuda.device_count(), "torch": torch.__version__,
            "triton": triton.__version__, "CUDA": torch.version.cuda}


@script(PROG)
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.replot:
        return replot(args.replot, markdown, needs=("command", "environment", "checks", "rows"))
    import torch
    if not torch.cuda.is_available():
        raise PrunekitError("torch sees no CUDA GPU here; this checks the CUDA paths (the CPU ones are `make test`)")
    check_out(args.out)
    work = Path(args.work).resolve()   # the checks run their commands from the repository root
    work.mkdir(parents=True, exist_ok=True)
    command, rows = command_line(PROG, argv), []
    for name in args.only:
        start = time.perf_counter()
        try:
            row = RUN[name](args, work)
        except Exception as e:  # noqa: BLE001 - one broken check must not hide the others' results
            row = Row(name, "fail", note=f"{type(e).__name__}: {str(e)[:200]}")
        row.seconds = time.perf_counter() - start
        rows.append(row)
        print(f"{name}: {row.status} {row.figures} {row.note}", flush=True)
        doc = document(rows, environment(), command, args.only)
        write_results(args.out, markdown(doc), doc)
    print(markdown(doc))
    return 0 if all(r.status != "fail" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

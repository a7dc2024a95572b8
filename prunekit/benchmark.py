"""Benchmarks measured the way deployers measure, and the pieces every script in bench/ shares.

Measuring (bench/latency.py's method; tests check each piece on synthetic timings):
  warm_up            call until both a count and a time have passed (allocations, kernel choice, clocks)
  time_interleaved   one call of each runner per round, the order rotating every round, so that drift
                     of the machine falls on every runner alike (timed_calls: a runner fed its inputs)
  rounds_for         how many rounds fit a time budget
  summarise          P50 / P90 / P99, mean and throughput of a list of latencies
  speedups           P50 of the dense model / P50 of each model, within one run
Recording:
  environment        library versions, CPU, threads, GPU and load: the block beside every result
  table              a Markdown table from a header and rows (markdown_table: the latency rows)
  check_out          an output prefix (OUT.md, OUT.json, OUT-*.png), checked before any work
  write_results      OUT.md and OUT.json, each written whole or not at all (prunekit.io)
  save_figure        a matplotlib figure as PNG, the same way
  render_results     a table again from an earlier run's OUT.json, or one line saying why it cannot
  rewrite_table      OUT.md again from OUT.json (the --replot of the scripts)
Running:
  prunekit_command   the CLI as every script launches it: this interpreter's `-m prunekit.cli`
  run_logged         a command with its output appended to a log; wall time and load around it
  run_script, script a script's main: bad input, a failed read or write, is one line and exit 2
  require_glue_dir   the GLUE files a benchmark reads (never the hub: a figure needs known data)
"""
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import GLUE, canonical_task
from .errors import PrunekitError
from .io import atomic_file, write_json, write_text
from .machine import cpu_name, load_average

# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Stats:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # sequences per second at the median latency
    runs: int


def summarise(seconds, batch_size: int) -> Stats:
    """Percentiles (linear interpolation) and throughput from a list of per-call latencies in seconds."""
    t = np.asarray(seconds, dtype=np.float64) * 1e3
    if t.size == 0:
        raise ValueError("no timings to summarise")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return Stats(float(p50), float(p90), float(p99), float(t.mean()), batch_size / (p50 / 1e3), int(t.size))


def warm_up(fn, min_calls: int = 3, min_seconds: float = 0.5) -> int:
    """Call fn until both min_calls calls and min_seconds have passed; returns the number of calls."""
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return calls


def time_interleaved(runners: dict, rounds: int, clock=time.perf_counter, progress=None) -> dict:
    """Time each runner once per round, rotating the order every round; returns name -> [seconds].

    A runner that times itself (CUDA events) returns its own seconds as a Python float; anything else
    it returns (None, logits, an ORT output list, a NumPy scalar) is ignored and the clock is used.
    """
    names = list(runners)
    times = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = clock()
            own = runners[name]()
            times[name].append(own if type(own) is float else clock() - start)
        if progress is not None:
            progress.update(1)
    return times


def timed_calls(fn, inputs):
    """A runner for time_interleaved: each call runs fn on the next of `inputs` (itertools.repeat(x)
    for a fixed one) and returns None, so that a float fn returns (a loss) is not taken for seconds
    it timed itself."""
    it = iter(inputs)

    def run():
        fn(next(it))
    return run


def rounds_for(per_round_seconds: float, budget_seconds: float, min_rounds: int, max_rounds: int) -> int:
    """How many timed rounds fit a time budget, never fewer than min_rounds nor more than max_rounds."""
    fit = int(budget_seconds / max(per_round_seconds, 1e-9))
    return max(min_rounds, min(max_rounds, fit))


def speedups(stats: dict, dense: str) -> dict:
    """name -> P50 latency of the dense model / P50 latency of this model (same run)."""
    return {name: stats[dense].p50_ms / s.p50_ms for name, s in stats.items()}


# ---------------------------------------------------------------------------------------------
# Recording


def environment(threads: int | None, device: str = "cpu") -> dict:
    """Library versions, CPU model, thread count, GPU name and load, for the JSON beside every result."""
    import onnxruntime  # heavy imports for a version string: paid when a result is written, not on import
    import transformers
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": threads, "device": device, "gpu": gpu,
            "platform": platform.platform(), "load_average": load_average()}


def table(header: list[str], rows, align: str) -> str:
    """A Markdown table: `align` has one letter per column, l (left) or r (right, for figures)."""
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} must be one l or r per column of {header}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(header)} columns: {row}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


@dataclass
class Row:
    model: str
    runtime: str
    batch: int
    seq: int
    stats: Stats
    speedup: float | None = None
    macs_ratio: float | None = None      # dense MACs / this model's MACs
    extra: dict = field(default_factory=dict)

    @property
    def speedup_per_mac_reduction(self):
        if self.speedup is None or not self.macs_ratio:
            return None
        return self.speedup / self.macs_ratio

    def as_dict(self) -> dict:
        return {"model": self.model, "runtime": self.runtime, "batch": self.batch, "seq": self.seq,
                **self.stats.__dict__, "speedup": self.speedup, "macs_ratio": self.macs_ratio,
                "speedup_per_mac_reduction": self.speedup_per_mac_reduction}

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        stats = Stats(d["p50_ms"], d["p90_ms"], d["p99_ms"], d["mean_ms"], d["throughput"], d["runs"])
        return cls(d["model"], d["runtime"], d["batch"], d["seq"], stats, d["speedup"], d["macs_ratio"])


def markdown_table(rows: list[Row]) -> str:
    """The latency table: one line per model, runtime and shape."""
    times = lambda v: "" if v is None else f"{v:.2f}" + ("×" if v else "")
    return table(["model", "runtime", "batch", "seq", "P50 ms", "P90 ms", "P99 ms", "seq/s", "speed-up",
                  "MAC reduction", "speed-up / MAC reduction"],
                 [[r.model, r.runtime, r.batch, r.seq, f"{r.stats.p50_ms:.2f}", f"{r.stats.p90_ms:.2f}",
                   f"{r.stats.p99_ms:.2f}", f"{r.stats.throughput:.1f}", times(r.speedup), times(r.macs_ratio),
                   "" if r.speedup_per_mac_reduction is None else f"{r.speedup_per_mac_reduction:.2f}"]
                  for r in rows], "llrrrrrrrrr")


def suffixed(out, suffix: str) -> Path:
    """OUT + suffix (Path.with_suffix would eat the '.5' of 'pt-0.5')."""
    out = Path(out)
    return out.with_name(out.name + suffix)


def check_out(out) -> Path:
    """An output prefix, checked before any work: not a folder, and its folder exists or can be made
    where something can be written (tried with a temporary file, which works for root too)."""
    out = Path(out)
    if out.name in ("", ".", "..") or out.is_dir():
        raise PrunekitError(f"--out {out} is a folder; it is the prefix of the files written (OUT.md, OUT.json)")
    existing = next(p for p in [out.parent.absolute(), *out.parent.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise PrunekitError(f"--out {out}: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise PrunekitError(f"--out {out}: cannot write in {existing} ({e.strerror or e})") from None
    return out


def write_results(out, markdown: str | None = None, doc: dict | None = None) -> list[str]:
    """OUT.md and OUT.json (those given), each through a temp file and a rename: a reader, or a
    script killed halfway, never leaves half a file. Returns the paths written."""
    written = []
    if doc is not None:
        write_json(suffixed(out, ".json"), doc)
        written.append(str(suffixed(out, ".json")))
    if markdown is not None:
        write_text(suffixed(out, ".md"), markdown)
        written.append(str(suffixed(out, ".md")))
    return written


def save_figure(fig, path, **savefig) -> str:
    """A matplotlib figure as PNG through a temp file and a rename; the figure is closed."""
    import matplotlib.pyplot as plt  # matplotlib is loaded only by scripts that draw
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", **savefig)
    plt.close(fig)
    return str(path)


def render_results(path, render, needs=("rows",)):
    """render(doc) for an earlier run's results JSON at `path`; a missing, unreadable or foreign file
    (not JSON, without the keys `needs`, or rows render cannot read) is one PrunekitError line."""
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"no results file {path}")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrunekitError(f"{path} is not a results JSON ({e})") from None
    missing = [k for k in needs if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise PrunekitError(f"{path} is not a results file of this script: it has no {', '.join(missing)}")
    try:
        return render(doc)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise PrunekitError(f"{path} does not hold what this script writes ({type(e).__name__}: {e})") from None


def rewrite_table(json_path, markdown, needs=("rows",)) -> list[str]:
    """OUT.md written again beside OUT.json by markdown(doc), without measuring anything: how a table
    made by a long run is regenerated. Returns the paths written."""
    out = Path(json_path).with_suffix("")
    return render_results(json_path, lambda doc: write_results(out, markdown(doc)), needs)


# ---------------------------------------------------------------------------------------------
# Running


def prunekit_command(*args) -> list[str]:
    """The CLI as the bench scripts launch it: the running interpreter's `-m prunekit.cli`, so the
    prunekit measured is the one that imported this module (no PATH or virtualenv lookup)."""
    return [sys.executable, "-m", "prunekit.cli", *map(str, args)]


def run_logged(cmd: list[str], log, nice: int = 0, env: dict | None = None) -> dict:
    """Run cmd (nice'd by `nice`), appending its command line and output to `log`; a failure is a
    PrunekitError naming the log. Returns the wall seconds and the load average before and after."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    start, load = time.time(), load_average()
    with log.open("a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.call((["nice", "-n", str(nice)] if nice else []) + cmd, stdout=f, stderr=subprocess.STDOUT,
                             env=None if env is None else {**os.environ, **env})
    if rc != 0:
        raise PrunekitError(f"`{shlex.join(cmd)}` failed with exit code {rc}; see {log}")
    return {"wall_seconds": round(time.time() - start, 1), "load_before": load, "load_after": load_average()}


def run_script(prog: str, body, argv=None) -> int:
    """body(argv) -> exit code (argv: the command line's arguments, sys.argv[1:] when None), with every
    way of failing on bad input ending in one line on stderr and exit code 2: usage errors (argparse),
    PrunekitError, and a file that cannot be read or written (OSError); PRUNEKIT_DEBUG=1 shows the
    traceback instead. An interruption exits 130."""
    try:
        return body(sys.argv[1:] if argv is None else list(argv)) or 0
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return e.code if isinstance(e.code, int) else 2
    except (PrunekitError, OSError) as e:
        if os.environ.get("PRUNEKIT_DEBUG"):
            raise
        where = f": {e.filename}" if isinstance(e, OSError) and e.filename else ""
        print(f"{prog}: error: {e.strerror + where if isinstance(e, OSError) and e.strerror else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def script(prog: str):
    """Decorator: body(argv) becomes the script's main(argv=None) -> exit code, through run_script."""
    def wrap(body):
        @functools.wraps(body)
        def main(argv=None) -> int:
            return run_script(prog, body, argv)
        return main
    return wrap


def glue_dir_option(parser):
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR") or None,
                        help="the glue_data folder with SST-2/, MRPC/, RTE/, ... (default: $GLUE_DIR)")


def require_glue_dir(glue_dir, tasks) -> str:
    """glue_dir (from --glue-dir or $GLUE_DIR) when it holds every task's folder; else a PrunekitError
    that says what to set. Benchmarks read the GLUE files only, never HF datasets' download."""
    if not glue_dir:
        raise PrunekitError("no GLUE data: set GLUE_DIR or pass --glue-dir (the glue_data folder)")
    folders = [GLUE[canonical_task(t)].folder if canonical_task(t) else t for t in tasks]
    missing = [f for f in folders if not (Path(glue_dir) / f).is_dir()]
    if missing:
        raise PrunekitError(f"GLUE directory {glue_dir} has no {', '.join(missing)} folder "
                            "(set GLUE_DIR or --glue-dir to the glue_data folder)")
    return str(glue_dir)

"""Compile every Triton kernel of prunekit.kernels for GPUs, without a GPU, and judge the machine code.

    python -m prunekit.kernels.compile_check --json results.json    # the results; exit 1 on a problem
    python bench/kernels_compile.py       # the same, as the table bench/results/kernels_compile.{md,json}

How: the real launchers (attention forward and backward, the FFN's GEMMs) are called on CPU tensors
of the shapes and dtypes training feeds them, with each kernel's launch intercepted instead of run.
Each intercepted launch is specialised exactly as Triton's own launcher would do it on a GPU
(`JITFunction`'s binder: argument types, 16-byte alignment and divisibility attributes, constexprs),
once per autotuning config, and compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda",
cc, 32))` for sm_80 and sm_90 (Triton bundles ptxas: no GPU or CUDA toolkit needed). From each
compiled kernel it reads the tensor-core instructions in the PTX (`mma.sync` on sm_80, `wgmma` on
sm_90), ptxas's register and spill report, and the shared memory Triton allocates; `problems` turns
them into the checks tests/test_kernels_compile.py asserts:

  - it compiles (a `@triton.jit` function that reads a plain module global fails here: the Triton
    interpreter, which the numerical tests use, never runs this code generator);
  - every kernel with a tl.dot uses tensor cores in every dtype: mma.sync on sm_80, wgmma on sm_90
    (fp32 included: the dots run in TF32, kernels/tuning.py);
  - ptxas spills no registers (SPILL_BYTES_ALLOWED);
  - shared memory fits the target (SHARED_LIMIT).

Results are cached (--cache, a JSON file) under a key made of the kernel's source hash (Triton's
cache_key, which covers the functions it calls and the constexpr globals it reads), the Triton
version, the target and the full specialisation; compiles run in --jobs worker processes. The code
generator needs TRITON_INTERPRET unset (`check_environment`).
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path

from prunekit.errors import PrunekitError

TARGETS = (80, 90)
SHARED_LIMIT = {80: 166912, 90: 232448}   # bytes of shared memory one block may use: A100 163 KiB, H100 227 KiB
SPILL_BYTES_ALLOWED = 0
# BERT-base and MiniLM: the shapes the configs were chosen for, and every head dim the kernels take
SHAPES = {"bert-base": dict(H=12, dh=64, d=768, F=3072), "minilm": dict(H=12, dh=32, d=384, F=1536)}
DTYPES = ("fp32", "bf16", "fp16")
TENSOR_CORE_OPS = {"mma_sync": re.compile(r"^\s*mma\.sync\.", re.M), "wgmma": re.compile(r"^\s*wgmma\.mma_async", re.M)}


@dataclass
class Launch:
    """One kernel launch as the launcher made it, specialised for one autotuning config."""
    kernel: object           # the JITFunction
    args: tuple
    kwargs: dict             # constexprs and options (num_warps, num_stages, ...)
    shape: str = ""
    dtype: str = ""

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def config(self) -> str:
        return describe(self.kwargs)


def describe(kwargs: dict) -> str:
    """A launch's config as text, e.g. 'm128 n64 w4 s3' (tiles, warps, stages), the FFN GEMM's epilogue first."""
    from .ffn import EPILOGUES
    names = {v: k for k, v in EPILOGUES.items()}
    keys = {"EPILOGUE": "epilogue ", "BLOCK_M": "m", "BLOCK_N": "n", "BLOCK_K": "k", "num_warps": "w",
            "num_stages": "s"}
    return " ".join(f"{short}{names[v] if k == 'EPILOGUE' else v}" for k, short in keys.items()
                    if (v := kwargs.get(k)) is not None)


@dataclass
class Result:
    kernel: str
    target: int
    dtype: str
    shape: str
    config: str
    ok: bool
    error: str = ""
    mma_sync: int = 0
    wgmma: int = 0
    has_dot: bool = False
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    shared: int = -1
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# capturing launches


@contextmanager
def intercepted():
    """Within: launching a @triton.jit kernel (plain or autotuned) records a Launch per config and
    runs nothing. Yields the list they are recorded in."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    launches, saved = [], (Autotuner.run, JITFunction.run)

    def jit_run(self, *args, grid=None, warmup=False, **kwargs):
        launches.append(Launch(self, args, kwargs))

    def autotuned_run(self, *args, grid=None, warmup=False, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        for config in self.prune_configs(kwargs):      # the candidates autotuning would time for this launch
            launches.append(Launch(self.fn, args, {**kwargs, **config.all_kwargs()}))

    Autotuner.run, JITFunction.run = autotuned_run, jit_run
    try:
        yield launches
    finally:
        Autotuner.run, JITFunction.run = saved


def training_launches(shapes=SHAPES, dtypes=DTYPES, batch: int = 2, seq: int = 128) -> list[Launch]:
    """Every launch that a masked training step's attention and FFN make (forward and backward), for
    each shape and dtype, one per autotuning config."""
    import torch
    from . import attention, ffn
    out = []
    for shape, s in shapes.items():
        for dtype in dtypes:
            dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
            q, k, v = (torch.zeros(batch, s["H"], seq, s["dh"], dtype=dt, requires_grad=True) for _ in range(3))
            gate = torch.ones(s["H"], dtype=dt, requires_grad=True)
            x = torch.zeros(batch * seq, s["d"], dtype=dt, requires_grad=True)
            w_up, w_down = torch.zeros(s["F"], s["d"], dtype=dt), torch.zeros(s["d"], s["F"], dtype=dt)
            ffn_args = [x, w_up, torch.zeros(s["F"], dtype=dt), w_down, torch.zeros(s["d"], dtype=dt),
                        torch.ones(s["F"], dtype=dt), torch.ones((), dtype=dt)]
            for t in ffn_args[1:]:
                t.requires_grad_(True)
            with intercepted() as launches:
                attention.masked_attention(q, k, v, torch.ones(batch, seq), gate).sum().backward()
                ffn.masked_ffn(*ffn_args).sum().backward()
            for launch in launches:
                launch.shape, launch.dtype = shape, dtype
            out += launches
    return out


def uncovered(launches: list[Launch]) -> list[str]:
    """The @triton.jit functions of prunekit.kernels that no launch compiles, neither as a kernel nor
    as a function a launched kernel calls (directly or through others)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    from . import attention, ffn
    jitted = {}
    for module in (attention, ffn):
        for name, obj in vars(module).items():
            fn = obj.fn if isinstance(obj, Autotuner) else obj
            if isinstance(fn, JITFunction):
                jitted[name] = fn
    reached, todo = set(), [launch.name for launch in launches]
    while todo:
        name = todo.pop()
        if name in reached or name not in jitted:
            continue
        reached.add(name)
        todo += [other for other in jitted if re.search(rf"\b{other}\(", jitted[name].src)]
    return sorted(set(jitted) - reached)


# ---------------------------------------------------------------------------------------------
# compiling one launch


def specialise(launch: Launch, cc: int):
    """(source, target, options) exactly as Triton's launcher would compile this launch on a GPU of
    compute capability cc."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    fn = launch.kernel
    target = GPUTarget("cuda", cc, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, specialization, options)
    return ASTSource(fn, signature, constexprs, attrs), target, options


def cache_key(launch: Launch, cc: int) -> str:
    import triton
    src, _, options = specialise(launch, cc)
    text = f"{triton.__version__}|{cc}|{src.hash()}|{options.hash()}"   # not the shape: equal code is compiled once
    return hashlib.sha256(text.encode()).hexdigest()


def ptxas_report(log: str) -> dict:
    """Registers and spill bytes from ptxas -v."""
    def num(pattern):
        found = re.findall(pattern, log)
        return max(map(int, found)) if found else -1
    return {"registers": num(r"Used (\d+) registers"), "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads")}


def cause(e: BaseException) -> str:
    """The innermost exception's last meaningful line (a CompilationError's is a caret under the source)."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    lines = [line.strip() for line in str(e).splitlines() if line.strip().strip("^")]
    return lines[-1] if lines else type(e).__name__


def compile_launch(launch: Launch, cc: int) -> Result:
    import triton
    from triton import knobs
    res = Result(launch.name, cc, launch.dtype, launch.shape, launch.config(), ok=False)
    start = time.perf_counter()
    log = io.StringIO()
    try:
        src, target, options = specialise(launch, cc)
        with knobs.nvidia.scope(), knobs.compilation.scope(), redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True       # Triton prints ptxas -v's report
            knobs.compilation.always_compile = True  # ... which a cached kernel would not run
            kernel = triton.compile(src, target=target, options=options.__dict__)
    except Exception as e:  # noqa: BLE001 - a compile error is a result here, reported per kernel
        res.error = f"{type(e).__name__}: {cause(e)}"[:300]
        res.seconds = round(time.perf_counter() - start, 2)
        return res
    ptx = kernel.asm["ptx"]
    res.ok = True
    res.mma_sync, res.wgmma = (len(TENSOR_CORE_OPS[k].findall(ptx)) for k in ("mma_sync", "wgmma"))
    res.has_dot = "tt.dot" in kernel.asm["ttir"]
    res.shared = int(kernel.metadata.shared)
    for k, v in ptxas_report(log.getvalue()).items():
        setattr(res, k, v)
    res.seconds = round(time.perf_counter() - start, 2)
    return res


# ---------------------------------------------------------------------------------------------
# the whole set, cached, in parallel


def tasks(launches: list[Launch], targets=TARGETS) -> list[tuple[str, Launch, int]]:
    """(cache key, launch, target), one per distinct compilation, in a fixed order."""
    seen, out = set(), []
    for launch in launches:
        for cc in targets:
            key = cache_key(launch, cc)
            if key not in seen:
                seen.add(key)
                out.append((key, launch, cc))
    return out


def compile_all(launches: list[Launch], targets=TARGETS, cache: Path | None = None, jobs: int = 1,
                progress: bool = True) -> list[dict]:
    """Compile every distinct launch for every target; results as dicts (cached ones from `cache`).
    jobs > 1 compiles in worker processes, which only know training_launches()."""
    todo = tasks(launches, targets)
    known = json.loads(cache.read_text()) if cache and cache.exists() else {}
    missing = [i for i, (key, _, _) in enumerate(todo) if key not in known]
    if missing and jobs > 1:
        fresh = _in_workers([todo[i][0] for i in missing], jobs)
    else:
        from tqdm.auto import tqdm
        fresh = {todo[i][0]: asdict(compile_launch(todo[i][1], todo[i][2]))
                 for i in tqdm(missing, desc="compile", disable=not progress or not missing)}
    if cache is not None:
        known.update({k: v for k, v in fresh.items() if v["ok"]})   # failures are never cached
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(known))
        tmp.replace(cache)
    return [fresh.get(key) or known[key] for key, _, _ in todo]


def _in_workers(keys: list[str], jobs: int) -> dict:
    """Compile these tasks (cache keys of training launches) in `jobs` processes, each of which
    re-captures the training launches (a second) and compiles every jobs-th key."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = [subprocess.Popen([sys.executable, "-m", "prunekit.kernels.compile_check", "--worker"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True) for _ in range(jobs)]
    for j, p in enumerate(procs):
        p.stdin.write(" ".join(keys[j::jobs]))
        p.stdin.close()
    fresh = {}
    for p in procs:
        out = p.stdout.read()
        p.wait()
        if p.returncode != 0:
            raise RuntimeError(f"a compile worker failed with exit code {p.returncode}")
        fresh.update(json.loads(out.strip().splitlines()[-1]))
    return fresh


def problems(results: list[dict]) -> list[str]:
    """What the shipped kernels must not do (see the module docstring), one line per failure."""
    bad = []
    for r in results:
        where = f"{r['kernel']} sm_{r['target']} {r['dtype']} {r['shape']} [{r['config']}]"
        if not r["ok"]:
            bad.append(f"{where}: does not compile: {r['error']}")
            continue
        op = "mma_sync" if r["target"] < 90 else "wgmma"
        if r["has_dot"] and r[op] == 0:
            bad.append(f"{where}: no {op} (tensor cores unused)")
        if max(r["spill_stores"], r["spill_loads"]) > SPILL_BYTES_ALLOWED:
            bad.append(f"{where}: spills {r['spill_stores']} / {r['spill_loads']} bytes (stores / loads)")
        if r["registers"] < 0:
            bad.append(f"{where}: no ptxas report")
        if r["shared"] > SHARED_LIMIT[r["target"]]:
            bad.append(f"{where}: {r['shared']} bytes of shared memory > {SHARED_LIMIT[r['target']]}")
    return bad


# ---------------------------------------------------------------------------------------------
# the whole check


def check_environment() -> None:
    """The code generator runs: TRITON_INTERPRET unset (the interpreter replaces it), and the switch
    that would let kernels read plain globals (what this checks) removed."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("0", ""):
        raise PrunekitError("unset TRITON_INTERPRET (the interpreter replaces the code generator)")
    os.environ.pop("TRITON_ALLOW_NON_CONSTEXPR_GLOBALS", None)


def run(kernels=None, cache: Path | None = None, jobs: int = 1) -> dict:
    """Every training launch (of `kernels` only, names, when given) compiled for every target: the
    results, the @triton.jit functions no training launch reaches, and the seconds it took."""
    start = time.perf_counter()
    launches = training_launches()
    results = compile_all([launch for launch in launches if not kernels or launch.name in kernels], cache=cache,
                          jobs=max(1, jobs))
    return {"results": results, "uncovered": uncovered(launches), "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the results, the uncovered functions and the seconds to this file")
    p.add_argument("--cache", help="JSON file of earlier results, read and updated")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes (default: one per core)")
    p.add_argument("--kernels", type=lambda t: t.split(","), help="only these kernels (comma-separated names)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: compile the tasks (cache
    # keys) read from stdin, print their results as JSON
    args = p.parse_args(argv)
    try:
        check_environment()
    except PrunekitError as e:
        print(f"compile_check: {e}", file=sys.stderr)
        return 2
    if args.worker:
        todo = {key: (launch, cc) for key, launch, cc in tasks(training_launches())}
        print(json.dumps({key: asdict(compile_launch(*todo[key])) for key in sys.stdin.read().split()}))
        return 0
    done = run(args.kernels, Path(args.cache) if args.cache else None, args.jobs)
    if args.json:
        Path(args.json).write_text(json.dumps(done))
    bad = problems(done["results"])
    print(f"compiled {len(done['results'])} kernels in {done['seconds']:.0f} s; {len(bad)} problems")
    for b in bad:
        print(f"  {b}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

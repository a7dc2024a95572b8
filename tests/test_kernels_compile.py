"""The Triton kernels compiled for GPUs, on a machine without one (prunekit.kernels.compile_check):
every kernel, at every dtype training feeds it (fp32, bf16; fp16 too), every autotuning config, for
sm_80 and sm_90, with tensor cores, no register spills and shared memory within the target's limit.
The interpreter that tests/test_kernels.py runs in never runs Triton's code generator, so this is the
only place a kernel that cannot compile shows on a CPU (issue 19: two module-level floats read inside
@triton.jit functions broke every GPU launch).

Compiling a few hundred kernels is slow (bench/results/kernels_compile.md says how slow); it runs in
one process per core, and results are cached in pytest's cache directory under a key of each kernel's
source hash, the Triton version, the target and the specialisation, so only changed kernels recompile."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prunekit.kernels import compile_check

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def compiler_env():
    """The environment without TRITON_INTERPRET (conftest sets it; the code generator needs it off) and
    without the switch that lets kernels read plain globals."""
    return {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_ALLOW_NON_CONSTEXPR_GLOBALS")}


@pytest.fixture(scope="module")
def compiled(request, tmp_path_factory):
    cache = getattr(request.config, "cache", None)            # None under -p no:cacheprovider
    cache_dir = cache.mkdir("kernels_compile") if cache else tmp_path_factory.mktemp("compile-cache")
    out = tmp_path_factory.mktemp("compile") / "results.json"
    proc = subprocess.run([sys.executable, "-m", "prunekit.kernels.compile_check", "--json", str(out),
                           "--cache", str(cache_dir / "results.json")], env=compiler_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert out.exists(), proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_every_kernel_compiles_for_sm80_and_sm90_with_tensor_cores_and_no_spills(compiled):
    results = compiled["results"]
    assert compiled["uncovered"] == []                   # every @triton.jit function is compiled
    assert compile_check.problems(results) == []
    kernels = {r["kernel"] for r in results}
    assert kernels == {"_attn_fwd", "_attn_bwd_delta", "_attn_bwd_dkdv", "_attn_bwd_dq", "_matmul"}
    for kernel in kernels:
        rows = [r for r in results if r["kernel"] == kernel]
        assert {(r["target"], r["dtype"]) for r in rows} == {(t, d) for t in (80, 90) for d in ("fp32", "bf16", "fp16")}


def test_every_autotuning_config_is_compiled(compiled):
    """Each kernel's configs, as autotuning would time them on a GPU (not the interpreter's single one)."""
    from prunekit.kernels import attention, ffn
    describe = compile_check.describe
    want = {kernel: {describe(c.all_kwargs()) for c in configs} for kernel, configs in (
        ("_attn_fwd", attention.FWD_CONFIGS), ("_attn_bwd_dkdv", attention.DKDV_CONFIGS),
        ("_attn_bwd_dq", attention.DQ_CONFIGS))}
    want["_matmul"] = {describe({"EPILOGUE": e, **c.all_kwargs()}) for name, e in ffn.EPILOGUES.items()
                       for c in (ffn.DH_CONFIGS if name == "dh" else ffn.CONFIGS)}
    for kernel, configs in want.items():
        assert {r["config"] for r in compiled["results"] if r["kernel"] == kernel} == configs, kernel
        assert len(configs) > 1


BAD_KERNEL = '''
    import json, sys
    import torch, triton, triton.language as tl
    from prunekit.kernels import compile_check

    SCALE = {scale}

    @triton.jit
    def _scale(X, Y, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(Y + offs, tl.load(X + offs, mask=offs < n) * SCALE, mask=offs < n)

    def launch(x):
        y = torch.empty_like(x)
        _scale[(1,)](x, y, x.numel(), BLOCK=128)
        return y

    with compile_check.intercepted() as launches:
        launch(torch.zeros(100))
    print(json.dumps(compile_check.compile_all(launches, targets=(90,), progress=False)))
'''


@pytest.mark.parametrize("scale, compiles", [("2.0", False), ("tl.constexpr(2.0)", True)])
def test_a_kernel_reading_a_plain_module_global_fails_to_compile(scale, compiles, tmp_path):
    """What broke every GPU launch before issue 19 (and passes in the interpreter): the check catches it."""
    script = tmp_path / "kernel.py"
    script.write_text(textwrap.dedent(BAD_KERNEL.format(scale=scale)))
    proc = subprocess.run([sys.executable, str(script)], env=compiler_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    [result] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] is compiles, result
    if not compiles:
        assert "Cannot access global variable SCALE" in result["error"]
        [problem] = compile_check.problems([result])
        assert problem.startswith("_scale sm_90") and "does not compile: CompilationError" in problem


def test_the_bench_table_of_one_kernel_says_what_compiled_and_comes_back_from_its_json(tmp_path):
    """bench/kernels_compile.py (the table in bench/results) on one small kernel, in its own process as
    users run it: a row per target x dtype x specialisation, no problems, and --replot writes it again."""
    out = tmp_path / "kc"
    proc = subprocess.run([sys.executable, "bench/kernels_compile.py", "--kernels", "_attn_bwd_delta", "--jobs", "1",
                           "--cache", str(tmp_path / "cache.json"), "--out", str(out)], env=compiler_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "kc.json").read_text())
    assert {r["kernel"] for r in doc["results"]} == {"_attn_bwd_delta"} and doc["triton"]
    assert {(r["target"], r["dtype"]) for r in doc["results"]} == {(t, d) for t in (80, 90) for d in ("fp32", "bf16",
                                                                                                        "fp16")}
    md = (tmp_path / "kc.md").read_text()
    assert md.endswith("Problems: 0\n") and md.count("| _attn_bwd_delta | sm_") == len(doc["results"])
    (tmp_path / "kc.md").unlink()
    proc = subprocess.run([sys.executable, "bench/kernels_compile.py", "--replot", str(tmp_path / "kc.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and (tmp_path / "kc.md").read_text() == md


def test_problems_flags_spills_missing_tensor_cores_and_shared_memory():
    base = dict(kernel="_k", target=90, dtype="bf16", shape="s", config="c", ok=True, error="", mma_sync=0, wgmma=4,
                has_dot=True, registers=128, spill_stores=0, spill_loads=0, shared=1000, seconds=1.0)
    assert compile_check.problems([base]) == []
    assert compile_check.problems([{**base, "wgmma": 0, "mma_sync": 8}]) == ["_k sm_90 bf16 s [c]: no wgmma "
                                                                            "(tensor cores unused)"]
    assert compile_check.problems([{**base, "has_dot": False, "wgmma": 0}]) == []
    assert "spills 8 / 8 bytes" in compile_check.problems([{**base, "spill_stores": 8, "spill_loads": 8}])[0]
    assert "232449 bytes of shared memory > 232448" in compile_check.problems([{**base, "shared": 232449}])[0]
    assert "no mma_sync" in compile_check.problems([{**base, "target": 80}])[0]

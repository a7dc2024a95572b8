"""What the Triton kernels share: the fp32 matmul policy, autotuning, and the launch-time checks.

fp32 policy: every `tl.dot` runs with `input_precision=DOT_PRECISION` = "tf32". bf16 and fp16 inputs
use the tensor cores as they are; fp32 inputs are rounded to TF32 (10-bit mantissa) on the way into
the tensor cores and accumulate in fp32, as cuDNN does by default and PyTorch does under
`torch.backends.cuda.matmul.allow_tf32 = True`. The alternative, "ieee", lowers fp32 dots to plain
FMAs (no tensor cores, and register spills at useful tile sizes), and casting fp32 inputs to bf16 in
the launcher would throw away 3 more mantissa bits than TF32 does. Exact fp32 is `--kernels torch`.
The tests judge the fp32 path against PyTorch's own TF32 matmuls on a GPU (and against fp32 in the
Triton interpreter, which computes dots exactly: tests/test_kernels.py).

Autotuning: each kernel carries a short list of configs (tile sizes, num_warps, num_stages) for
BERT-base and MiniLM shapes (sequence 128 to 512, head dim 32 and 64), keyed on the shape rounded up to
a power of two (`bucket`), so dynamic padding does not re-tune at every new batch length. Every config
is compiled for sm_80 and sm_90 in CI (prunekit.kernels.compile_check, tests/test_kernels_compile.py).
The Triton interpreter cannot autotune (it has no driver to time on), so under TRITON_INTERPRET=1
each kernel keeps one config, the interpreter's: the largest tiles (few programs, fast there).
"""
import os

import triton
import triton.language as tl

DOT_PRECISION = tl.constexpr("tf32")

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

# The oldest Triton the kernels were compiled and checked with (compile_check): 3.7, what torch 2.13
# pins. (tl.dot's input_precision needs 3.0, Blackwell GPUs 3.3: both older than this.)
MIN_TRITON = (3, 7)
MIN_CAPABILITY = (8, 0)  # bf16 tensor cores, and what the configs were compiled for (sm_80, sm_90)


def autotune(configs: list, interpreter_config, key: list[str], **kwargs):
    """triton.autotune over `configs` keyed on `key` (the argument dtypes are added by Triton), or
    the one `interpreter_config` under the interpreter."""
    return triton.autotune([interpreter_config] if INTERPRETING else configs, key=key, **kwargs)


def bucket(n: int) -> int:
    """The autotuning key of a size: the next power of two (16 at least)."""
    return max(16, triton.next_power_of_2(int(n)))


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())


def unsupported_gpu(capability: tuple[int, int], triton_version: str | None = None) -> str | None:
    """Why the kernels cannot run on a GPU of this compute capability with this Triton (None if they can)."""
    triton_version = triton_version or triton.__version__
    have = version_tuple(triton_version)
    if capability < MIN_CAPABILITY:
        return (f"the Triton kernels need compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} "
                f"(bf16 tensor cores), this GPU has {capability[0]}.{capability[1]}")
    if have < MIN_TRITON:
        return (f"triton {triton_version} is too old for the kernels on compute capability "
                f"{capability[0]}.{capability[1]}: need triton >= {MIN_TRITON[0]}.{MIN_TRITON[1]}")
    return None

"""What machine this is: CPU model and features, device names, load. One reader for /proc/cpuinfo.

Everything in prunekit that chooses a path from the CPU's features asks `cpu_flags()` (today:
`native_bf16`, hence --fisher-precision auto, the post-training tuning's precision, the demo's
training precision). PRUNEKIT_CPU_FEATURES overrides what it reports: a space- or comma-separated
list of /proc/cpuinfo flags to assume instead (e.g. "avx avx2 fma" for an AVX2-only CPU). With
ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2 for torch's own
kernels, that runs prunekit as on an AVX2 machine (.ci/run's AVX2 leg); ONNX Runtime picks its
kernels from cpuid and has no such switch.
"""
import os
import platform
from functools import lru_cache
from pathlib import Path

import torch

from .errors import PrunekitError


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


CPU_FEATURES_ENV = "PRUNEKIT_CPU_FEATURES"


def cpu_flags() -> set[str]:
    """The CPU's feature flags, or those $PRUNEKIT_CPU_FEATURES names."""
    override = os.environ.get(CPU_FEATURES_ENV)
    if override is not None:
        return set(override.replace(",", " ").split())
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device) -> bool:
    """Whether bf16 matmuls are native here (and so faster than fp32, not emulated): on a GPU, compute
    capability 8.0 (Ampere) or newer; on a CPU, AVX-512 BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def check_precision(precision: str, device) -> None:
    """--precision bf16 on a GPU without bf16 (compute capability < 8.0) is an error, named with the GPU.
    (On a CPU without native bf16 it runs, emulated and slower: bf16 is asked for, not chosen.)"""
    device = torch.device(device)
    if precision == "bf16" and device.type == "cuda" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise PrunekitError(f"--precision bf16 needs a GPU with bf16 (compute capability >= 8.0); "
                            f"{torch.cuda.get_device_name(device)} has {major}.{minor}: use --precision fp32")


def device_name(device: str = "cpu") -> str:
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, glibc's malloc.h
_heap_kept = None


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    A training step frees and allocates the same buffers every time (activations, gradients, the bf16
    copies autocast makes of every weight). By default glibc serves big blocks with mmap and unmaps
    them on free, or trims them off the top of its heap, so each step touches fresh pages and pays a
    page fault per 4 KiB (bench/results/train_speed_malloc.md). Serving every block from the heap and
    trimming it only above 1 GiB of free memory at its top lets the next step reuse those pages; the
    cost is that the process's resident memory stays near its peak. Process-wide, once; a no-op off
    glibc or with PRUNEKIT_MALLOC=default, and moot under an LD_PRELOADed allocator (jemalloc,
    tcmalloc), which keeps memory its own way. Returns whether glibc took the setting."""
    global _heap_kept
    if _heap_kept is None:
        _heap_kept = False
        if os.environ.get("PRUNEKIT_MALLOC", "") != "default" and platform.libc_ver()[0] == "glibc":
            import ctypes
            try:
                libc = ctypes.CDLL(None)
                _heap_kept = bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
            except (OSError, AttributeError):
                pass
    return _heap_kept

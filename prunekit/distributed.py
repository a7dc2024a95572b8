"""Multi-process training on PyTorch's own engine: `torchrun --nproc_per_node=N -m prunekit.cli ...`
(or `accelerate launch`, which sets the same environment variables).

Each process trains on its share of every global batch (rank r takes examples r, r + N, ... of the
batch the single-process run would take), DistributedDataParallel averages the weight gradients
(NCCL on CUDA, gloo on CPU), and whatever else is learned (CoFi's log alpha, its layer projection)
has its gradients averaged here. Every process evaluates (they hold the same model), only rank 0
writes files, logs and draws progress bars. CoFi's gate noise is drawn on rank 0 and broadcast, so
every process trains under the same masks.
Without the torchrun environment (WORLD_SIZE unset or 1) everything here is a no-op.
"""
import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group that torchrun describes in the environment; False when not launched so."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # CUDA tensors over NCCL; the CPU tensors of the bookkeeping (losses, Fisher gradients, RNG
        # states) over gloo, which NCCL would refuse
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    return True


def shard(indices: list) -> list:
    """This process's share of a global batch: examples r, r + N, ...; a batch smaller than the number
    of processes (a last partial one) lends its examples round, so no process is left without one."""
    n, r = world_size(), rank()
    return indices[r::n] or [indices[r % len(indices)]]


def gather_state(t: torch.Tensor) -> list[torch.Tensor]:
    """Every process's copy of a same-shaped CPU tensor (e.g. its RNG state), on every process."""
    if world_size() == 1:
        return [t]
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t)
    return parts


def average_gradients(parameters) -> None:
    """All-reduce (mean) the gradients of parameters that DistributedDataParallel does not own."""
    n = world_size()
    if n == 1:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(n)


def broadcast_(tensors) -> None:
    """Overwrite every process's tensors with rank 0's."""
    if world_size() > 1:
        for t in tensors:
            dist.broadcast(t, src=0)


def mean(value: float) -> float:
    """The mean of a number over the processes (a loss to log)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world_size()


def gather_batches(local: torch.Tensor, total: int) -> torch.Tensor:
    """Per-batch results (B_r, ...) of the batches r, r + N, ... that process r computed -> all
    `total` of them (total, ...) in the original batch order, on every process."""
    n = world_size()
    if n == 1:
        return local
    size = -(-total // n)  # ceil: the most batches one process has
    padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r::n] = part[:len(range(r, total, n))]
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()

"""What a compressed model must fit: one Budget for both methods.

  kind "sparsity"  value = the share of the encoder parameters removed (CoFi's target)
       "macs"      value = the share of the teacher's MACs kept, at the task's length distribution
       "latency"   value = the share of the teacher's block latency kept on `deployment`, by the
                   block-latency tables of prunekit.latency (timed on the deploy runtime, cached)

latency_table() fetches those tables once per deployment and model shape: under torchrun rank 0
measures and writes the cache while the others wait, then they read it.
"""
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import distributed
from .errors import PrunekitError
from .evaluation import DEFAULT_MAX_LENGTH
from .latency import DEFAULT_CACHE, RUNTIMES, load_or_measure
from .options import FRACTION, THREADS, Range, check_options, option

# kind -> (its flag, what its value is in a few words, the CLI's help)
KINDS = {
    "sparsity": ("--target-sparsity", "share of encoder parameters removed",
                 "fraction of the encoder parameters to remove, in (0, 1) (CoFi's sparsity)"),
    "macs": ("--macs", "share of MACs kept", "fraction of the teacher's MACs to keep, in (0, 1), at the task's "
                                             "measured length distribution"),
    "latency": ("--latency", "share of block latency kept", "fraction of the teacher's block latency to keep, in "
                "(0, 1), from latency tables measured at --latency-batch x --latency-seq-len"),
}


@dataclass
class Deployment:
    """Where a latency budget is measured: the runtime, threads and input shape being served (on the
    run's device)."""
    latency_batch: int = option(32, "deployment batch size for the latency tables",
                                range=Range(1, 10**5))  # a typical serving batch (the paper's GLUE batch)
    latency_seq_len: int = option(DEFAULT_MAX_LENGTH, "deployment sequence length", range=Range(2, 10**6))
    latency_runtime: str = option("ort", "runtime the latency tables are timed on (ort: ONNX Runtime, as deployed)",
                                  choices=RUNTIMES)  # what prunekit deploys on
    latency_threads: int | None = option(None, "CPU threads of the deployment runtime", range=THREADS,
                                         default_text="torch's")  # None: as this process runs
    lut_cache: str | None = option(None, "latency table cache, JSON",
                                   default_text=str(DEFAULT_CACHE).replace(str(Path.home()), "~"))


@dataclass
class Budget:
    """kind ("sparsity", "macs" or "latency"), value in (0, 1), and for latency the deployment."""
    kind: str
    value: float
    deployment: Deployment = field(default_factory=Deployment)

    @property
    def flag(self) -> str:
        return KINDS[self.kind][0] if self.kind in KINDS else self.kind

    @property
    def sparsity(self) -> float:
        """The final target of the constrained quantity (the part removed)."""
        return self.value if self.kind == "sparsity" else 1.0 - self.value

    def check(self, kinds=tuple(KINDS)) -> "Budget":
        """A kind among `kinds` (what a method takes), a value in (0, 1), a sane deployment."""
        if self.kind not in kinds:
            raise PrunekitError(f"unknown budget {self.kind!r} (one of {', '.join(kinds)})")
        if not (isinstance(self.value, (int, float)) and self.value in FRACTION):
            raise PrunekitError(f"{self.flag} must be a fraction strictly between 0 and 1, got {self.value}")
        check_options(self.deployment)
        if self.deployment.lut_cache is not None and Path(self.deployment.lut_cache).is_dir():
            raise PrunekitError(f"--lut-cache {self.deployment.lut_cache} is a directory; it names the JSON file "
                                "of the tables")
        return self

    def check_model(self, config, name: str) -> None:
        """What needs the model: a latency deployment it can serve (its position table)."""
        if self.kind == "latency" and self.deployment.latency_seq_len > config.longest_sequence:
            raise PrunekitError(f"--latency-seq-len {self.deployment.latency_seq_len} is longer than {name} can take "
                                f"({config.longest_sequence} positions)")

    def as_dict(self) -> dict:
        """kind and value, and the deployment where it matters (a latency budget)."""
        return asdict(self) if self.kind == "latency" else {"kind": self.kind, "value": self.value}


def latency_table(budget: Budget, config, device: str = "cpu", progress: bool = True) -> tuple[dict, bool]:
    """(tables, came from the cache) for a latency budget on a model shaped like `config`, on `device`."""
    d = budget.deployment

    def fetch():
        return load_or_measure(config, d.latency_batch, d.latency_seq_len, d.lut_cache, device, d.latency_runtime,
                               progress, d.latency_threads)
    if distributed.is_main():
        result = fetch()
    distributed.barrier()
    if not distributed.is_main():  # rank 0's cache now holds the tables
        result = fetch()
    return result

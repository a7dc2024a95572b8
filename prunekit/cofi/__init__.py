"""CoFi: coarse- and fine-grained structured pruning with L0 gates and distillation (Xia et al. 2022).

  gates.py     hard-concrete gates for z_mha, z_head, z_ffn, z_int, z_hidden; deterministic masks
  sparsity.py  expected size (params, MACs or latency) from the cost model, the target schedule, the Lagrangian
  trainer.py   the pruning loop (prunekit.distill's DistillTrainer + gates, Lagrangian)
  config.py    CoFiConfig and the schedule it gives for a task
  report.py    report.json's CoFi fields
  pipeline.py  the phases end to end: `prunekit compress --method cofi`
"""
from .config import CoFiConfig, Schedule
from .gates import Gates
from .pipeline import METHOD, compress
from .sparsity import ExpectedCost, Lagrangian

__all__ = ["CoFiConfig", "ExpectedCost", "Gates", "Lagrangian", "METHOD", "Schedule", "compress"]

"""CoFi: coarse- and fine-grained structured pruning with L0 gates and distillation (Xia et al. 2022).

  gates.py     hard-concrete gates for z_mha, z_head, z_ffn, z_int, z_hidden; deterministic masks
  sparsity.py  expected size (params or MACs) from the cost model, the target schedule, the Lagrangian
  distill.py   prediction and layer distillation with dynamic layer matching
  trainer.py   the training loop (prunekit's Trainer + gates, Lagrangian, distillation)
  pipeline.py  the phases end to end: `prunekit compress --method cofi`
"""
from .gates import Gates
from .pipeline import CoFiConfig, compress, run
from .sparsity import ExpectedCost, Lagrangian, Target

__all__ = ["CoFiConfig", "ExpectedCost", "Gates", "Lagrangian", "Target", "compress", "run"]

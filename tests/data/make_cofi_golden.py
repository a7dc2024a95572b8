"""Writes tests/data/cofi_golden.json from the code as it is (run once, from the repository root,
before a refactor of the CoFi pipeline; tests/test_cofi_golden.py compares against it)."""
import json
import sys
import tempfile

sys.path.insert(0, "tests")  # run from the repository root
import torch
from conftest import random_batch, synthetic_task, tiny_model
from prunekit.cofi import CoFiConfig, Target, compress

torch.set_num_threads(1)
teacher = tiny_model()
task = synthetic_task(teacher, n_train=48)
with tempfile.TemporaryDirectory() as out:
    torch.manual_seed(0)
    compact, masks, report = compress(teacher, task, Target("sparsity", 0.4), out, CoFiConfig(
        prune_epochs=6, finetune_epochs=2, reg_lr=0.1, batch_size=8, eval_every=6, progress=False))
keep = ("sparsity", "macs_kept", "params_kept", "structure", "hidden_size", "dev_metrics", "constraint",
        "pruning_checkpoint", "schedule", "lambdas", "distill_teacher_layers", "compact_vs_masked_max_abs_diff")
with torch.no_grad():
    logits = compact(**random_batch(batch=4, seq=11)).logits
out = {"compact_logits": logits.tolist(), "report": {k: report[k] for k in keep},
       "report_keys": sorted(report), "masks": {n: t.tolist() for n, t in masks.items()}}
json.dump(out, open("tests/data/cofi_golden.json", "w"), indent=1)
print(json.dumps(out["report"]["dev_metrics"]), out["report"]["sparsity"])

"""Writes tests/data/posttrain_golden.json from the code as it is (run once before a refactor)."""
import json, sys
sys.path.insert(0, "tests")  # run from the repository root
import torch
from conftest import tiny_model
from test_posttrain import synthetic_task
from prunekit.posttrain.pipeline import Constraint, compress

torch.set_num_threads(1)
model = tiny_model()
task = synthetic_task(model)
compact, tuned, report = compress(model, task, Constraint("macs", 0.5), num_samples=64, batch_size=8, progress=False,
                                  max_fit_tokens=None)
keep = ("macs_kept", "params_kept", "structure", "dev_metrics", "constraint", "rearrangement_objective",
        "tuning", "num_samples", "fisher_batches", "tuning_examples", "tuning_tokens", "compact_vs_masked_max_abs_diff")
from conftest import random_batch
with torch.no_grad():
    logits = compact(**random_batch(batch=4, seq=11)).logits
out = {"compact_logits": logits.tolist(), "report": {k: report[k] for k in keep}, "masks": {n: t.tolist() for n, t in tuned.items()}}
json.dump(out, open("tests/data/posttrain_golden.json", "w"), indent=1)
print(json.dumps(out["report"]["dev_metrics"]), out["report"]["macs_kept"])

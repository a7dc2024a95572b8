"""Writes tests/data/posttrain_golden.json from the code as it is (run once before a refactor, from the
repository root): test_posttrain_golden.pinned_run, every precision fp32."""
import json
import sys

sys.path.insert(0, "tests")
import torch  # noqa: E402
from conftest import random_batch  # noqa: E402
from test_posttrain_golden import pinned_run  # noqa: E402

compact, tuned, report = pinned_run()
keep = ("macs_kept", "params_kept", "structure", "dev_metrics", "constraint", "rearrangement_objective",
        "tuning", "num_samples", "fisher_batches", "tuning_examples", "tuning_tokens", "compact_vs_masked_max_abs_diff")
with torch.no_grad():
    logits = compact(**random_batch(batch=4, seq=11)).logits
out = {"compact_logits": logits.tolist(), "report": {k: report[k] for k in keep}, "masks": {n: t.tolist() for n, t in tuned.items()}}
json.dump(out, open("tests/data/posttrain_golden.json", "w"), indent=1)
print(json.dumps(out["report"]["dev_metrics"]), out["report"]["macs_kept"])

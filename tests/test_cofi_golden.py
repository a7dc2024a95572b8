"""CoFi pins: a fixed seed on a tiny model gives the same masks, report figures and compact logits as
the code that wrote tests/data/cofi_golden.json (make_cofi_golden.py, run before the CoFi pipeline was
rebuilt on the shared distillation, budget and harness). A refactor that changes a result fails here.
fp32 throughout; the tolerances leave room for another CPU's float rounding over 48 training steps."""
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import random_batch, synthetic_task, tiny_model
from prunekit.budget import Budget
from prunekit.cofi import CoFiConfig, compress

GOLDEN = json.loads((Path(__file__).parent / "data" / "cofi_golden.json").read_text())


def leaves(obj, path="report") -> dict:
    """path -> value of every number, string and bool in a nested report."""
    if isinstance(obj, dict):
        return {p: v for k, sub in obj.items() for p, v in leaves(sub, f"{path}.{k}").items()}
    if isinstance(obj, list):
        return {p: v for i, sub in enumerate(obj) for p, v in leaves(sub, f"{path}[{i}]").items()}
    return {path: obj}


def close(got: dict, want: dict, rel: float = 1e-3):
    """Every value of `want` in `got`: exact for ints, strings and bools, `rel` relative for floats."""
    got, want = leaves(got), leaves(want)
    assert not set(want) - set(got), f"missing: {set(want) - set(got)}"
    for path, w in want.items():
        g = got[path]
        same = math.isclose(g, w, rel_tol=rel, abs_tol=1e-6) if isinstance(w, float) else g == w
        assert same, f"{path}: {g!r} != {w!r}"


@pytest.mark.usefixtures("one_thread")
def test_cofi_results_are_unchanged_on_a_fixed_seed(tmp_path):
    teacher = tiny_model()
    task = synthetic_task(teacher, n_train=48)
    torch.manual_seed(0)
    compact, masks, report = compress(teacher, task, Budget("sparsity", 0.4), CoFiConfig(
        prune_epochs=6, finetune_epochs=2, reg_lr=0.1, batch_size=8, eval_every=6, progress=False),
        workdir=tmp_path)
    assert sorted(report) == GOLDEN["report_keys"]
    close({k: report[k] for k in GOLDEN["report"]}, GOLDEN["report"])
    kept = {name: getattr(masks, name) for name in GOLDEN["masks"]}
    assert {n: (t != 0).tolist() for n, t in kept.items()} == {n: (torch.tensor(w) != 0).tolist()
                                                               for n, w in GOLDEN["masks"].items()}  # same units
    assert all(torch.allclose(t, torch.tensor(GOLDEN["masks"][n]), rtol=1e-3, atol=1e-5) for n, t in kept.items())
    with torch.no_grad():
        logits = compact(**random_batch(batch=4, seq=11)).logits
    assert torch.allclose(logits, torch.tensor(GOLDEN["compact_logits"]), rtol=1e-3, atol=1e-4)

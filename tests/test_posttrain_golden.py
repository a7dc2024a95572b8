"""Post-training pins: a fixed seed on a tiny model gives the same masks, report figures and compact
logits as the code that produced tests/data/posttrain_golden.json (make_posttrain_golden.py runs
`pinned_run` and writes them). A refactor that changes a result fails here.

Every precision is pinned to fp32: with "auto" the tuning forwards ran in bf16 on CPUs with native bf16
and in fp32 elsewhere, so pins written on one CPU failed on another (issue 19). fp32 GEMMs still round
differently from one CPU's vector width to another's; the 1e-5 relative tolerance absorbs that (the
suite's AVX2 leg in .ci/run runs this test as an AVX2-only machine)."""
import json
import math
from pathlib import Path

import torch

from conftest import random_batch, tiny_model
from test_posttrain import synthetic_task
from prunekit.posttrain.pipeline import Constraint, compress

GOLDEN = json.loads((Path(__file__).parent / "data" / "posttrain_golden.json").read_text())


def close(got, want, path="report"):
    """Recursive comparison: exact for ints, strings and bools, 1e-5 relative for floats."""
    if isinstance(want, dict):
        assert set(got) >= set(want), f"{path}: missing {set(want) - set(got)}"
        for k in want:
            close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6), f"{path}: {got} != {want}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


PINNED = dict(num_samples=64, batch_size=8, progress=False, max_fit_tokens=None,
              fisher_precision="fp32", tune_precision="fp32")   # no precision chosen from the CPU's features


def pinned_run():
    """The pinned post-training run: the tiny model on a synthetic task, half its MACs, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as when the pins were written
    try:
        model = tiny_model()
        return compress(model, synthetic_task(model), Constraint("macs", 0.5), **PINNED)
    finally:
        torch.set_num_threads(threads)


def test_post_training_results_are_unchanged_on_a_fixed_seed():
    compact, tuned, report = pinned_run()
    assert report["tune_precision"] == report["fisher_precision"] == "fp32"
    close(report, GOLDEN["report"])
    for name, want in GOLDEN["masks"].items():
        got = getattr(tuned, name)
        assert torch.equal(got != 0, torch.tensor(want) != 0), f"{name}: different units kept"
        assert torch.allclose(got, torch.tensor(want), rtol=1e-4, atol=1e-6), name
    with torch.no_grad():
        logits = compact(**random_batch(batch=4, seq=11)).logits
    assert torch.allclose(logits, torch.tensor(GOLDEN["compact_logits"]), rtol=1e-4, atol=1e-5)

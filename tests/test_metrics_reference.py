"""prunekit.metrics (written by hand) against scikit-learn and scipy on many seeded random inputs:
accuracy, binary F1 (MRPC, QQP), macro F1 (custom tasks), MCC (CoLA, binary and multi-class), Pearson
and Spearman (STS-B) with many ties, and the degenerate inputs where the libraries define a value.
tests/test_metrics.py has the hand-worked examples; this file checks the same functions at scale.
Needs the dev extra (pip install -e .[dev]): scipy and scikit-learn."""
import math
import random
import warnings

import pytest
import torch

stats = pytest.importorskip("scipy.stats", reason="the metric reference tests need scipy (pip install -e .[dev])")
skm = pytest.importorskip("sklearn.metrics",
                          reason="the metric reference tests need scikit-learn (pip install -e .[dev])")

from prunekit.metrics import accuracy, compute_metrics, f1_binary, f1_macro, mcc, pearson, ranks, spearman  # noqa: E402

# sklearn warns when one class is all there is; its value is still defined (MCC 0), and checked
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
DRAWS = 200  # per seed: 400 draws of each metric


def same(got, want) -> bool:
    """Equal to 1e-9 relative (1e-12 absolute), or both NaN."""
    got, want = float(got), float(want)
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)


def labels(rng, n, k, constant_rate=0.1):
    """n class ids below k; now and then all one class (a collapsed classifier, a one-class dev set)."""
    if rng.random() < constant_rate:
        return [rng.randrange(k)] * n
    return [rng.randrange(k) for _ in range(n)]


def classification_draws(seed, classes):
    rng = random.Random(seed)
    for _ in range(DRAWS):
        n, k = rng.randint(1, 60), rng.choice(classes)
        yield labels(rng, n, k), labels(rng, n, k)


def scores(rng, n):
    """n STS-B-like scores: continuous, or integer/half-integer valued from a small range (many ties)."""
    kind = rng.choice(["gauss", "int", "half"])
    if kind == "gauss":
        return [rng.gauss(2.5, 1.2) for _ in range(n)]
    if kind == "int":
        return [float(rng.randint(0, 3)) for _ in range(n)]
    return [rng.randint(0, 10) / 2 for _ in range(n)]


def scipy_corr(fn, x, y) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # small integer draws can be constant
        return float(fn(x, y).statistic)


# ---------------------------------------------------------------------------------------------
# classification


@pytest.mark.parametrize("seed", range(2))
def test_accuracy_matches_sklearn(seed):
    for pred, gold in classification_draws(seed, (2, 3, 5)):
        assert same(accuracy(pred, gold), skm.accuracy_score(gold, pred)), (pred, gold)
        assert same(compute_metrics("sst2", pred, gold)["accuracy"], skm.accuracy_score(gold, pred)), (pred, gold)


@pytest.mark.parametrize("seed", range(2))
def test_binary_f1_of_the_positive_class_matches_sklearn(seed):
    for pred, gold in classification_draws(100 + seed, (2,)):
        want = skm.f1_score(gold, pred, pos_label=1, average="binary", zero_division=0.0)
        assert same(f1_binary(pred, gold), want), (pred, gold)
        for task in ("mrpc", "qqp"):
            assert same(compute_metrics(task, pred, gold)["f1"], want), (task, pred, gold)
        # the other class as the positive one
        assert same(f1_binary(pred, gold, positive=0),
                    skm.f1_score(gold, pred, pos_label=0, average="binary", zero_division=0.0)), (pred, gold)


@pytest.mark.parametrize("seed", range(2))
def test_macro_f1_matches_sklearn_on_multiclass(seed):
    for pred, gold in classification_draws(200 + seed, (2, 3, 4, 6)):
        want = skm.f1_score(gold, pred, average="macro", zero_division=0.0)  # over the classes in either list
        assert same(f1_macro(pred, gold), want), (pred, gold)
        got = compute_metrics("reviews", pred, gold)  # a custom task: accuracy and macro F1
        assert same(got["f1_macro"], want) and same(got["accuracy"], skm.accuracy_score(gold, pred)), (pred, gold)


@pytest.mark.parametrize("seed", range(2))
def test_mcc_matches_sklearn_binary_and_multiclass(seed):
    for pred, gold in classification_draws(300 + seed, (2, 2, 3, 5)):
        want = skm.matthews_corrcoef(gold, pred)
        assert same(mcc(pred, gold), want), (pred, gold)
        assert same(compute_metrics("cola", pred, gold)["mcc"], want), (pred, gold)


@pytest.mark.parametrize("pred, gold", [
    ([1, 1, 1, 1], [1, 0, 1, 0]),        # constant prediction: MCC 0 (undefined), F1 of class 1 still defined
    ([0, 0, 0, 0], [1, 0, 1, 0]),        # never predicts the positive class: F1 0
    ([0, 1, 0, 1], [1, 1, 1, 1]),        # one-class gold
    ([0, 0, 0], [0, 0, 0]),              # no positive anywhere: F1 0 (0/0), MCC 0
    ([1, 1, 1], [1, 1, 1]),              # all right, one class: MCC 0 (undefined)
    ([1, 0, 1, 0], [1, 0, 1, 0]),        # all right
    ([0, 1, 0, 1], [1, 0, 1, 0]),        # all wrong: MCC -1, F1 0
    ([1], [0]),                          # one example
    ([1], [1]),
    ([2, 2, 0], [0, 1, 1]),              # multi-class, with a class only predicted and one only in gold
    ([0, 1, 2, 3], [3, 2, 1, 0]),
    ([4, 4, 4, 4, 4], [0, 1, 2, 3, 4]),  # multi-class constant prediction
])
def test_degenerate_classification_inputs_match_sklearn(pred, gold):
    assert same(mcc(pred, gold), skm.matthews_corrcoef(gold, pred))
    assert same(accuracy(pred, gold), skm.accuracy_score(gold, pred))
    assert same(f1_macro(pred, gold), skm.f1_score(gold, pred, average="macro", zero_division=0.0))
    if set(pred) | set(gold) <= {0, 1}:
        assert same(f1_binary(pred, gold), skm.f1_score(gold, pred, average="binary", zero_division=0.0))


def test_logits_are_scored_like_their_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 3, generator=g)
    gold = torch.randint(0, 3, (200,), generator=g)
    pred = logits.argmax(-1).tolist()
    got = compute_metrics("reviews", logits, gold)
    assert same(got["accuracy"], skm.accuracy_score(gold.tolist(), pred))
    assert same(got["f1_macro"], skm.f1_score(gold.tolist(), pred, average="macro", zero_division=0.0))
    binary = compute_metrics("cola", logits[:, :2], gold % 2)
    assert same(binary["mcc"], skm.matthews_corrcoef((gold % 2).tolist(), logits[:, :2].argmax(-1).tolist()))


# ---------------------------------------------------------------------------------------------
# correlations (STS-B)


@pytest.mark.parametrize("seed", range(2))
def test_average_ranks_match_scipy_rankdata(seed):
    rng = random.Random(400 + seed)
    for _ in range(DRAWS):
        x = scores(rng, rng.randint(1, 50))
        assert ranks(x) == stats.rankdata(x, method="average").tolist(), x


@pytest.mark.parametrize("seed", range(2))
def test_pearson_and_spearman_match_scipy_with_and_without_ties(seed):
    rng = random.Random(500 + seed)
    for _ in range(DRAWS):
        n = rng.randint(2, 60)
        x, y = scores(rng, n), scores(rng, n)
        if rng.random() < 0.2:  # strongly related: a noisy monotone transform with ties of its own
            y = [round(v ** 3 / 4 + rng.gauss(0, 0.3)) for v in x]
        assert same(pearson(x, y), scipy_corr(stats.pearsonr, x, y)), (x, y)
        assert same(spearman(x, y), scipy_corr(stats.spearmanr, x, y)), (x, y)
        got = compute_metrics("stsb", torch.tensor(x, dtype=torch.float64)[:, None],
                              torch.tensor(y, dtype=torch.float64))
        assert same(got["pearson"], scipy_corr(stats.pearsonr, x, y)), (x, y)
        assert same(got["spearman"], scipy_corr(stats.spearmanr, x, y)), (x, y)


def test_two_points_and_monotone_transforms_match_scipy():
    for x, y in (([1.0, 2.0], [3.0, 5.0]), ([1.0, 2.0], [5.0, 3.0]), ([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 8.0, 27.0]),
                 ([3.0, 1.0, 2.0], [30.0, 10.0, 20.0])):
        assert same(pearson(x, y), stats.pearsonr(x, y).statistic)
        assert same(spearman(x, y), stats.spearmanr(x, y).statistic)


@pytest.mark.parametrize("constant", [0.0, 2.0, 0.5, -3.25, 4.0])
@pytest.mark.parametrize("n", [2, 3, 7, 40])
def test_a_constant_input_has_undefined_correlation_like_scipy(constant, n):
    # constants whose mean is exact in binary floating point; scipy warns and returns NaN
    x, y = [constant] * n, [float(i % 5) for i in range(n)]
    for fn, ours in ((stats.pearsonr, pearson), (stats.spearmanr, spearman)):
        with pytest.warns(stats.ConstantInputWarning):
            want = fn(x, y).statistic
        assert math.isnan(want) and math.isnan(ours(x, y)) and math.isnan(ours(y, x))


def test_a_collapsed_float32_regressor_has_undefined_correlation_like_scipy():
    # what a collapsed STS-B head gives: one float32 value for every sentence pair
    pred = torch.full((1500, 1), 2.7)
    gold = torch.tensor([i % 26 / 5 for i in range(1500)])
    got = compute_metrics("stsb", pred, gold)
    with pytest.warns(stats.ConstantInputWarning):
        want = stats.pearsonr(pred.squeeze(-1).tolist(), gold.tolist()).statistic
    assert math.isnan(want) and math.isnan(got["pearson"]) and math.isnan(got["spearman"])


@pytest.mark.parametrize("x, y", [([0.1, 0.1, 0.1], [0.0, 1.0, 2.0]), ([0.1, 0.1, 0.1], [0.1, 0.2, 0.7])])
def test_a_constant_float64_input_with_an_inexact_mean_is_nan_like_scipy(x, y):
    with pytest.warns(stats.ConstantInputWarning):
        want = stats.pearsonr(x, y).statistic
    assert math.isnan(want)
    assert math.isnan(pearson(x, y)), f"pearson({x}, {y}) = {pearson(x, y)!r}, scipy: {want!r}"

"""GLUE metrics against values worked out by hand (the arithmetic is in each test's comments)."""
import math

import pytest
import torch

from prunekit.metrics import compute_metrics, main_metric, mcc, pearson, ranks, spearman

# 5 binary predictions: tp = 2 (items 0, 4), fp = 1 (item 1), tn = 1 (item 2), fn = 1 (item 3)
PRED = [1, 1, 0, 0, 1]
GOLD = [1, 0, 0, 1, 1]


def test_accuracy_f1_and_mcc_on_a_worked_binary_example():
    m = compute_metrics("mrpc", PRED, GOLD)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))           # 2tp / (2tp + fp + fn) = 4/6
    c = compute_metrics("cola", PRED, GOLD)
    assert c["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))  # (tp tn - fp fn)/sqrt(...) = 1/6


def test_f1_is_of_the_positive_class_not_of_the_majority():
    # swapping which class is called positive changes F1: tp=1, fp=2, fn=1 for class 0
    assert compute_metrics("qqp", PRED, GOLD)["f1"] == pytest.approx(4 / 6)
    flipped = compute_metrics("qqp", [1 - p for p in PRED], [1 - g for g in GOLD])["f1"]
    assert flipped == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


def test_mcc_edge_cases():
    assert mcc([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert mcc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0  # constant prediction: undefined, 0 by convention
    # three classes, confusion rows=gold [[2,1,0],[0,1,1],[0,0,1]]: s=6, c=4, t=(3,2,1), p=(2,2,2)
    # (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (24 - 12) / sqrt((36 - 12)(36 - 14)) = 12 / sqrt(528)
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    assert mcc(pred, gold) == pytest.approx(12 / math.sqrt(528))


def test_ranks_average_ties():
    assert ranks([10, 20, 20, 5, 20]) == [2.0, 4.0, 4.0, 1.0, 4.0]  # the three 20s share ranks 3, 4, 5
    assert ranks([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]


def test_pearson_and_spearman_with_ties():
    x, y = [1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0]
    # pearson: deviations x (-1, 0, 0, 1), y (-1.5, .5, -.5, 1.5): 3 / sqrt(2 * 5)
    assert pearson(x, y) == pytest.approx(3 / math.sqrt(10))
    # spearman: ranks x (1, 2.5, 2.5, 4), y (1, 3, 2, 4): deviations (-1.5, 0, 0, 1.5), (-1.5, .5, -.5, 1.5)
    # -> 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman(x, y) == pytest.approx(math.sqrt(0.9))
    m = compute_metrics("stsb", torch.tensor([[1.0], [2.0], [2.0], [3.0]]), torch.tensor(y))
    assert m == pytest.approx({"pearson": 3 / math.sqrt(10), "spearman": math.sqrt(0.9)})


def test_monotone_but_nonlinear_scores_have_spearman_one_and_pearson_below():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [v ** 3 for v in x]
    assert spearman(x, y) == pytest.approx(1.0)
    assert pearson(x, y) < 0.99


def test_constant_predictions_have_undefined_correlation():
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_logits_are_argmaxed():
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])  # -> 1, 0, 1
    assert compute_metrics("sst2", logits, torch.tensor([1, 1, 1])) == {"accuracy": pytest.approx(2 / 3)}


def test_each_task_reports_its_glue_metrics():
    pred, gold = [0, 1, 2, 1], [0, 1, 1, 1]
    assert set(compute_metrics("mnli", pred, gold)) == {"accuracy"}
    assert set(compute_metrics("rte", [0, 1], [0, 1])) == {"accuracy"}
    assert set(compute_metrics("cola", [0, 1], [0, 1])) == {"mcc", "accuracy"}
    custom = compute_metrics("reviews", pred, gold)  # not GLUE: accuracy and macro F1
    # F1 per class: class 0 = 1, class 1 = 2*2/(4+0+1) = 0.8, class 2 = 0 (one false positive)
    assert custom == pytest.approx({"accuracy": 0.75, "f1_macro": (1 + 0.8 + 0) / 3})


def test_main_metric_per_task():
    assert {t: main_metric(t) for t in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")} == {
        "cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "stsb": "spearman", "qqp": "f1", "mnli": "accuracy",
        "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    assert main_metric("my-custom-task") == "accuracy"


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="^2 predictions for 1 labels$"):
        compute_metrics("sst2", [1, 0], [1])
    with pytest.raises(ValueError, match="^no examples to score$"):
        compute_metrics("sst2", [], [])

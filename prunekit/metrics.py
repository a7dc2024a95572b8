"""GLUE metrics, written out by hand (no scipy or sklearn), with GLUE's conventions per task:

  CoLA                      mcc (Matthews correlation)
  SST-2, QNLI, RTE, WNLI    accuracy
  MRPC, QQP                 f1 (of the positive class, label 1) and accuracy
  STS-B                     pearson and spearman (ties get their average rank)
  MNLI                      accuracy on each dev set (training.evaluate_task adds _mm for mismatched)
  custom data               accuracy and macro-averaged f1

Undefined correlations (a constant input) are NaN, as in scipy. MCC with an empty row or column
of the confusion matrix is 0, as in sklearn.
"""
import math

import torch

MAIN = {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "stsb": "spearman", "qqp": "f1", "mnli": "accuracy",
        "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}


def main_metric(task_name: str) -> str:
    """The one number a pruning method should report and select on for this task."""
    return MAIN.get(task_name, "accuracy")


def as_list(x) -> list:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return [v.item() if hasattr(v, "item") else v for v in x]


def accuracy(pred, gold) -> float:
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def confusion(pred, gold, k: int) -> list[list[int]]:
    """k x k counts, rows = gold class, columns = predicted class."""
    m = [[0] * k for _ in range(k)]
    for p, g in zip(pred, gold):
        m[g][p] += 1
    return m


def f1_binary(pred, gold, positive: int = 1) -> float:
    tp = sum(p == positive and g == positive for p, g in zip(pred, gold))
    fp = sum(p == positive and g != positive for p, g in zip(pred, gold))
    fn = sum(p != positive and g == positive for p, g in zip(pred, gold))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def f1_macro(pred, gold) -> float:
    classes = sorted(set(gold) | set(pred))
    return sum(f1_binary(pred, gold, c) for c in classes) / len(classes)


def mcc(pred, gold) -> float:
    """Matthews correlation, the multi-class form (Gorodkin 2004); for two classes it is
    (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))."""
    k = max(max(pred), max(gold)) + 1
    m = confusion(pred, gold, k)
    s = len(gold)                                             # samples
    c = sum(m[i][i] for i in range(k))                        # correct
    t = [sum(m[i]) for i in range(k)]                         # times class i truly occurred
    p = [sum(m[j][i] for j in range(k)) for i in range(k)]    # times class i was predicted
    denom = math.sqrt((s * s - sum(x * x for x in p)) * (s * s - sum(x * x for x in t)))
    return (c * s - sum(ti * pi for ti, pi in zip(t, p))) / denom if denom else 0.0


def pearson(x, y) -> float:
    """Pearson's r; NaN when either input is constant (tested on the values, as scipy does: a constant
    input whose mean is inexact in floating point would otherwise give about 0)."""
    n = len(x)
    if all(a == x[0] for a in x) or all(b == y[0] for b in y):
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    dx, dy = [a - mx for a in x], [b - my for b in y]
    sxx, syy = sum(a * a for a in dx), sum(b * b for b in dy)
    return sum(a * b for a, b in zip(dx, dy)) / math.sqrt(sxx * syy)


def ranks(x) -> list[float]:
    """1-based ranks; tied values share the average of the ranks they span."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1  # average of ranks i+1 .. j+1
        i = j + 1
    return r


def spearman(x, y) -> float:
    return pearson(ranks(x), ranks(y))


def compute_metrics(task_name: str, predictions, labels) -> dict:
    """predictions: class ids, or (N, C) logits (argmax is taken); for STS-B, scores or (N, 1) logits."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no examples to score")
    if isinstance(predictions, torch.Tensor) and predictions.dim() == 2:
        predictions = predictions.squeeze(-1) if task_name == "stsb" else predictions.argmax(-1)
    pred, gold = as_list(predictions), as_list(labels)
    if task_name == "stsb":
        pred, gold = [float(v) for v in pred], [float(v) for v in gold]
        return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}
    pred, gold = [int(v) for v in pred], [int(v) for v in gold]
    if task_name == "cola":
        return {"mcc": mcc(pred, gold), "accuracy": accuracy(pred, gold)}
    if task_name in ("mrpc", "qqp"):
        return {"f1": f1_binary(pred, gold), "accuracy": accuracy(pred, gold)}
    if task_name in MAIN:
        return {"accuracy": accuracy(pred, gold)}
    return {"accuracy": accuracy(pred, gold), "f1_macro": f1_macro(pred, gold)}

"""Metrics against a brute-force reference written here and, when installed, scikit-learn;
random multi-label data with many tied scores."""

import math

import pytest
import torch

from avmae.train.metrics import (
    accuracy,
    average_precision,
    classification_report,
    mean_average_precision,
    mean_roc_auc,
    roc_auc,
)


def brute_ap(scores, targets):
    """AP = sum over distinct thresholds (highest first) of (R_n - R_{n-1}) P_n."""
    s, t = scores.tolist(), [int(v) for v in targets.tolist()]
    npos = sum(t)
    if npos == 0:
        return math.nan
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(s), reverse=True):
        tp = sum(1 for si, ti in zip(s, t) if si >= thr and ti)
        pp = sum(1 for si in s if si >= thr)
        recall = tp / npos
        ap += (recall - prev_recall) * tp / pp
        prev_recall = recall
    return ap


def brute_auc(scores, targets):
    pos = [s for s, t in zip(scores.tolist(), targets.tolist()) if t]
    neg = [s for s, t in zip(scores.tolist(), targets.tolist()) if not t]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def random_multilabel(n=60, c=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, c, generator=g).mul(10).round().div(10)  # 11 distinct values: many ties
    targets = (torch.rand(n, c, generator=g) < 0.3).float()
    targets[:, 5] = 0  # a class without positives
    targets[:, 6] = 1  # a class without negatives
    return scores, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_brute_force_with_ties(seed):
    scores, targets = random_multilabel(seed=seed)
    m, per_class = mean_average_precision(scores, targets)
    ref = [brute_ap(scores[:, j], targets[:, j]) for j in range(scores.shape[1])]
    for j, r in enumerate(ref):
        if math.isnan(r):
            assert math.isnan(per_class[j])
        else:
            assert per_class[j].item() == pytest.approx(r, abs=1e-12)
            assert average_precision(scores[:, j], targets[:, j]) == pytest.approx(r, abs=1e-12)
    valid = [r for r in ref if not math.isnan(r)]
    assert m == pytest.approx(sum(valid) / len(valid), abs=1e-12)
    assert math.isnan(per_class[5]) and len(valid) == 6  # excluded from the mean


def test_ties_are_one_threshold_not_sort_order():
    # a positive tied with a negative at the top: precision 1/2 there, whichever sorts first
    scores = torch.tensor([0.9, 0.9, 0.1])
    assert average_precision(scores, torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(0.5)
    assert average_precision(scores, torch.tensor([0.0, 1.0, 0.0])) == pytest.approx(0.5)
    assert average_precision(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])) == 1.0


@pytest.mark.parametrize("seed", [0, 3])
def test_auc_matches_brute_force(seed):
    scores, targets = random_multilabel(seed=seed)
    mean_auc, per_class = mean_roc_auc(scores, targets)
    for j in range(scores.shape[1]):
        r = brute_auc(scores[:, j], targets[:, j])
        got = per_class[j].item()
        assert (math.isnan(r) and math.isnan(got)) or got == pytest.approx(r, abs=1e-12)
    assert roc_auc(scores[:, 0], targets[:, 0]) == pytest.approx(brute_auc(scores[:, 0], targets[:, 0]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_against_sklearn(seed):
    metrics = pytest.importorskip("sklearn.metrics")  # the brute-force tests above run without it
    scores, targets = random_multilabel(n=200, c=9, seed=seed)
    m, per_class = mean_average_precision(scores, targets)
    ref = [
        metrics.average_precision_score(targets[:, j].numpy(), scores[:, j].numpy())
        for j in range(9)
        if targets[:, j].sum() > 0
    ]
    got = [v for v in per_class.tolist() if not math.isnan(v)]
    assert got == pytest.approx(ref, abs=1e-12)
    assert m == pytest.approx(sum(ref) / len(ref), abs=1e-12)
    _, auc = mean_roc_auc(scores, targets)
    for j in range(9):
        if 0 < targets[:, j].sum() < targets.shape[0]:
            assert auc[j].item() == pytest.approx(
                metrics.roc_auc_score(targets[:, j].numpy(), scores[:, j].numpy()), abs=1e-12
            )


def test_accuracy_topk_indices_onehot_and_soft():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 3.0, 2.0], [1.0, 0.0, 0.0, 0.5]])
    idx = torch.tensor([0, 3, 2])
    acc = accuracy(logits, idx, topk=(1, 2, 5))
    assert acc == {"acc1": pytest.approx(1 / 3), "acc2": pytest.approx(2 / 3), "acc5": 1.0}
    assert accuracy(logits, torch.nn.functional.one_hot(idx, 4).float(), topk=(1,)) == {"acc1": pytest.approx(1 / 3)}
    soft = torch.tensor([[0.6, 0.4, 0, 0], [0, 0, 0.45, 0.55], [0.1, 0, 0.9, 0]])  # mixup-style
    assert accuracy(logits, soft, topk=(1,))["acc1"] == pytest.approx(1 / 3)


def test_classification_report_rows():
    scores, targets = random_multilabel(n=30, c=7)
    summary, rows = classification_report(scores, targets, multilabel=True, class_names=[f"c{j}" for j in range(7)])
    assert summary["mAP"] == pytest.approx(mean_average_precision(scores, targets)[0])
    assert summary["classes_with_positives"] == 6 and rows[5]["ap"] is None and rows[2]["name"] == "c2"
    assert type(summary["num_items"]) is int and type(summary["classes_with_positives"]) is int  # counts stay integers
    logits = torch.randn(20, 3)
    y = torch.arange(20) % 3
    summary, rows = classification_report(logits, y, multilabel=False)
    assert summary["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert sum(r["count"] for r in rows) == 20


def test_format_metrics_prints_counts_as_integers():
    from avmae.train.logging_utils import format_metrics

    line = format_metrics(
        {"acc": 0.98333, "num_items": 60, "loss": torch.tensor(0.25), "a2v_medr": 7, "mAP": float("nan"), "note": None}
    )
    assert line == "acc 0.9833, num_items 60, loss 0.2500, a2v_medr 7, mAP nan, note None"
    assert format_metrics({"acc": 1.0}) == "acc 1.0000"  # a float stays a float, whatever its value

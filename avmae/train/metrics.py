"""Classification metrics in torch: average precision and mAP as scikit-learn computes them,
ROC-AUC, top-k accuracy, and one summary for the fine-tuning evaluation.

Shapes: ``scores [N, C]`` (logits or probabilities: only their order matters), ``targets [N, C]``
multi-hot (soft targets are binarised: positive where ``target >= 0.5``), or ``targets [N]``
class indices for ``accuracy``.

Average precision is the area under the un-interpolated precision-recall curve at the distinct
score thresholds, as ``sklearn.metrics.average_precision_score``:

    AP = sum_n (R_n - R_{n-1}) * P_n      n over distinct thresholds, highest first, R_0 = 0

Tied scores form one threshold (``precision_recall_curve`` groups them), so a tie of a positive
and a negative costs the positive half its precision, whatever order the sort left them in.
Equivalently ``AP = mean over positives of the precision at the end of the positive's tie group``,
which is what the vectorised code below computes for every class at once.

mAP rule: the mean of the per-class APs over the classes that have at least one positive in
``targets``. A class without positives has no defined AP (scikit-learn warns and returns 0 for it);
it is ``NaN`` in the per-class output and left out of the mean. AudioMAE's ``calculate_stats``
averages all 527 classes, which is the same number on AudioSet's eval set, where every class has
positives.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "average_precision",
    "mean_average_precision",
    "roc_auc",
    "mean_roc_auc",
    "accuracy",
    "class_indices",
    "classification_report",
]


def _as_2d(scores: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    squeeze = scores.dim() == 1
    if squeeze:
        scores, targets = scores.unsqueeze(1), targets.reshape(-1, 1)
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be [N] or [N, C] of one shape, got {list(scores.shape)} and"
            f" {list(targets.shape)}"
        )
    return scores.detach().double().cpu(), (targets.detach().double().cpu() >= 0.5).double(), squeeze


def _tie_group_ends(sorted_scores: torch.Tensor) -> torch.Tensor:
    """``sorted_scores [N, C]`` (sorted along N) -> ``[N, C]`` index of the last row of each
    row's run of equal scores."""
    n = sorted_scores.shape[0]
    is_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    idx = torch.arange(n).unsqueeze(1).expand_as(sorted_scores)
    marked = torch.where(is_end, idx, torch.full_like(idx, n))
    return marked.flip(0).cummin(0).values.flip(0)  # nearest end at or below each row


def _tie_group_starts(sorted_scores: torch.Tensor) -> torch.Tensor:
    """Index of the first row of each row's run of equal scores."""
    is_start = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_start[1:] = sorted_scores[1:] != sorted_scores[:-1]
    idx = torch.arange(sorted_scores.shape[0]).unsqueeze(1).expand_as(sorted_scores)
    return torch.where(is_start, idx, torch.full_like(idx, -1)).cummax(0).values


def _per_class_ap(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` float64 scores, {0, 1} targets -> ``[C]`` AP (NaN where a class has no positive)."""
    if scores.shape[0] == 0:
        return torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    sorted_scores, order = scores.sort(dim=0, descending=True, stable=True)
    t = targets.gather(0, order)
    ends = _tie_group_ends(sorted_scores)
    tp_at_end = t.cumsum(0).gather(0, ends)
    precision_at_end = tp_at_end / (ends + 1).double()
    positives = t.sum(0)
    ap = (t * precision_at_end).sum(0) / positives.clamp_min(1)
    return torch.where(positives > 0, ap, torch.full_like(ap, math.nan))


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """AP of one class: ``scores [N]``, ``targets [N]`` in {0, 1} -> float (NaN without positives).
    Equal to ``sklearn.metrics.average_precision_score(targets, scores)``."""
    s, t, _ = _as_2d(scores, targets)
    return float(_per_class_ap(s, t)[0])


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> Tuple[float, torch.Tensor]:
    """``scores, targets [N, C]`` -> ``(mAP, per-class AP [C] float64)``.

    mAP is the mean over classes with at least one positive; the others are NaN in the per-class
    tensor and excluded (mAP is NaN when no class has a positive)."""
    s, t, _ = _as_2d(scores, targets)
    ap = _per_class_ap(s, t)
    valid = ~torch.isnan(ap)
    return (float(ap[valid].mean()) if bool(valid.any()) else math.nan), ap


def _per_class_auc(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ROC-AUC per class with ties counted as one half (the trapezoid under ``roc_curve``, as
    ``sklearn.metrics.roc_auc_score``); NaN where a class lacks positives or negatives."""
    n = scores.shape[0]
    if n == 0:
        return torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    sorted_scores, order = scores.sort(dim=0, stable=True)
    t = targets.gather(0, order)
    # 1-based average rank of each tie group (Mann-Whitney U)
    ranks = (_tie_group_starts(sorted_scores) + _tie_group_ends(sorted_scores)).double() / 2 + 1
    pos = t.sum(0)
    neg = n - pos
    u = (t * ranks).sum(0) - pos * (pos + 1) / 2
    auc = u / (pos * neg).clamp_min(1)
    return torch.where((pos > 0) & (neg > 0), auc, torch.full_like(auc, math.nan))


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """ROC-AUC of one class (``sklearn.metrics.roc_auc_score``); NaN without both classes."""
    s, t, _ = _as_2d(scores, targets)
    return float(_per_class_auc(s, t)[0])


def mean_roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> Tuple[float, torch.Tensor]:
    """``(mean AUC over classes with positives and negatives, per-class AUC [C])``."""
    s, t, _ = _as_2d(scores, targets)
    auc = _per_class_auc(s, t)
    valid = ~torch.isnan(auc)
    return (float(auc[valid].mean()) if bool(valid.any()) else math.nan), auc


def class_indices(targets: torch.Tensor) -> torch.Tensor:
    """Single-label targets as ``[N]`` class indices: indices pass through, one-hot or soft
    ``[N, C]`` rows become their argmax."""
    return targets.argmax(dim=1) if targets.dim() == 2 else targets.long()


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy of single-label predictions -> ``{"acc1": fraction, "acc5": ...}``.

    ``logits [N, C]``; ``targets [N]`` class indices, or ``[N, C]`` one-hot/soft (argmax).
    ``k`` larger than ``C`` counts as ``C`` (every prediction is then right)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, C], got {list(logits.shape)}")
    y = class_indices(targets).to(logits.device)
    if y.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions but {y.shape[0]} targets")
    n, c = logits.shape
    if n == 0:
        return {f"acc{k}": math.nan for k in topk}
    kmax = min(max(topk), c)
    top = logits.topk(kmax, dim=1).indices  # [N, kmax]
    hit = top == y.unsqueeze(1)
    return {f"acc{k}": float(hit[:, : min(k, c)].any(dim=1).double().mean()) for k in topk}


def _finite(x: float) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


def classification_report(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    multilabel: bool,
    class_names: Optional[Sequence[str]] = None,
    class_ids: Optional[Sequence[str]] = None,
    topk: Sequence[int] = (1, 5),
) -> Tuple[Dict[str, Union[int, float]], List[Dict[str, Any]]]:
    """The evaluation of a classifier -> ``(summary, per_class)``.

    Multi-label: summary ``mAP`` and ``mAUC`` (rules above), ``acc`` of the top class against the
    argmax target, ``classes_with_positives``; per class ``ap``, ``auc``, ``positives``.
    Single-label: summary ``acc`` (top-1), ``acc5`` (top-k for each other k of ``topk``) and
    ``mAP`` (one-vs-rest, for comparison); per class
    ``accuracy`` (recall of that class), ``ap``, ``count``. NaN values become ``None`` (JSON null).
    """
    logits = logits.detach().float().cpu()
    targets = targets.detach().float().cpu()
    n, c = logits.shape
    onehot = targets if targets.dim() == 2 else torch.nn.functional.one_hot(targets.long(), c).float()
    mean_ap, ap = mean_average_precision(logits, onehot)
    summary: Dict[str, Union[int, float]] = {"num_items": int(n)}  # counts stay integers
    per_class: List[Dict[str, Any]] = []
    if multilabel:
        mean_auc, auc = mean_roc_auc(logits, onehot)
        positives = (onehot >= 0.5).sum(0)
        summary.update({"mAP": mean_ap, "mAUC": mean_auc, "classes_with_positives": int((positives > 0).sum())})
        summary["acc"] = accuracy(logits, onehot, (1,))["acc1"]
        for j in range(c):
            per_class.append(
                {"index": j, "ap": _finite(float(ap[j])), "auc": _finite(float(auc[j])), "positives": int(positives[j])}
            )
    else:
        summary.update({("acc" if k == "acc1" else k): v for k, v in accuracy(logits, onehot, topk).items()})
        summary["mAP"] = mean_ap
        y = class_indices(onehot)
        pred = logits.argmax(1)
        for j in range(c):
            sel = y == j
            count = int(sel.sum())
            acc = float((pred[sel] == j).double().mean()) if count else math.nan
            per_class.append({"index": j, "accuracy": _finite(acc), "ap": _finite(float(ap[j])), "count": count})
    for row in per_class:
        j = row["index"]
        if class_ids is not None and j < len(class_ids):
            row["id"] = class_ids[j]
        if class_names is not None and j < len(class_names):
            row["name"] = class_names[j]
    return summary, per_class

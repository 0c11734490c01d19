"""A quick read of a frozen encoder: kNN and a linear probe on its clip embeddings.

    train clips --encoder (frozen)--> x_train [N, D], y_train [N, C]
    eval clips  --encoder (frozen)--> x_eval  [M, D] --kNN / linear head--> scores [M, C] --> acc / mAP

- ``knn_scores``: cosine similarity of each eval vector to every training vector; the ``k`` most
  similar vote with weight ``exp(similarity / temperature)`` (the weighted kNN of DINO / InstDisc);
  a class's score is the sum of the votes of the neighbours carrying it.
- ``linear_probe``: a ``Linear(D, C)`` on the training vectors standardised with their own mean and
  std, trained with AdamW for a few epochs (cross-entropy, or BCE for multi-label data), scored on
  the eval vectors standardised the same way.

``embed_items`` computes the embeddings with ``avmae.extract.EmbeddingExtractor`` (a clip's windows
averaged, short clips at their own length). The scores go to ``avmae.train.metrics``:
accuracy for single-label data, mAP for multi-label data.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

_logger = logging.getLogger(__name__)

__all__ = ["knn_scores", "linear_probe", "embed_items", "label_matrix", "score"]


def label_matrix(items: Sequence[Mapping[str, Any]], class_ids: Sequence[str], where: str = "") -> torch.Tensor:
    """Multi-hot ``[N, C]`` of manifest items (comma-separated ``labels`` ids of ``class_ids``)."""
    index = {c: i for i, c in enumerate(class_ids)}
    y = torch.zeros(len(items), len(class_ids))
    for n, item in enumerate(items):
        for lab in (x.strip() for x in str(item.get("labels", "")).split(",") if x.strip()):
            if lab not in index:
                raise KeyError(f"{where}: label {lab!r} of {item.get('wav')} is not in the label CSV")
            y[n, index[lab]] = 1.0
    return y


def embed_items(
    paths: Sequence[str], extractor, *, batch_size: int = 32, num_workers: int = 0, progress: bool = False
) -> Tuple[torch.Tensor, List[int]]:
    """Embeddings ``[N', D]`` of the readable ``paths`` and the indices they came from (unreadable
    files are skipped and logged)."""
    from .extract import extract

    vecs, kept = [], []
    for res in extract(list(paths), extractor, batch_size=batch_size, num_workers=num_workers, progress=progress):
        if res.arrays is None:
            continue
        vecs.append(torch.from_numpy(res.arrays["embedding"]))
        kept.append(res.index)
    if not vecs:
        raise ValueError(f"none of the {len(paths)} clips could be read")
    return torch.stack(vecs).float(), kept


def knn_scores(
    train_x: torch.Tensor, train_y: torch.Tensor, eval_x: torch.Tensor, *, k: int = 20, temperature: float = 0.07
) -> torch.Tensor:
    """Weighted kNN on cosine similarity -> class scores ``[M, C]`` (see the module doc).
    ``train_x [N, D]``, ``train_y [N, C]`` multi-hot, ``eval_x [M, D]``."""
    k = max(1, min(int(k), train_x.shape[0]))
    a = F.normalize(train_x.double(), dim=1)
    b = F.normalize(eval_x.double(), dim=1)
    sim = b @ a.T  # [M, N]
    top, idx = sim.topk(k, dim=1)
    weights = torch.exp((top - 1.0) / temperature)  # shifted by the largest possible similarity: no overflow
    votes = train_y.double()[idx]  # [M, k, C]
    return (weights.unsqueeze(-1) * votes).sum(1).float()


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    *,
    multilabel: bool,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
) -> torch.Tensor:
    """A linear head on standardised frozen features -> eval logits ``[M, C]`` (see the module doc)."""
    g = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    xt, xe = (train_x - mean) / std, (eval_x - mean) / std
    head = torch.nn.Linear(xt.shape[1], train_y.shape[1])
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        _train_head(head, opt, xt, train_y, multilabel=multilabel, epochs=epochs, batch_size=batch_size, generator=g)
    with torch.no_grad():
        return head(xe)


def _train_head(head, opt, xt, train_y, *, multilabel: bool, epochs: int, batch_size: int, generator) -> None:
    n = xt.shape[0]
    for _ in range(int(epochs)):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            sel = order[start : start + batch_size]
            logits = head(xt[sel])
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, train_y[sel])
            else:
                loss = F.cross_entropy(logits, train_y[sel] / train_y[sel].sum(1, keepdim=True).clamp_min(1.0))
            opt.zero_grad()
            loss.backward()
            opt.step()


def score(
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    multilabel: bool,
    class_names: Optional[Sequence[str]] = None,
    class_ids: Optional[Sequence[str]] = None,
) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
    """``avmae.train.metrics.classification_report`` with only the metric of the data's kind in the
    summary: ``mAP``, ``mAUC`` for multi-label data, ``acc``, ``acc5`` for single-label data."""
    from .train.metrics import classification_report

    summary, per_class = classification_report(
        scores, labels, multilabel=multilabel, class_names=class_names, class_ids=class_ids
    )
    keep = ("mAP", "mAUC", "num_items", "classes_with_positives") if multilabel else ("acc", "acc5", "num_items")
    return {k: v for k, v in summary.items() if k in keep}, per_class

"""AudioSet-style balanced sampling weights, as AudioMAE's ``dataset/audioset/gen_weight.py``.

Each label gets ``1000 / (count + 0.01)`` (``count``: items carrying it), each item the sum of its
labels' weights, so clips of rare classes are drawn more often. AudioMAE's AS-2M fine-tuning feeds
these to ``WeightedRandomSampler(weights, num_samples=200000, replacement=False)`` per epoch.

The weight file is one float per line (``numpy.savetxt``), in manifest order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch

from .data import read_label_csv, read_manifest
from .data.datasets import ManifestError

_logger = logging.getLogger(__name__)

__all__ = ["label_counts", "balanced_weights", "save_weights", "load_weights"]

PathLike = Union[str, os.PathLike]


def _items(manifest: Union[PathLike, Sequence[Mapping[str, Any]]]) -> List[Mapping[str, Any]]:
    if not isinstance(manifest, (str, os.PathLike)):
        return list(manifest)
    try:
        return read_manifest(manifest)
    except ManifestError as first:  # an audio-visual manifest ("video" files, no "wav")
        try:
            from .data.av_dataset import read_av_manifest

            return read_av_manifest(manifest)
        except (ImportError, ManifestError):
            raise first from None


def _ids(label_csv: Union[PathLike, Sequence[str]]) -> List[str]:
    return read_label_csv(label_csv)[0] if isinstance(label_csv, (str, os.PathLike)) else list(label_csv)


def _item_labels(item: Mapping[str, Any], index_of: Dict[str, int], where: str) -> List[int]:
    out = []
    for mid in str(item.get("labels", "")).split(","):
        mid = mid.strip()
        if not mid:
            continue
        if mid not in index_of:
            raise KeyError(f"{where}: label {mid!r} of {item.get('wav')} is not in the label CSV")
        out.append(index_of[mid])
    return out


def label_counts(
    manifest: Union[PathLike, Sequence[Mapping[str, Any]]], label_csv: Union[PathLike, Sequence[str]]
) -> Tuple[torch.Tensor, List[List[int]]]:
    """-> (count per label ``[C]`` float64, label indices of each item)."""
    items, ids = _items(manifest), _ids(label_csv)
    index_of = {mid: i for i, mid in enumerate(ids)}
    where = os.fspath(manifest) if isinstance(manifest, (str, os.PathLike)) else "<manifest>"
    per_item = [_item_labels(item, index_of, where) for item in items]
    counts = torch.zeros(len(ids), dtype=torch.float64)
    for labels in per_item:
        for j in labels:
            counts[j] += 1
    return counts, per_item


def balanced_weights(
    manifest: Union[PathLike, Sequence[Mapping[str, Any]]], label_csv: Union[PathLike, Sequence[str]]
) -> torch.Tensor:
    """Per-item sampling weights ``[N]`` float64: the sum over the item's labels of
    ``1000 / (label count + 0.01)``. An item without labels gets 0 (never drawn) and is logged.

    manifest: a manifest path or a list of items (``{"wav": ..., "labels": "mid1,mid2"}``);
    label_csv: ``class_labels_indices.csv`` or the list of label ids in index order.
    """
    counts, per_item = label_counts(manifest, label_csv)
    label_weight = 1000.0 / (counts + 0.01)
    weights = torch.zeros(len(per_item), dtype=torch.float64)
    for i, labels in enumerate(per_item):
        for j in labels:
            weights[i] += label_weight[j]
    empty = sum(1 for labels in per_item if not labels)
    if empty:
        _logger.warning("%d of %d items have no labels: weight 0, never drawn", empty, len(per_item))
    return weights


def save_weights(weights: Union[torch.Tensor, np.ndarray, Sequence[float]], path: PathLike) -> Path:
    """One float per line, as ``numpy.savetxt`` writes (the official weight files' format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.asarray(torch.as_tensor(weights, dtype=torch.float64)), delimiter=",")
    return path


def load_weights(path: PathLike) -> torch.Tensor:
    """Read a weight file (one float per line) -> ``[N]`` float64."""
    return torch.from_numpy(np.atleast_1d(np.loadtxt(path, delimiter=",", dtype=np.float64)))

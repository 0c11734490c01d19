"""Metric records: one JSON object per line in ``metrics.jsonl``, mirrored to accelerate's trackers.

Only the main process writes. A record is ``{"step": int, "time": float, <name>: number, ...}``
with names such as ``train/loss``, ``train/lr``, ``eval/loss``. On resume the records after the
resumed step are dropped, so the file always describes one consistent run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = ["MetricsWriter", "read_metrics"]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricsWriter:
    """Append metric records to ``path`` (main process only) and to ``accelerator.log``."""

    def __init__(self, path: PathLike, accelerator=None, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.accelerator = accelerator
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step > step`` (a resumed run repeats them)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip() and _step_of(line) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping[str, Any]) -> Dict[str, Any]:
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.accelerator is not None:
            numeric = {k: v for k, v in record.items() if k not in ("step", "time") and isinstance(v, (int, float))}
            self.accelerator.log(numeric, step=int(step))
        return record


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (ValueError, AttributeError):
        return math.inf


def read_metrics(path: PathLike, prefix: Optional[str] = None) -> List[Dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (those with a key starting with ``prefix``, when given)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if prefix is None or any(k.startswith(prefix) for k in rec):
            out.append(rec)
    return out

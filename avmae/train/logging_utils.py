"""What a run reports: metric records, the loss window between log lines, the progress bar.

``MetricsWriter``: one JSON object per line in ``metrics.jsonl``, mirrored to accelerate's
trackers (TensorBoard). Only the main process writes. A record is ``{"step": int, "time": float,
<name>: number, ...}`` with names such as ``train/loss``, ``train/lr``, ``eval/loss``; a value that
is not finite (a NaN loss) is written as ``null`` (``avmae.files``' JSON policy; files written before
it hold the strings ``"nan"``/``"inf"``, which ``read_metrics`` turns into floats). On resume
the records after the resumed step are dropped, so the file always describes one consistent run.

The file is rewritten when a run starts: records after the step it starts from (0 for a fresh
start) are dropped, so every step appears once however often the run was killed and resumed.

``LossWindow``: running sums of the loss and its parts between two log lines, on the device.
``TrainLog``: the trainer's view of both, with the progress bar and the loss history. While the
bar is shown, console log records are written through ``tqdm.write`` (above the bar, never into
its line). ``format_metrics``: ``"loss 0.1234, num_items 60"`` for log lines and tools.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..files import atomic_write, to_json

__all__ = ["MetricsWriter", "LossWindow", "read_metrics", "format_metrics"]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def format_metrics(metrics: Mapping[str, Any], digits: int = 4) -> str:
    """``{"loss": 0.12345, "num_items": 60}`` -> ``"loss 0.1235, num_items 60"``: integers as
    integers, other numbers to ``digits`` decimals, anything else as its ``str``."""

    def one(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        return str(v) if isinstance(v, int) else f"{v:.{digits}f}"

    return ", ".join(f"{k} {one(_plain(v))}" for k, v in metrics.items())


def _console_handlers(logger: logging.Logger) -> bool:
    """Whether ``logger`` writes to the terminal (a stream handler on stdout or stderr)."""
    return any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in logger.handlers)


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
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and _step_of(line) <= step
        ]
        atomic_write(self.path, "".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: Mapping[str, Any]) -> Dict[str, Any]:
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(to_json(record) + "\n")  # NaN and inf as null
        if self.accelerator is not None:
            numeric = {
                k: v
                for k, v in record.items()
                if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v)
            }
            self.accelerator.log(numeric, step=int(step))
        return record


class LossWindow:
    """Running sums of the loss and its parts between two log lines (on device, no syncs)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.nonfinite = torch.zeros((), device=device)
        self._reset()

    def _reset(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = torch.zeros((), device=self.device)
        self.samples = 0
        self.started = time.time()

    def add(self, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], items: int) -> None:
        loss = loss.detach().float()
        ok = torch.isfinite(loss)
        self.nonfinite = self.nonfinite + (~ok).float()
        for k, v in {"loss": loss, **parts}.items():
            v = v.detach().float()
            self.sums[k] = self.sums.get(k, 0.0) + torch.where(ok & torch.isfinite(v), v, torch.zeros_like(v))
        self.count = self.count + ok.float()
        self.samples += items

    def take_nonfinite(self) -> torch.Tensor:
        out, self.nonfinite = self.nonfinite, torch.zeros((), device=self.device)
        return out

    def flush(self, accelerator) -> Tuple[Dict[str, float], int, float]:
        """(means across processes, items seen by this process, seconds) since the last flush."""
        keys = sorted(self.sums)
        seconds = time.time() - self.started
        micro = self.samples
        if keys:
            totals = torch.stack([torch.as_tensor(self.sums[k], device=self.device) for k in keys] + [self.count])
            if accelerator.num_processes > 1:
                totals = accelerator.reduce(totals, "sum")
            totals = totals.tolist()
            means = {k: (totals[i] / totals[-1] if totals[-1] else float("nan")) for i, k in enumerate(keys)}
        else:
            means = {}
        self._reset()
        return means, micro, seconds


class TrainLog:
    """The trainer's reporting: ``add`` every batch's loss, ``advance`` every step, ``train`` at
    log steps (``due``), ``eval`` after an evaluation, ``close`` at the end."""

    def __init__(self, output_dir: PathLike, accelerator, cfg, plan, state) -> None:
        from tqdm.auto import tqdm

        self.acc = accelerator
        self.cfg = cfg
        self.plan = plan
        self.every = cfg.logging.every_n_steps
        self.metrics = MetricsWriter(
            Path(output_dir) / "metrics.jsonl",
            accelerator if cfg.logging.tensorboard else None,
            enabled=accelerator.is_main_process,
        )
        if cfg.logging.tensorboard:
            accelerator.init_trackers("tensorboard")
        if (
            accelerator.is_main_process
        ):  # a resumed run (or one restarted before its first checkpoint) repeats these steps
            self.metrics.truncate_after(state.step)
        show = accelerator.is_local_main_process and cfg.logging.progress
        self.bar = tqdm(total=plan.total_steps, initial=state.step, disable=not show, dynamic_ncols=True)
        self._redirect = contextlib.ExitStack()
        if show and _console_handlers(logging.getLogger()):
            from tqdm.contrib.logging import logging_redirect_tqdm

            # log lines (eval results, checkpoints) go above the bar instead of into its line
            self._redirect.enter_context(logging_redirect_tqdm(tqdm_class=type(self.bar)))
        self.window = LossWindow(accelerator.device)
        self.history: List[Tuple[int, float]] = []

    def add(self, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], items: int) -> None:
        self.window.add(loss, parts, items)

    def take_nonfinite(self) -> torch.Tensor:
        return self.window.take_nonfinite()

    def advance(self) -> None:
        self.bar.update(1)

    def due(self, step: int) -> bool:
        return step == 1 or step % self.every == 0 or step == self.plan.total_steps

    def train(self, state, lr: float, grad_norm: torch.Tensor) -> Dict[str, Any]:
        means, samples, seconds = self.window.flush(self.acc)
        record = {f"train/{k}": v for k, v in means.items()}
        record.update(
            {
                "epoch": state.epoch + state.epoch_step / self.plan.steps_per_epoch,
                "train/lr": lr,
                "train/grad_norm": grad_norm.item(),
                "train/samples_per_s": samples * self.acc.num_processes / max(seconds, 1e-9),  # items, all processes
                "train/skipped_steps": state.skipped_steps,
            }
        )
        record = self.metrics.write(state.step, record)
        if "loss" in means:  # NaN too: the history ends with the last loss as it was
            self.history.append((state.step, float(means["loss"])))
            self.bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}")
        return record

    def eval(self, step: int, result: Mapping[str, float]) -> None:
        if result:
            self.metrics.write(step, {f"eval/{k}": v for k, v in result.items()})
            _logger.info("eval at step %d: %s", step, format_metrics(result))

    def close(self) -> None:
        self.bar.close()
        self._redirect.close()  # the console handlers as they were


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (ValueError, AttributeError):
        return math.inf


def _nonfinite_string(value: Any) -> Any:
    """A number written by an older version as a string ("nan", "inf", "-inf") -> that float."""
    return float(value) if isinstance(value, str) and value in ("nan", "inf", "-inf") else value


def read_metrics(path: PathLike, prefix: Optional[str] = None) -> List[Dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (those with a key starting with ``prefix``, when given). A
    value that was not finite reads as None (``null``); the strings ``"nan"``/``"inf"``/``"-inf"``
    of files written by older versions read as those floats."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = {k: _nonfinite_string(v) for k, v in json.loads(line).items()}
        if prefix is None or any(k.startswith(prefix) for k in rec):
            out.append(rec)
    return out

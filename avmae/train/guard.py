"""The non-finite guard: a step whose loss (on any process) or gradient norm is not finite is skipped.

``NonFiniteGuard.step(step, nonfinite_losses, grad_norm) -> skip`` is the one decision: it runs
the optimizer step or skips it, counts skipped steps, and stops the run with
``NonFiniteLossError`` after ``train.max_nonfinite`` of them in a row. It carries the stop flag
(SIGTERM on any process) in the same reduction, so several processes agree on it for free.

Two ways to decide, the same outcome:

- on the device (fused AdamW, no fp16 loss scaler): the flags become the kernels' ``found_inf``
  (``optim.step_unless``) and the counts stay on the device (``streak = (streak + 1) * bad``), so
  a step needs no read; ``poll(state)`` reads them where the host waits for the device anyway (log
  steps, checkpoints, epoch and run ends), and raises there, naming the step where the streak
  reached the limit and the checkpoint saved before it;
- on the host (other optimizers, fp16): the flags are read every step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .optim import skips_on_found_inf, step_unless

_logger = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "NonFiniteGuard"]


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class _Counts:
    """What a read of the device counts found."""

    streak: int  # non-finite steps in a row now
    skipped: int  # skipped steps in all (a resumed run's earlier ones included)
    last: int  # the last skipped step (0: none this session)
    last_loss: bool  # whether its loss (else only its gradient) was non-finite
    tripped: int  # the step where the streak first reached the limit (0: never)
    tripped_streak: int
    tripped_loss: bool
    stop: bool  # a stop requested on some process, as of the last step


class NonFiniteGuard:
    """Args:
    accelerator: the run's ``Accelerator`` (device, processes, fp16 scaler).
    optimizer: the prepared optimizer.
    state: the run's ``TrainState`` (``skipped_steps``, ``nonfinite_streak``,
        ``last_checkpoint``), updated in place.
    limit: ``train.max_nonfinite``.
    stop_requested: whether this process was asked to stop (SIGTERM).
    on_device: decide on the device where the optimizer can (False: read every step).
    """

    def __init__(
        self, accelerator, optimizer, state, *, limit: int, stop_requested: Callable[[], bool], on_device: bool = True
    ) -> None:
        self.acc = accelerator
        self.optimizer = optimizer
        self.state = state
        self.limit = limit
        self.stop_requested = stop_requested
        self.on_device = on_device and accelerator.scaler is None and skips_on_found_inf(optimizer)
        self.stop_agreed = False  # the stop flag every process agrees on, as of the last read
        if self.on_device:

            def scalar(value: int) -> torch.Tensor:
                return torch.full((), value, dtype=torch.long, device=accelerator.device)

            self._streak, self._skipped = scalar(state.nonfinite_streak), scalar(state.skipped_steps)
            self._last, self._last_loss = scalar(0), scalar(0)
            self._tripped, self._tripped_streak, self._tripped_loss = scalar(0), scalar(0), scalar(0)
            self._stop = scalar(0)
            self._seen: Optional[_Counts] = None
        _logger.info(
            "non-finite steps: skipped %s", "on the device" if self.on_device else "after reading the flags every step"
        )

    # ------------------------------------------------------------------------ the decision
    def step(self, step: int, nonfinite_losses: torch.Tensor, grad_norm: torch.Tensor):
        """Optimizer step ``step`` (1-based) unless a loss of the accumulated batches (their count,
        ``nonfinite_losses``) or ``grad_norm`` is not finite on some process. -> the skip decision:
        a float32 device flag (on the device), else a bool."""
        flags = self._flags(nonfinite_losses, grad_norm)
        if self.on_device:
            skip = self._count(flags, step)
            step_unless(self.optimizer, skip)
            self.optimizer.zero_grad(set_to_none=True)
            return skip
        bad_loss, bad_grad, stop = (bool(v > 0) for v in flags.tolist())
        self.stop_agreed = stop
        scaler = self.acc.scaler
        # with fp16 the scaler skips overflowing steps itself; only a bad loss counts
        skip = bad_loss or (bad_grad and scaler is None)
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.update()
            self.state.skipped_steps += 1
            self.state.nonfinite_streak += 1
            what = "loss" if bad_loss else "gradient"
            _logger.warning(
                "non-finite %s at step %d: optimizer step skipped (%d in a row, %d in all)",
                what,
                step,
                self.state.nonfinite_streak,
                self.state.skipped_steps,
            )
            if self.state.nonfinite_streak >= self.limit:
                raise self._error(self.state.nonfinite_streak, what, step)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.nonfinite_streak = 0
        return skip

    def poll(self) -> bool:
        """Read the device counts into the run state (one read; a no-op on the host path), warn
        about the steps skipped since the last read, raise ``NonFiniteLossError`` if a streak
        reached the limit. -> the stop flag agreed across processes."""
        if not self.on_device:
            return self.stop_agreed
        seen = self._read()
        new = seen.skipped - self.state.skipped_steps
        self.state.skipped_steps, self.state.nonfinite_streak = seen.skipped, seen.streak
        if new > 0:
            _logger.warning(
                "%d optimizer step(s) skipped for a non-finite loss or gradient up to step %d, the last at step %d "
                "(non-finite %s; %d in a row now, %d in all)",
                new,
                self.state.step,
                seen.last,
                "loss" if seen.last_loss else "gradient",
                seen.streak,
                seen.skipped,
            )
        if seen.tripped:
            raise self._error(seen.tripped_streak, "loss" if seen.tripped_loss else "gradient", seen.tripped)
        self.stop_agreed = seen.stop
        return seen.stop

    # ------------------------------------------------------------------------ pieces
    def _flags(self, nonfinite_losses: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """[non-finite losses, non-finite grad norm, stop requested], summed over processes, on the
        device (nothing is read; the all-reduce is only enqueued on an accelerator)."""
        device = self.acc.device
        flags = torch.stack(
            [
                nonfinite_losses.to(device=device, dtype=torch.float32).reshape(()),
                (~torch.isfinite(grad_norm.detach().float())).float().reshape(()),
                torch.full(
                    (), 1.0 if self.stop_requested() else 0.0, device=device
                ),  # a fill, not a host-to-device copy
            ]
        )
        if self.acc.num_processes > 1:
            flags = self.acc.reduce(flags, "sum")
        return flags

    def _count(self, flags: torch.Tensor, step: int) -> torch.Tensor:
        """Count step ``step`` with tensor ops -> its ``found_inf`` (1.0: skip)."""
        loss = flags[0] > 0
        bad = loss | (flags[1] > 0)
        b = bad.long()
        self._streak = (self._streak + 1) * b
        self._skipped = self._skipped + b
        self._last = torch.where(bad, step, self._last)
        self._last_loss = torch.where(bad, loss.long(), self._last_loss)
        trip = (self._streak >= self.limit) & (self._tripped == 0)  # streak > 0 here: limit >= 1
        self._tripped = torch.where(trip, step, self._tripped)
        self._tripped_streak = torch.where(trip, self._streak, self._tripped_streak)
        self._tripped_loss = torch.where(trip, loss.long(), self._tripped_loss)
        self._stop = (flags[2] > 0).long()
        self._seen = None
        return b.to(torch.float32)

    def _read(self) -> _Counts:
        if self._seen is None:
            values = [
                self._streak,
                self._skipped,
                self._last,
                self._last_loss,
                self._tripped,
                self._tripped_streak,
                self._tripped_loss,
                self._stop,
            ]
            streak, skipped, last, last_loss, tripped, tripped_streak, tripped_loss, stop = torch.stack(values).tolist()
            self._seen = _Counts(
                streak, skipped, last, bool(last_loss), tripped, tripped_streak, bool(tripped_loss), bool(stop)
            )
        return self._seen

    def _error(self, count: int, what: str, step: int) -> NonFiniteLossError:
        return NonFiniteLossError(
            f"{count} consecutive non-finite {what} steps, the last at step {step} "
            f"(train.max_nonfinite={self.limit}); last good checkpoint: {self.state.last_checkpoint or 'none'}. "
            "Lower optim.blr, set optim.clip_grad, use train.mixed_precision=bf16/no, or check the data."
        )

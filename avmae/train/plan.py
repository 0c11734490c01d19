"""The run plan: the values derived from the config and the world, computed in one place and logged.

effective batch = train.batch_size x train.grad_accum x processes
lr              = optim.lr, else optim.blr x effective batch / 256 (MAE's rule)
steps           = schedule.max_steps, else schedule.epochs x (items per epoch // effective batch)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import Config, ConfigError
from .optim import scaled_lr

__all__ = ["RunPlan", "plan_run"]


@dataclass
class RunPlan:
    """Values derived from the config and the world, computed once (``plan_run``) and logged."""

    num_processes: int
    batch_size: int
    grad_accum: int
    effective_batch: int
    blr: float
    lr: float
    lr_rule: str
    min_lr: float
    train_items: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    epochs: int
    mixed_precision: str
    device: str

    def describe(self) -> str:
        return (
            f"{self.num_processes} process(es) x batch {self.batch_size} x accum {self.grad_accum} = effective batch"
            f" {self.effective_batch}; lr {self.lr:.3g} ({self.lr_rule}); {self.train_items} items ->"
            f" {self.steps_per_epoch} steps/epoch, {self.total_steps} steps ({self.epochs} epochs), warm-up"
            f" {self.warmup_steps} steps; precision {self.mixed_precision} on {self.device}"
        )


def plan_run(
    cfg: Config, train_items: int, num_processes: int, *, mixed_precision: str = "no", device: str = "cpu"
) -> RunPlan:
    """Effective batch, absolute lr, steps: the one place these are derived."""
    t, s = cfg.train, cfg.schedule
    effective = t.batch_size * t.grad_accum * num_processes
    if cfg.optim.lr is not None:
        lr, rule = cfg.optim.lr, "optim.lr"
    else:
        lr, rule = scaled_lr(cfg.optim.blr, effective), f"blr {cfg.optim.blr:g} x {effective} / 256"
    steps_per_epoch = train_items // effective
    if steps_per_epoch < 1:
        raise ConfigError(
            "train.batch_size",
            f"the effective batch ({effective} = batch_size x grad_accum x processes) exceeds the {train_items}"
            " training items",
        )
    total = s.max_steps if s.max_steps is not None else s.epochs * steps_per_epoch
    warmup = min(s.warmup_steps if s.warmup_steps is not None else int(round(s.warmup_epochs * steps_per_epoch)), total)
    if s.min_lr > lr:
        raise ConfigError("schedule.min_lr", f"({s.min_lr}) exceeds the lr ({lr:.3g}, {rule})")
    return RunPlan(
        num_processes=num_processes,
        batch_size=t.batch_size,
        grad_accum=t.grad_accum,
        effective_batch=effective,
        blr=cfg.optim.blr,
        lr=lr,
        lr_rule=rule,
        min_lr=s.min_lr,
        train_items=train_items,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        epochs=math.ceil(total / steps_per_epoch),
        mixed_precision=mixed_precision,
        device=device,
    )

"""Masked-autoencoder pretraining (``task: pretrain``): the model computes its own objectives.

    inputs --model(mask_ratio)--> MAEOutput(loss, losses, pred, mask, ...) -> loss

The objectives (``avmae.objectives``: masked-patch MSE, InfoNCE, a plugin's) and the maskers
(``avmae.masking``) are parts of the model, so they are chosen through its params: the config's
``objectives`` and ``masking.maskers`` (when set) and ``masking.mask_ratio`` become the model's
``objectives``, ``maskers`` and ``mask_ratio``; ``masking.per_modality`` sets ratios per forward.
After every optimizer step each objective's ``after_optimizer_step`` runs (an EMA teacher's update).
Evaluation: the mean losses over the eval split and, for an audio-visual model, audio <-> video
retrieval recall@1/5/10 (``avmae.train.retrieval``).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..config import ConfigError
from ..deprecation import call_hook
from ..registry import register_task
from .retrieval import retrieval_metrics
from .task import Task

__all__ = ["PretrainTask"]


@register_task("pretrain")
class PretrainTask(Task):
    """Masked-autoencoder pretraining: the model returns its loss (``MAEOutput``)."""

    model_needs_data = False

    @classmethod
    def validate(cls, cfg) -> None:
        if cfg.eval.video_views > 1:
            raise ConfigError(
                "eval.video_views", "averages a classifier's predictions; pretraining evaluates one view (set it to 1)"
            )

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.mask_ratio: Optional[Dict[str, float]] = None

    def model_params(self, train_set: Optional[Dataset]) -> Dict[str, Any]:
        params = super().model_params(train_set)
        m = self.cfg.masking
        if m.mask_ratio is not None:  # None: the model's own default
            params["mask_ratio"] = m.mask_ratio
        if m.maskers:
            params["maskers"] = dict(m.maskers)
        if self.cfg.objectives:
            params["objectives"] = list(self.cfg.objectives)
        return params

    def build_model(self, train_set: Optional[Dataset]) -> nn.Module:
        model = super().build_model(train_set)
        self.mask_ratio = self._per_modality_ratios(model)
        return model

    def _per_modality_ratios(self, model: nn.Module) -> Optional[Dict[str, float]]:
        """``masking.per_modality`` merged with the model's defaults -> the ratios passed at every
        forward (None: the model's own from ``mask_ratio``)."""
        per = dict(self.cfg.masking.per_modality)
        if not per:
            return None
        unknown = set(per) - set(getattr(model, "modalities", {}))
        if unknown:
            raise ConfigError(
                "masking.per_modality",
                f"names {sorted(unknown)}, not modalities of {self.cfg.model.name} ({list(model.modalities)})",
            )
        base = self.cfg.masking.mask_ratio
        defaults = getattr(model, "mask_ratio", None)
        defaults = defaults if isinstance(defaults, Mapping) else {}
        unset = [m for m in model.modalities if m not in per and base is None and m not in defaults]
        if unset:
            raise ConfigError(
                "masking.per_modality",
                f"gives no ratio for {unset} and {self.cfg.model.name} has no default ratio per modality (a"
                " `mask_ratio` mapping); name every modality here or set masking.mask_ratio",
            )
        return {m: per[m] if m in per else (base if base is not None else defaults[m]) for m in model.modalities}

    def compute_loss(self, model, inputs, batch):
        out = model(inputs, mask_ratio=self.mask_ratio)
        return out.loss, dict(out.losses)

    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        for objective in getattr(model, "objectives", ()):
            call_hook(objective, "after_optimizer_step", "after_step", model, step, total_steps)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, accelerator) -> Dict[str, float]:
        """Mean losses; for an audio-visual model also audio <-> video retrieval recall@1/5/10."""
        metrics = super().evaluate(model, loader, accelerator)
        metrics.update(retrieval_metrics(model, loader, accelerator))
        return metrics

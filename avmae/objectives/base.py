"""The objective contract: what a pretraining step optimises, from what the model computed.

    out = model.forward_outputs(inputs)            predictions, masks, latent, per-modality tokens
    for objective in model.objectives:             (registered names, chosen by the model's params)
        result = objective(model, inputs, out)     ObjectiveOutput(loss, terms, metrics)
        loss += objective.weight * result.loss

An objective is an ``nn.Module`` registered in ``avmae.registry.OBJECTIVES``
(``@avmae.register_objective("name")`` or the ``avmae.objectives`` entry-point group). It is part
of the model, so what it owns (an EMA teacher, a projection) is saved with the model's weights,
moves with it to the device, and resumes exactly. Three seams:

- ``attach(model)``: once, when the model is built, before any step (a teacher copies the
  encoder here);
- ``forward(model, inputs, out) -> ObjectiveOutput``: the loss (unweighted; the model applies
  ``weight``), named terms for the logs (``out.losses``) and metrics (``out.extras``);
- ``after_optimizer_step(model, step, total_steps)``: after every optimizer step (an EMA update),
  called by the pretraining task (the old name ``after_step`` still works, with a DeprecationWarning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Union

import torch
import torch.nn as nn

from ..deprecation import deprecated_alias
from ..registry import OBJECTIVES

__all__ = ["Objective", "ObjectiveOutput", "ObjectiveSpec", "build_objective", "build_objectives"]


@dataclass
class ObjectiveOutput:
    """loss: scalar (the objective's own combination of its terms); terms: named scalars for the
    logs; metrics: named scalars that are not optimised (e.g. a contrastive accuracy)."""

    loss: torch.Tensor
    terms: Dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: Dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class. ``weight`` scales the objective's loss in the model's total."""

    def __init__(self, *, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def attach(self, model: nn.Module) -> None:
        """Called once by the model that owns this objective, after the model is built."""

    def forward(
        self, model: nn.Module, inputs: Mapping[str, torch.Tensor], out: Any
    ) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (1-based) of ``total_steps``; ``model`` is the bare model."""

    after_step = deprecated_alias("after_optimizer_step", "after_step")

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


ObjectiveSpec = Union[str, Mapping[str, Any], Objective]


def build_objective(spec: ObjectiveSpec) -> Objective:
    """An objective from a registered name, ``{"name": ..., "weight": w, <param>: ...}`` (params may
    also sit under ``params``), or an ``Objective`` (``OBJECTIVES.build``)."""
    return OBJECTIVES.build(spec)


def build_objectives(specs: Iterable[ObjectiveSpec]) -> List[Objective]:
    return [build_objective(s) for s in specs]


OBJECTIVES.product = Objective

"""Masked-patch reconstruction (MAE, AudioMAE, CAV-MAE): MSE between the decoder's predictions and
each modality's patches, on the masked patches only; per-patch normalised targets with
``norm_pix`` (MAE's ``norm_pix_loss``, unbiased variance)."""

from __future__ import annotations

from typing import Mapping, Optional

from ..losses import masked_mse
from ..registry import register_objective
from .base import Objective, ObjectiveOutput

__all__ = ["MaskedReconstruction"]


@register_objective("mae_mse")
class MaskedReconstruction(Objective):
    """Terms ``mae_<modality>``; loss = sum of ``modality_weights[m] * mae_<m>`` (1 each by default).

    Targets are ``model.modalities[m].patchify(inputs[m])``, repeated for the model's masked
    clones (``out.num_clones``)."""

    def __init__(
        self, *, weight: float = 1.0, norm_pix: bool = True, modality_weights: Optional[Mapping[str, float]] = None
    ) -> None:
        super().__init__(weight=weight)
        self.norm_pix = bool(norm_pix)
        self.modality_weights = {str(m): float(w) for m, w in (modality_weights or {}).items()}

    def forward(self, model, inputs, out) -> ObjectiveOutput:
        terms = {}
        for m, mod in model.modalities.items():
            target = mod.patchify(inputs[m])
            if out.num_clones > 1:
                target = target.repeat_interleave(out.num_clones, dim=0)
            terms[f"mae_{m}"] = masked_mse(out.pred[m], target, out.mask[m], self.norm_pix)
        loss = sum(self.modality_weights.get(m, 1.0) * terms[f"mae_{m}"] for m in model.modalities)
        return ObjectiveOutput(loss=loss, terms=terms)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm_pix={self.norm_pix}, modality_weights={self.modality_weights}"

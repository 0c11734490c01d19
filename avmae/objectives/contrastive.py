"""InfoNCE between two modalities (CAV-MAE): mean-pooled single-modality passes of the visible
tokens through the joint blocks (``model.single_modality``), cosine similarities over a
temperature, positives on the diagonal; negatives gathered across processes with ``gather``
(``avmae.losses``)."""

from __future__ import annotations

from typing import Optional, Sequence

from ..losses import accuracy_from_logits, contrastive_logits, info_nce_from_logits
from ..registry import register_objective
from .base import Objective, ObjectiveOutput

__all__ = ["InfoNCE"]


@register_objective("info_nce")
class InfoNCE(Objective):
    """Term ``contrastive``, metric ``contrastive_acc`` (CAV-MAE's ``c_acc``).

    ``modalities``: the two compared (default: the model's first two); ``temperature``;
    ``bidirectional`` averages both directions (CAV-MAE: one); ``gather``: negatives from every
    process under ``torch.distributed``."""

    def __init__(
        self,
        *,
        weight: float = 1.0,
        temperature: float = 0.05,
        bidirectional: bool = False,
        gather: bool = True,
        modalities: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__(weight=weight)
        if modalities is not None and len(modalities) != 2:
            raise ValueError(f"info_nce compares two modalities, got {list(modalities)}")
        self.temperature = float(temperature)
        self.bidirectional = bool(bidirectional)
        self.gather = bool(gather)
        self.pair = None if modalities is None else tuple(modalities)

    def attach(self, model) -> None:
        names = list(model.modalities)
        pair = self.pair or tuple(names[:2])
        if len(pair) != 2 or any(m not in names for m in pair):
            raise ValueError(f"info_nce needs two of the model's modalities {names}, got {list(pair)}")
        self.pair = pair

    def forward(self, model, inputs, out) -> ObjectiveOutput:
        a, b = self.pair
        pa, pb = (model.single_modality(m, out.tokens[m]).mean(dim=1) for m in (a, b))
        logits = contrastive_logits(pa, pb, self.temperature, self.gather)
        loss = info_nce_from_logits(logits, self.bidirectional)
        return ObjectiveOutput(
            loss=loss,
            terms={"contrastive": loss},
            metrics={"contrastive_acc": accuracy_from_logits(logits, self.bidirectional)},
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, pair={self.pair}, temperature={self.temperature:g},"
            f" bidirectional={self.bidirectional}, gather={self.gather}"
        )

"""The Modality interface: one input tensor <-> a grid of tokens."""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn

from ..structures import GridSpec

__all__ = ["Modality"]


class Modality(nn.Module):
    """Base class of a modality branch's input side.

    A subclass knows, from its input shape, its token ``grid``; it ``patchify``s an input into
    ``[B, L, patch_dim]`` targets and back (``unpatchify``), embeds an input into ``[B, L, D]``
    tokens (patch embedding plus its fixed positional table), and names its default masker.
    The model code only talks to this interface, so a new modality needs no model change.
    """

    #: registry name of the input key this modality reads, e.g. "audio"
    key: str = ""
    #: default pretraining mask ratio
    default_mask_ratio: float = 0.75
    #: the registered masker (``avmae.masking``) a model uses for this modality unless told otherwise
    default_masking: str = "random"

    grid: Tuple[int, ...]
    patch_dim: int
    pos_embed_kind: str

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    def spec(self) -> GridSpec:
        return GridSpec(name=self.key, grid=tuple(self.grid), patch_dim=self.patch_dim, pos_embed=self.pos_embed_kind)

    def input_grid(self, x: torch.Tensor) -> Tuple[int, ...]:
        """Token grid of input ``x`` (the built ``grid``; a modality taking several input sizes
        overrides it)."""
        return tuple(self.grid)

    def check_input(self, x: torch.Tensor) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def patchify(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def unpatchify(self, p: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

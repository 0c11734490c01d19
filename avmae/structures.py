"""Small typed records shared by modalities, decoders and models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from .layers.pos_embed import audiomae_sincos_2d, float32_sincos_2d, sincos_2d, sincos_3d

__all__ = ["GridSpec", "MaskInfo", "MAEOutput", "pos_table"]


@dataclass(frozen=True)
class GridSpec:
    """What a decoder needs to know about one modality's tokens.

    grid: token grid, row-major (audio: (T/16, F/16); frames: (Tv, H/16, W/16)).
    patch_dim: values per patch (the prediction size).
    pos_embed: which fixed sin-cos table the modality uses ("audiomae", "sincos2d", "sincos3d").
    pos_base: rows of the grid's first axis the "audiomae" formula is laid out for (None: the
        grid's own; see ``avmae.layers.pos_embed.audiomae_sincos_2d``).
    """

    name: str
    grid: Tuple[int, ...]
    patch_dim: int
    pos_embed: str = "sincos2d"
    pos_base: Optional[int] = None

    @property
    def num_tokens(self) -> int:
        n = 1
        for g in self.grid:
            n *= g
        return n

    def pos_table(self, dim: int) -> torch.Tensor:
        return pos_table(self.pos_embed, dim, self.grid, base=self.pos_base)


def pos_table(kind: str, dim: int, grid: Tuple[int, ...], *, base: Optional[int] = None) -> torch.Tensor:
    """[prod(grid), dim] fixed table of the named kind (``base``: see ``GridSpec.pos_base``)."""
    if kind == "audiomae":
        return audiomae_sincos_2d(dim, grid, base)
    if kind == "sincos2d":
        if len(grid) == 3:  # frames: the same 2-D table repeated per frame plus a 1-D time code
            return sincos_3d(dim, grid)
        return sincos_2d(dim, grid)
    if kind == "sincos3d":
        return sincos_3d(dim, grid)
    if kind == "sincos2d_f32":
        return float32_sincos_2d(dim, grid)
    raise ValueError(f"unknown positional embedding kind {kind!r}; valid: audiomae, sincos2d, sincos2d_f32, sincos3d")


@dataclass
class MaskInfo:
    """Masking of one modality. mask: [B, L], 0 keep, 1 remove; ids_restore: [B, L]."""

    mask: torch.Tensor
    ids_restore: torch.Tensor
    num_visible: int


@dataclass
class MAEOutput:
    """What a pretraining model returns.

    loss: scalar total of its objectives (weighted); losses: their named terms (unweighted);
    pred: {modality: [B', L, P]} (P: patch_dim, or the decoder's ``out_dim``); mask: {modality:
    [B', L]} with 1 = masked; latent: encoder output [B', N, D] ([cls] + visible tokens);
    tokens: {modality: [B', K_m, D]} visible tokens after the modality's own blocks, before the
    joint blocks; extras: named metrics. B' = B * num_clones: with masked clones every clip is
    encoded ``num_clones`` times with different masks (clone j of clip i is row i * num_clones + j).
    """

    loss: Optional[torch.Tensor]
    losses: Dict[str, torch.Tensor]
    pred: Dict[str, torch.Tensor]
    mask: Dict[str, torch.Tensor]
    latent: Optional[torch.Tensor] = None
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: Dict[str, torch.Tensor] = field(default_factory=dict)
    num_clones: int = 1

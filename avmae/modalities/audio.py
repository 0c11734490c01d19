"""The audio modality: log-mel spectrograms [B, 1, T, F] as in AudioMAE.

Legend: b batch, c channels (1), t/f patch rows/columns on the (time, mel) grid, p/q pixels inside a
patch along the grid's first/second axis.

Two token layouts (``layout=``):

- ``"tf"`` (default, AudioMAE): grid (T/16, F/16); token k = t * (F/16) + f (time-major); inside a
  patch the pixels are row-major in time, ``(p q c)`` with p along time. This is the layout of the
  released AudioMAE checkpoints.
- ``"ft"`` (CAV-MAE): the input is transposed to [B, 1, F, T] before the patch embedding and the
  patchify, so the grid is (F/16, T/16); token k = f * (T/16) + t (frequency-major); pixels are
  row-major in frequency, ``(p q c)`` with p along frequency. The conv kernel then equals CAV-MAE's
  ``patch_embed_a`` kernel unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from ..registry import register_modality
from ..structures import pos_table
from .base import Modality

__all__ = ["AudioModality", "PatchEmbed2d"]


class PatchEmbed2d(nn.Module):
    """Non-overlapping (or strided) conv patch embedding. x [B, C, H, W] -> [B, gh*gw, D] row-major."""

    def __init__(self, *, in_chans: int, embed_dim: int, patch_size: int, stride: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride or patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


@register_modality("audio")
class AudioModality(Modality):
    """Spectrogram branch. Input [B, 1, target_length, num_mel_bins].

    Args:
        embed_dim: token width.
        target_length: time frames T (multiple of patch_size).
        num_mel_bins: mel bins F (multiple of patch_size).
        patch_size: square patch side (16).
        pos_embed: "audiomae" (the released checkpoints' table) or "sincos2d" (true grid geometry).
            Default: "audiomae" for layout "tf", "sincos2d" for layout "ft" (CAV-MAE's table).
        pos_trainable: learn the positional table instead of keeping it fixed.
        layout: "tf" (time-major tokens, AudioMAE) or "ft" (frequency-major tokens, CAV-MAE).
    """

    key = "audio"
    default_mask_ratio = 0.8
    default_masking = "random"

    def __init__(
        self,
        *,
        embed_dim: int,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        patch_size: int = 16,
        pos_embed: str | None = None,
        pos_trainable: bool = False,
        layout: str = "tf",
    ) -> None:
        super().__init__()
        for name, v in (("target_length", target_length), ("num_mel_bins", num_mel_bins)):
            if v <= 0 or v % patch_size:
                raise ValueError(f"{name}={v} must be a positive multiple of patch_size={patch_size}")
        if layout not in ("tf", "ft"):
            raise ValueError(f"audio layout must be 'tf' (time-major, AudioMAE) or 'ft' (frequency-major, CAV-MAE), got {layout!r}")
        if pos_embed is None:
            pos_embed = "audiomae" if layout == "tf" else "sincos2d"
        if layout == "ft" and pos_embed == "audiomae":
            raise ValueError("pos_embed='audiomae' is AudioMAE's table for the 'tf' layout; use 'sincos2d' with layout='ft'")
        self.patch_size = patch_size
        self.layout = layout
        self.input_shape = (1, target_length, num_mel_bins)
        t, f = target_length // patch_size, num_mel_bins // patch_size
        self.grid = (t, f) if layout == "tf" else (f, t)
        self.patch_dim = patch_size * patch_size
        self.pos_embed_kind = pos_embed
        self.patch_embed = PatchEmbed2d(in_chans=1, embed_dim=embed_dim, patch_size=patch_size)
        table = pos_table(pos_embed, embed_dim, self.grid).unsqueeze(0)
        self.pos_embed = nn.Parameter(table, requires_grad=pos_trainable)
        # MAE: initialise the patch projection like a Linear layer
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"audio input must be [B, {', '.join(map(str, self.input_shape))}] "
                f"(batch, channel, time frames, mel bins), got {list(x.shape)}"
            )

    def _to_grid_order(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, T, F] -> the image whose row-major patches are the tokens ([B, 1, F, T] for "ft")."""
        return x if self.layout == "tf" else x.transpose(2, 3)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 1, T, F] -> [B, L, 256] in the layout's token and pixel order."""
        p = self.patch_size
        return rearrange(self._to_grid_order(x), "b c (t p) (f q) -> b (t f) (p q c)", p=p, q=p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, 256] -> [B, 1, T, F]."""
        p = self.patch_size
        t, f = self.grid
        img = rearrange(patches, "b (t f) (p q c) -> b c (t p) (f q)", t=t, f=f, p=p, q=p, c=1)
        return self._to_grid_order(img)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 1, T, F] -> tokens [B, L, D] with positions added."""
        self.check_input(x)
        return self.patch_embed(self._to_grid_order(x)) + self.pos_embed.to(x.dtype)

"""The audio modality: log-mel spectrograms [B, 1, T, F] as in AudioMAE.

Legend: b batch, c channels (1), t/f patch rows/columns on the (time, mel) grid, p/q pixels inside a
patch along time/frequency. Token k = t * (F/16) + f (time-major); inside a patch the pixels are
row-major in time, ``(p q c)``. This is the layout of the released AudioMAE checkpoints.
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
        pos_embed: "audiomae" (the released checkpoints' table) or "sincos2d" (true (t, f) geometry).
        pos_trainable: learn the positional table instead of keeping it fixed.
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
        pos_embed: str = "audiomae",
        pos_trainable: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("target_length", target_length), ("num_mel_bins", num_mel_bins)):
            if v <= 0 or v % patch_size:
                raise ValueError(f"{name}={v} must be a positive multiple of patch_size={patch_size}")
        self.patch_size = patch_size
        self.input_shape = (1, target_length, num_mel_bins)
        self.grid = (target_length // patch_size, num_mel_bins // patch_size)
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

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 1, T, F] -> [B, L, 256]."""
        p = self.patch_size
        return rearrange(x, "b c (t p) (f q) -> b (t f) (p q c)", p=p, q=p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, 256] -> [B, 1, T, F]."""
        p = self.patch_size
        t, f = self.grid
        return rearrange(patches, "b (t f) (p q c) -> b c (t p) (f q)", t=t, f=f, p=p, q=p, c=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 1, T, F] -> tokens [B, L, D] with positions added."""
        self.check_input(x)
        return self.patch_embed(x) + self.pos_embed.to(x.dtype)

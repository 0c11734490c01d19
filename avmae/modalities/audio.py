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

Input length. A modality built for ``target_length`` frames (its ``input_shape`` and positional
table) embeds inputs of any multiple of 16 frames: shorter ones take the table's first time rows,
exactly the positions a model built for ``target_length`` saw at the start of its input (clips are
padded at their end, so a short clip's content sits there); longer ones continue the table: a fixed
sin-cos table by its own formula (its first rows unchanged), a learned table
(``pos_trainable``) by bilinear interpolation along time, as AST adapts its learned table. At
``target_length`` the table is used as it is. ``resize_pos_table`` does the same for a table of
another length, e.g. a checkpoint's (``avmae.load_checkpoint``).

Why the first rows and not a table regenerated for the shorter grid: the released table has a
layout quirk (token k gets codes (k % T', k // T'), see ``avmae.layers.pos_embed``), so a table
regenerated for 8 time rows gives most tokens codes the 1024-frame model saw elsewhere; the official
ESC-50 fine-tuning (``interpolate_pos_embed_audio``) does exactly that. ``pos_base_length`` builds a
shorter model whose fixed table is the first rows of a longer one's from the start.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..registry import register_modality
from ..structures import GridSpec, pos_table
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
        pos_embed: "audiomae" (the released checkpoints' table) or "sincos2d" (true grid geometry;
            "sincos2d_f32": the same computed in float32, EAT's table).
            Default: "audiomae" for layout "tf", "sincos2d" for layout "ft" (CAV-MAE's table).
        pos_trainable: learn the positional table instead of keeping it fixed.
        layout: "tf" (time-major tokens, AudioMAE) or "ft" (frequency-major tokens, CAV-MAE).
        pos_base_length: frames of the input the fixed "audiomae" table's formula is laid out for
            (default ``target_length``); a model built for 128 frames with ``pos_base_length=1024``
            has the first 64 rows of the 1024-frame table (see the module doc).
        pos_max_length: when given (layout "tf"), the stored table covers this many frames and an
            input of T frames takes its first T/16 time rows (EAT's rule: a table of 768 x F' rows,
            12,288 frames, sliced to the input's token count); longer inputs are refused.
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
        pos_base_length: Optional[int] = None,
        pos_max_length: Optional[int] = None,
    ) -> None:
        super().__init__()
        base_length = target_length if pos_base_length is None else pos_base_length
        for name, v in (
            ("target_length", target_length),
            ("num_mel_bins", num_mel_bins),
            ("pos_base_length", base_length),
        ):
            if v <= 0 or v % patch_size:
                raise ValueError(f"{name}={v} must be a positive multiple of patch_size={patch_size}")
        if layout not in ("tf", "ft"):
            raise ValueError(
                f"audio layout must be 'tf' (time-major, AudioMAE) or 'ft' (frequency-major, CAV-MAE), got {layout!r}"
            )
        if pos_embed is None:
            pos_embed = "audiomae" if layout == "tf" else "sincos2d"
        if layout == "ft" and pos_embed == "audiomae":
            raise ValueError(
                "pos_embed='audiomae' is AudioMAE's table for the 'tf' layout; use 'sincos2d' with layout='ft'"
            )
        self.patch_size = patch_size
        self.layout = layout
        self.input_shape = (1, target_length, num_mel_bins)
        t, f = target_length // patch_size, num_mel_bins // patch_size
        self.grid = (t, f) if layout == "tf" else (f, t)
        self.patch_dim = patch_size * patch_size
        self.pos_embed_kind = pos_embed
        # rows of the formula's grid along its first axis (time for "tf"; the "ft" tables ignore it)
        self.pos_base = base_length // patch_size if layout == "tf" else None
        self.patch_embed = PatchEmbed2d(in_chans=1, embed_dim=embed_dim, patch_size=patch_size)
        self.pos_max_length = pos_max_length
        table_grid = self.grid
        if pos_max_length is not None:
            if layout != "tf" or pos_max_length % patch_size or pos_max_length < target_length:
                raise ValueError(
                    f"pos_max_length={pos_max_length} must be a multiple of patch_size={patch_size}, at least"
                    f" target_length={target_length}, with layout 'tf'"
                )
            table_grid = (pos_max_length // patch_size, f)
        table = pos_table(pos_embed, embed_dim, table_grid, base=self.pos_base).unsqueeze(0)
        self.pos_embed = nn.Parameter(table, requires_grad=pos_trainable)
        # MAE: initialise the patch projection like a Linear layer
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)

    def spec(self) -> GridSpec:
        return GridSpec(
            name=self.key,
            grid=tuple(self.grid),
            patch_dim=self.patch_dim,
            pos_embed=self.pos_embed_kind,
            pos_base=self.pos_base,
        )

    # ------------------------------------------------------------------ input length
    @property
    def time_patches(self) -> int:
        """Time rows of the token grid the modality was built for (``target_length / 16``)."""
        return self.input_shape[1] // self.patch_size

    def accepts_length(self, frames: int) -> bool:
        """Whether inputs of ``frames`` time frames can be embedded (a positive multiple of 16, at
        most ``pos_max_length`` when the table has a fixed size)."""
        if self.pos_max_length is not None and frames > self.pos_max_length:
            return False
        return frames > 0 and frames % self.patch_size == 0

    def input_grid(self, x: torch.Tensor) -> Tuple[int, int]:
        """Token grid of an input ``[B, 1, T, F]``: (T/16, F/16), or (F/16, T/16) for "ft"."""
        t, f = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return (t, f) if self.layout == "tf" else (f, t)

    def check_input(self, x: torch.Tensor) -> None:
        _, T, F_ = self.input_shape
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[3] != F_ or not self.accepts_length(x.shape[2]):
            raise ValueError(
                f"audio input must be [B, 1, T, {F_}] (batch, channel, time frames, mel bins) with T a positive "
                f"multiple of {self.patch_size} ({T} as built"
                + (f", at most {self.pos_max_length}, the positional table's" if self.pos_max_length else "")
                + f"), got {list(x.shape)}"
            )

    def resize_pos_table(
        self, table: torch.Tensor, time_patches: int, *, learned: Optional[bool] = None
    ) -> torch.Tensor:
        """A positional table of this modality's layout for another number of time rows.

        table: [1, t0 * F', D] (any width D: the decoder's tables too); -> [1, time_patches * F', D].
        Fewer rows: the first ``time_patches`` time rows. More: a fixed table (``learned`` False;
        default: whether this modality's own table is trained) keeps its rows and continues with
        this modality's formula; a learned one is interpolated bilinearly along time (AST's way).
        """
        f = self.input_shape[2] // self.patch_size
        D = table.shape[-1]
        if table.dim() != 3 or table.shape[1] % f:
            raise ValueError(
                f"a positional table of this audio modality has a multiple of {f} rows, got shape {list(table.shape)}"
            )
        t0 = table.shape[1] // f
        if time_patches == t0:
            return table
        # [1, t0, f, D]: time first, whatever the token layout
        grid = table.reshape(1, t0, f, D) if self.layout == "tf" else table.reshape(1, f, t0, D).transpose(1, 2)
        if time_patches < t0:
            out = grid[:, :time_patches]
        elif learned if learned is not None else self.pos_embed.requires_grad:
            out = F.interpolate(
                grid.permute(0, 3, 1, 2).float(), size=(time_patches, f), mode="bilinear", align_corners=False
            )
            out = out.permute(0, 2, 3, 1).to(table.dtype)
        else:
            full_grid = (time_patches, f) if self.layout == "tf" else (f, time_patches)
            full = pos_table(self.pos_embed_kind, D, full_grid, base=self.pos_base).to(table)
            full = (
                full.reshape(1, time_patches, f, D)
                if self.layout == "tf"
                else full.reshape(1, f, time_patches, D).transpose(1, 2)
            )
            out = torch.cat([grid, full[:, t0:]], dim=1)
        out = out if self.layout == "tf" else out.transpose(1, 2)
        return out.reshape(1, time_patches * f, D)

    def pos_embed_for(self, time_patches: int) -> torch.Tensor:
        """[1, time_patches * F', D]: the table itself at the built length, else ``resize_pos_table``;
        with ``pos_max_length``, the table's first ``time_patches * F'`` rows."""
        if self.pos_max_length is not None:
            return self.pos_embed[:, : time_patches * (self.input_shape[2] // self.patch_size)]
        if time_patches == self.time_patches:
            return self.pos_embed
        return self.resize_pos_table(self.pos_embed, time_patches)

    # ------------------------------------------------------------------ tokens
    def _to_grid_order(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, T, F] -> the image whose row-major patches are the tokens ([B, 1, F, T] for "ft")."""
        return x if self.layout == "tf" else x.transpose(2, 3)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 1, T, F] -> [B, L, 256] in the layout's token and pixel order."""
        p = self.patch_size
        return rearrange(self._to_grid_order(x), "b c (t p) (f q) -> b (t f) (p q c)", p=p, q=p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, 256] -> [B, 1, T, F] (T from L: any number of time rows)."""
        p = self.patch_size
        f = self.input_shape[2] // p
        t = patches.shape[1] // f
        rows, cols = (t, f) if self.layout == "tf" else (f, t)
        img = rearrange(patches, "b (t f) (p q c) -> b c (t p) (f q)", t=rows, f=cols, p=p, q=p, c=1)
        return self._to_grid_order(img)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 1, T, F] (T any multiple of 16) -> tokens [B, L, D] with positions added."""
        self.check_input(x)
        pos = self.pos_embed_for(x.shape[2] // self.patch_size)
        return self.patch_embed(self._to_grid_order(x)) + pos.to(x.dtype)

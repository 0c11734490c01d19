"""The video modality: ImageNet-normalised RGB frames [B, Tv, 3, H, W].

Legend: b batch, t token steps along time (Tv / tubelet), u frames inside a tubelet, c colour
channels, h/w patch rows/columns, p/q pixels inside a patch along height/width.

Tokens are ordered ``(t h w)``: token k = (t * H' + h) * W' + w. Pixels inside a patch (the
reconstruction target) are ordered ``(u p q c)``: frame, then row, then column, colour fastest. For
one frame (``num_frames=1, tubelet=1``) this is exactly MAE's image ``patchify`` order ``(p q c)``,
so CAV-MAE's visual targets line up.

- ``tubelet=1``: each frame is cut into 16x16 patches by a Conv2d applied frame by frame (CAV-MAE).
- ``tubelet=2`` (or more): 2x16x16 tubelets by a Conv3d (VideoMAE). Default masking is then tube
  masking (the ``tube`` masker of ``avmae.masking``: the same spatial positions are removed in
  every time step) at ratio 0.9; as in VideoMAE, ``int(ratio * H'W')`` positions are removed per
  time step, so only whole tubes are kept (MAE's ``int(L * (1 - r))`` alone would keep 156 of 1568
  tokens at 0.9, splitting a tube).

Grid: ``(H', W')`` when there is a single time step (a 2-D sin-cos table, CAV-MAE's
``pos_embed_v``), else ``(T', H', W')`` with a 3-D sin-cos table.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from einops import rearrange

from ..registry import MASKERS, register_modality
from ..structures import pos_table
from .audio import PatchEmbed2d
from .base import Modality

__all__ = ["VideoModality", "TubeletEmbed"]


class TubeletEmbed(nn.Module):
    """Conv3d tubelet embedding. x [B, C, T, H, W] -> [B, T'*H'*W', D] in (t h w) order."""

    def __init__(self, *, in_chans: int, embed_dim: int, patch_size: int, tubelet: int) -> None:
        super().__init__()
        k = (tubelet, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {v}")
    return v  # type: ignore[return-value]


@register_modality("video")
class VideoModality(Modality):
    """Frame / tubelet branch. Input [B, num_frames, in_chans, H, W].

    Args:
        embed_dim: token width.
        num_frames: frames per clip Tv (a multiple of ``tubelet``).
        image_size: frame side, or (height, width); multiples of patch_size.
        patch_size: square patch side (16).
        tubelet: frames per token (1 = per-frame patches, CAV-MAE; 2 = VideoMAE tubelets).
        in_chans: colour channels (3).
        pos_embed: "sincos" (fixed MAE sin-cos: 2-D for one time step, 3-D otherwise).
        pos_trainable: learn the positional table instead of keeping it fixed.
        masking: the default masker, a registered name; "random" for tubelet 1, "tube" otherwise.
        mask_ratio: default pretraining ratio; 0.75 for tubelet 1, 0.9 otherwise.
    """

    key = "video"

    def __init__(
        self,
        *,
        embed_dim: int,
        num_frames: int = 1,
        image_size: Union[int, Sequence[int]] = 224,
        patch_size: int = 16,
        tubelet: int = 1,
        in_chans: int = 3,
        pos_embed: str = "sincos",
        pos_trainable: bool = False,
        masking: Optional[str] = None,
        mask_ratio: Optional[float] = None,
    ) -> None:
        super().__init__()
        H, W = _pair(image_size)
        if tubelet < 1 or num_frames < 1 or num_frames % tubelet:
            raise ValueError(f"num_frames={num_frames} must be a positive multiple of tubelet={tubelet}")
        for name, v in (("image height", H), ("image width", W)):
            if v <= 0 or v % patch_size:
                raise ValueError(f"{name} {v} must be a positive multiple of patch_size={patch_size}")
        if pos_embed != "sincos":
            raise ValueError(f"video pos_embed must be 'sincos', got {pos_embed!r}")
        masking = masking or ("random" if tubelet == 1 else "tube")
        if masking not in MASKERS:
            raise ValueError(
                f"video masking must name a registered masker ({', '.join(MASKERS.names())}), got {masking!r}"
            )
        self.num_frames = num_frames
        self.tubelet = tubelet
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.input_shape = (num_frames, in_chans, H, W)
        steps, gh, gw = num_frames // tubelet, H // patch_size, W // patch_size
        self.grid = (gh, gw) if steps == 1 else (steps, gh, gw)
        self.patch_dim = tubelet * patch_size * patch_size * in_chans
        self.pos_embed_kind = "sincos2d" if steps == 1 else "sincos3d"
        self.default_masking = masking
        self.default_mask_ratio = float(mask_ratio if mask_ratio is not None else (0.75 if tubelet == 1 else 0.9))
        if tubelet == 1:
            self.patch_embed: nn.Module = PatchEmbed2d(in_chans=in_chans, embed_dim=embed_dim, patch_size=patch_size)
        else:
            self.patch_embed = TubeletEmbed(
                in_chans=in_chans, embed_dim=embed_dim, patch_size=patch_size, tubelet=tubelet
            )
        table = pos_table(self.pos_embed_kind, embed_dim, self.grid).unsqueeze(0)
        self.pos_embed = nn.Parameter(table, requires_grad=pos_trainable)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)

    @property
    def time_steps(self) -> int:
        return self.num_frames // self.tubelet

    @property
    def spatial_grid(self) -> Tuple[int, int]:
        return (self.grid[-2], self.grid[-1])

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"video input must be [B, {', '.join(map(str, self.input_shape))}] "
                f"(batch, frames, channels, height, width), got {list(x.shape)}"
            )

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, Tv, C, H, W] -> [B, L, tubelet*p*p*C]; tokens (t h w), pixels (u p q c)."""
        p = self.patch_size
        return rearrange(x, "b (t u) c (h p) (w q) -> b (t h w) (u p q c)", u=self.tubelet, p=p, q=p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, L, tubelet*p*p*C] -> [B, Tv, C, H, W]."""
        p = self.patch_size
        gh, gw = self.spatial_grid
        return rearrange(
            patches,
            "b (t h w) (u p q c) -> b (t u) c (h p) (w q)",
            t=self.time_steps,
            h=gh,
            w=gw,
            u=self.tubelet,
            p=p,
            q=p,
            c=self.in_chans,
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, Tv, C, H, W] -> tokens [B, L, D] with positions added."""
        self.check_input(x)
        if self.tubelet == 1:
            B = x.shape[0]
            tokens = self.patch_embed(rearrange(x, "b t c h w -> (b t) c h w"))
            tokens = rearrange(tokens, "(b t) n d -> b (t n) d", b=B)
        else:
            tokens = self.patch_embed(rearrange(x, "b t c h w -> b c t h w"))
        return tokens + self.pos_embed.to(x.dtype)

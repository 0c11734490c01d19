"""EAT's light decoder: 2-D convolutions over the whole token grid (visible tokens and mask tokens).

Legend: b batch, t / f token rows / columns of the (time, frequency) grid, d channels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from avmae.decoders import Decoder

__all__ = ["ConvDecoder"]


class _ConvBlock(nn.Module):
    """Grouped conv, LayerNorm over channels, GELU; residual."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, D, T, F] -> [B, D, T, F]."""
        y = self.conv(x)
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.act(y)


class ConvDecoder(Decoder):
    """``depth`` residual conv blocks (kernel ``kernel``, ``groups`` groups) on one modality's 2-D
    grid; the cls token is not used. Far cheaper than a transformer decoder: it costs about as much
    as one encoder block per layer, with no attention.

    Args (besides ``Decoder``'s): depth (6), kernel (3), groups (16; must divide ``embed_dim``).
    """

    def __init__(self, *, depth: int = 6, kernel: int = 3, groups: int = 16, **kw) -> None:
        kw.pop("num_heads", None)  # the model presets pass a transformer decoder's heads
        kw.pop("mlp_ratio", None)
        super().__init__(**kw)
        if len(self.specs) != 1:
            raise ValueError(f"eat_cnn decodes one modality on its grid; got {list(self.specs)}")
        (spec,) = self.specs.values()
        if len(spec.grid) != 2:
            raise ValueError(f"eat_cnn needs a 2-D token grid, got {spec.grid}")
        if self.embed_dim % groups:
            raise ValueError(f"eat_cnn: groups={groups} must divide the decoder width {self.embed_dim}")
        self.grid = tuple(spec.grid)
        self.blocks = nn.ModuleList([_ConvBlock(self.embed_dim, kernel, groups) for _ in range(depth)])

    @classmethod
    def preset_params(cls, size: str):
        return {"depth": 2} if size in ("tiny", "demo") else {}

    def forward_blocks(self, cls, tokens):
        ((m, x),) = tokens.items()
        t, f = self.grid
        y = rearrange(x, "b (t f) d -> b d t f", t=t, f=f)
        for blk in self.blocks:
            y = blk(y)
        return {m: rearrange(y, "b d t f -> b (t f) d")}

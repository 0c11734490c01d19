"""AudioMAE's decoders: global, shifted-window local (swin) and hybrid (local then global)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..layers import SwinBlock, make_block
from ..registry import register_decoder
from .base import Decoder

__all__ = ["GlobalDecoder", "SwinDecoder", "HybridDecoder", "swin_shift"]


def swin_shift(index: int, window: Sequence[int], shift: Optional[Sequence[int]]) -> tuple:
    """Even blocks unshifted, odd blocks shifted (AudioMAE: (2, 0), half a window along time only)."""
    if index % 2 == 0:
        return (0, 0)
    return tuple(shift) if shift is not None else (window[0] // 2, 0)


# block counts at the small model sizes (the full sizes keep each class's defaults: the paper's)
_SMALL_DEPTHS = {"tiny": {"global": 2, "swin": 2, "hybrid": 3}, "demo": {"global": 2, "swin": 4, "hybrid": 4}}


def _small(size: str, kind: str, **extra: Any) -> Dict[str, Any]:
    depth = _SMALL_DEPTHS.get(size, {}).get(kind)
    return {} if depth is None else {"depth": depth, **extra}


def _official_blocks(sd: Mapping[str, torch.Tensor]) -> Tuple[int, List[int], Optional[int]]:
    """(blocks, indices of the shifted-window blocks, their heads) of a released AudioMAE
    pretraining state dict: a window block carries ``attn.tau`` (one per head) or the log-CPB MLP."""
    idx = {int(k.split(".")[1]) for k in sd if k.startswith("decoder_blocks.") and k.split(".")[1].isdigit()}
    depth = max(idx) + 1 if idx else 0
    local = [
        i
        for i in range(depth)
        if f"decoder_blocks.{i}.attn.tau" in sd or f"decoder_blocks.{i}.attn.meta_mlp.fc1.weight" in sd
    ]
    tau = sd.get(f"decoder_blocks.{local[0]}.attn.tau") if local else None
    return depth, local, None if tau is None else int(tau.shape[0])


def _split(x: torch.Tensor, tokens: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out, start = {}, 0
    for m, t in tokens.items():
        out[m] = x[:, start : start + t.shape[1]]
        start += t.shape[1]
    return out


@register_decoder("global")
class GlobalDecoder(Decoder):
    """Transformer blocks with global attention over all tokens (AudioMAE ``decoder_mode=0``).

    The cls token, when present, takes part in attention and is dropped before the heads.
    """

    def __init__(self, *, depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0, **kw) -> None:
        super().__init__(**kw)
        self.blocks = nn.ModuleList([make_block(self.embed_dim, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)])

    @classmethod
    def preset_params(cls, size):
        return _small(size, "global")

    @classmethod
    def official_params(cls, sd):
        depth, local, _ = _official_blocks(sd)
        return {"depth": depth} if depth and not local else None

    def forward_blocks(self, cls, tokens):
        x = torch.cat(([cls] if cls is not None else []) + list(tokens.values()), dim=1)
        for blk in self.blocks:
            x = blk(x)
        if cls is not None:
            x = x[:, 1:]
        return _split(x, tokens)


class _LocalMixin:
    def _single_grid(self) -> tuple:
        if len(self.specs) != 1:
            raise ValueError(
                f"{type(self).__name__} decodes one modality on its grid; got {list(self.specs)}. "
                "Use the 'joint' decoder for several modalities."
            )
        (spec,) = self.specs.values()
        if len(spec.grid) != 2:
            raise ValueError(f"{type(self).__name__} needs a 2-D token grid, got {spec.grid}")
        return spec.grid


@register_decoder("swin")
class SwinDecoder(_LocalMixin, Decoder):
    """Shifted-window local attention, the released AudioMAE decoder (``decoder_mode=1``).

    16 post-norm Swin-V2 blocks with 4x4 windows; odd blocks shift by (2, 0). The cls token is
    dropped before the blocks.
    """

    def __init__(
        self,
        *,
        depth: int = 16,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        window: Sequence[int] = (4, 4),
        shift: Optional[Sequence[int]] = (2, 0),
        no_shift: bool = False,
        meta_drop: float = 0.1,
        **kw,
    ) -> None:
        super().__init__(**kw)
        grid = self._single_grid()
        self.blocks = nn.ModuleList(
            [
                SwinBlock(
                    self.embed_dim,
                    num_heads=num_heads,
                    grid=grid,
                    window=window,
                    shift=(0, 0) if no_shift else swin_shift(i, window, shift),
                    mlp_ratio=mlp_ratio,
                    meta_drop=meta_drop,
                )
                for i in range(depth)
            ]
        )

    @classmethod
    def preset_params(cls, size):
        return _small(size, "swin")

    @classmethod
    def official_params(cls, sd):
        depth, local, heads = _official_blocks(sd)
        return {"depth": depth, "num_heads": heads} if depth and len(local) == depth else None

    def forward_blocks(self, cls, tokens):
        ((m, x),) = tokens.items()
        for blk in self.blocks:
            x = blk(x)
        return {m: x}


@register_decoder("hybrid")
class HybridDecoder(_LocalMixin, Decoder):
    """Local (shifted-window) attention in the lower blocks, global attention in the top
    ``global_depth`` blocks, as the AudioMAE paper describes its hybrid decoder.

    The cls token is dropped before the blocks, as in the local decoder.
    """

    def __init__(
        self,
        *,
        depth: int = 16,
        global_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        window: Sequence[int] = (4, 4),
        shift: Optional[Sequence[int]] = (2, 0),
        meta_drop: float = 0.1,
        **kw,
    ) -> None:
        super().__init__(**kw)
        if not 0 <= global_depth <= depth:
            raise ValueError(f"global_depth={global_depth} must be within [0, depth={depth}]")
        grid = self._single_grid()
        local = [
            SwinBlock(
                self.embed_dim,
                num_heads=num_heads,
                grid=grid,
                window=window,
                shift=swin_shift(i, window, shift),
                mlp_ratio=mlp_ratio,
                meta_drop=meta_drop,
            )
            for i in range(depth - global_depth)
        ]
        top = [make_block(self.embed_dim, num_heads, mlp_ratio=mlp_ratio) for _ in range(global_depth)]
        self.blocks = nn.ModuleList(local + top)

    @classmethod
    def preset_params(cls, size):
        return _small(size, "hybrid", global_depth=1)

    @classmethod
    def official_params(cls, sd):
        depth, local, heads = _official_blocks(sd)
        if not local or len(local) == depth or local != list(range(len(local))):
            return None  # window blocks below, global ones on top
        return {"depth": depth, "global_depth": depth - len(local), "num_heads": heads}

    def forward_blocks(self, cls, tokens):
        ((m, x),) = tokens.items()
        for blk in self.blocks:
            x = blk(x)
        return {m: x}

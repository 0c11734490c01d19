"""The joint audio-visual decoder: one decoder over every modality's tokens.

    latent --embed--> + mask tokens, unshuffle, fixed pos-embed + learned modality-embed per modality
        --local_depth mixed blocks--> --(depth - local_depth) global blocks--> norm --> per-modality heads

Global mode (the default, ``local_modalities`` empty) is CAV-MAE's decoder: every block attends over
the concatenation of all modalities (e.g. 512 audio + 196 video tokens).

Mixed mode carries AudioMAE's hybrid decoder over to several modalities. In each of the lower
``local_depth`` blocks:

- every modality named in ``local_modalities`` (e.g. audio) runs a shifted-window ``SwinBlock`` on
  its own 2-D token grid (windows ``window``; odd blocks shift by ``shift``, AudioMAE: (2, 0)), so
  its attention stays local in time and frequency;
- the remaining modalities (e.g. video, and the cls token if any) run one global pre-norm block over
  their concatenation, so video attention stays global.

Cross-modal attention happens only in the top ``depth - local_depth`` global blocks, which see every
token. The local blocks therefore model fine spectro-temporal structure cheaply (cost linear in
the audio length) and the top blocks fuse the modalities.

Parameter names: ``blocks.i`` is a timm ``Block`` for a global block; a mixed block ``blocks.i`` holds
``local.<modality>`` (``SwinBlock``) and ``other`` (a timm ``Block``, absent when nothing is left).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ..layers import SwinBlock, make_block
from ..registry import register_decoder
from .base import Decoder
from .standard import swin_shift

__all__ = ["JointDecoder", "MixedBlock"]


class MixedBlock(nn.Module):
    """One decoder layer: windowed attention inside each local modality's grid, global attention
    among the other tokens, no attention across the two groups.

    Args:
        local: {modality: SwinBlock}.
        other: a global block for the remaining tokens (None when there are none).
    """

    def __init__(self, local: Mapping[str, nn.Module], other: Optional[nn.Module]) -> None:
        super().__init__()
        self.local = nn.ModuleDict(dict(local))
        self.other = other

    def forward(self, cls: Optional[torch.Tensor], tokens: Dict[str, torch.Tensor]):
        out = {m: (self.local[m](x) if m in self.local else x) for m, x in tokens.items()}
        rest = [m for m in tokens if m not in self.local]
        parts = ([cls] if cls is not None else []) + [tokens[m] for m in rest]
        if parts:
            x = self.other(torch.cat(parts, dim=1))
            start = 0
            if cls is not None:
                cls, start = x[:, :1], 1
            for m in rest:
                n = tokens[m].shape[1]
                out[m] = x[:, start : start + n]
                start += n
        return cls, out


@register_decoder("joint")
class JointDecoder(Decoder):
    """One decoder for all modalities; global blocks, optionally local (windowed) attention in the
    lower blocks for chosen modalities (see the module docstring).

    Args:
        depth: number of blocks.
        num_heads: attention heads of a block.
        mlp_ratio: MLP width of a block, in multiples of its width.
        local_modalities: {modality: {"window": [wt, wf], "shift": [st, sf]}} for the lower blocks,
            e.g. ``{"audio": {"window": [4, 4], "shift": [2, 0]}}``; the modality needs a 2-D grid.
        local_depth: how many lower blocks are mixed (default depth // 2 when local_modalities
            is set, else 0).
        meta_drop: dropout of the Swin position-bias MLP.
        norm_eps: LayerNorm epsilon of the blocks and the final norm (CAV-MAE: 1e-5).
        **kw: ``encoder_dim``, ``specs``, ``has_cls``, ``embed_dim``: see ``Decoder``.
    """

    def __init__(
        self,
        *,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        local_modalities: Optional[Mapping[str, Mapping[str, Any]]] = None,
        local_depth: Optional[int] = None,
        meta_drop: float = 0.1,
        norm_eps: float = 1e-6,
        **kw: Any,
    ) -> None:
        super().__init__(norm_eps=norm_eps, **kw)
        local_modalities = {m: dict(cfg or {}) for m, cfg in (local_modalities or {}).items()}
        unknown = set(local_modalities) - set(self.specs)
        if unknown:
            raise ValueError(
                f"local_modalities names {sorted(unknown)}, not among the decoder's modalities {list(self.specs)}"
            )
        if local_depth is None:
            local_depth = depth // 2 if local_modalities else 0
        if not 0 <= local_depth <= depth:
            raise ValueError(f"local_depth={local_depth} must be within [0, depth={depth}]")
        if local_depth and not local_modalities:
            raise ValueError("local_depth > 0 needs local_modalities, e.g. {'audio': {'window': [4, 4]}}")
        for m, cfg in local_modalities.items():
            bad = set(cfg) - {"window", "shift"}
            if bad:
                raise ValueError(f"local_modalities[{m!r}] has unknown keys {sorted(bad)}; valid: window, shift")
            if len(self.specs[m].grid) != 2:
                raise ValueError(f"local attention needs a 2-D token grid; {m!r} has grid {self.specs[m].grid}")
        self.local_modalities = local_modalities
        self.local_depth = local_depth
        others = [m for m in self.specs if m not in local_modalities]
        blocks: List[nn.Module] = []
        for i in range(local_depth):
            local = {}
            for m, cfg in local_modalities.items():
                window = tuple(cfg.get("window", (4, 4)))
                shift: Optional[Sequence[int]] = cfg.get("shift", (2, 0))
                local[m] = SwinBlock(
                    self.embed_dim,
                    num_heads=num_heads,
                    grid=self.specs[m].grid,
                    window=window,
                    shift=swin_shift(i, window, shift),
                    mlp_ratio=mlp_ratio,
                    meta_drop=meta_drop,
                    norm_eps=norm_eps,
                )
            other = (
                make_block(self.embed_dim, num_heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps)
                if (others or self.has_cls)
                else None
            )
            blocks.append(MixedBlock(local, other))
        for _ in range(depth - local_depth):
            blocks.append(make_block(self.embed_dim, num_heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps))
        self.blocks = nn.ModuleList(blocks)

    def forward_blocks(self, cls: Optional[torch.Tensor], tokens: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        for blk in self.blocks[: self.local_depth]:
            cls, tokens = blk(cls, tokens)
        x = torch.cat(([cls] if cls is not None else []) + list(tokens.values()), dim=1)
        for blk in self.blocks[self.local_depth :]:
            x = blk(x)
        out, start = {}, 1 if cls is not None else 0
        for m, t in tokens.items():
            out[m] = x[:, start : start + t.shape[1]]
            start += t.shape[1]
        return out

"""Global transformer blocks and MAE weight initialisation.

Global blocks are timm's pre-norm ViT ``Block`` (SDPA attention with timm's math fallback), whose
parameter names match the released AudioMAE / MAE checkpoints. ``PostNormBlock`` is the post-LN
variant (data2vec 2.0 / EAT with ``layer_norm_first: false``), with the same parameter names.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

__all__ = ["make_block", "PostNormBlock", "init_mae_weights", "drop_path_rates"]


class PostNormBlock(Block):
    """Post-LN ViT block: ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``.

    timm's ``Block`` parts (fused qkv with bias, q scaled by head_dim^-0.5, exact GELU MLP), so the
    parameter names are the pre-norm block's; only the order of the norms differs."""

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        x = self.norm1(x + self.drop_path1(self.ls1(self.attn(x, attn_mask=attn_mask, is_causal=is_causal))))
        return self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))


def make_block(
    dim: int,
    num_heads: int,
    *,
    mlp_ratio: float = 4.0,
    drop_path: float = 0.0,
    norm_eps: float = 1e-6,
    post_norm: bool = False,
) -> Block:
    """A ViT block with qkv bias and LayerNorm(eps): pre-norm (ViT, AudioMAE), or post-norm
    (``post_norm=True``: EAT / data2vec 2.0)."""
    return (PostNormBlock if post_norm else Block)(
        dim,
        num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        drop_path=drop_path,
        norm_layer=partial(nn.LayerNorm, eps=norm_eps),
    )


def drop_path_rates(drop_path: float, depth: int) -> list:
    """Stochastic-depth rate of each of ``depth`` blocks, rising linearly from 0 to ``drop_path``.
    Computed on the CPU, so a model can be built under ``torch.device("meta")``."""
    return torch.linspace(0, drop_path, depth, device="cpu").tolist()


def init_mae_weights(module: nn.Module) -> None:
    """MAE's init: xavier-uniform Linear weights with zero bias, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

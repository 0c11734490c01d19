"""Global transformer blocks and MAE weight initialisation.

Global blocks are timm's pre-norm ViT ``Block`` (SDPA attention with timm's math fallback), whose
parameter names match the released AudioMAE / MAE checkpoints.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

__all__ = ["make_block", "init_mae_weights", "drop_path_rates"]


def make_block(
    dim: int, num_heads: int, *, mlp_ratio: float = 4.0, drop_path: float = 0.0, norm_eps: float = 1e-6
) -> Block:
    """A pre-norm ViT block with qkv bias and LayerNorm(eps)."""
    return Block(
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

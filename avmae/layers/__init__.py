"""Reusable layers: positional tables, transformer blocks, shifted-window attention."""

from .blocks import drop_path_rates, init_mae_weights, make_block
from .pos_embed import audiomae_sincos_2d, sincos_1d, sincos_2d, sincos_3d
from .window_attention import SwinBlock, WindowAttention, shift_region_mask, window_and_shift

__all__ = [
    "audiomae_sincos_2d",
    "sincos_1d",
    "sincos_2d",
    "sincos_3d",
    "make_block",
    "drop_path_rates",
    "init_mae_weights",
    "SwinBlock",
    "WindowAttention",
    "shift_region_mask",
    "window_and_shift",
]

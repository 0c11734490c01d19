"""Test oracle: the released AST model (``ASTModel`` of YuanGongND/ast), written out as plain math.

It re-derives, literally, what the released code computes, so that the package under test can be
compared against it number for number. It works on state dicts in the *official* key layout
(DataParallel: ``module.v.*``, ``module.mlp_head.{0,1}.*``), so one dict can be saved as an
official checkpoint and also fed to this oracle.

Everything is plain tensor math: explicit index lists for the overlapping patches (no conv),
LayerNorm / GELU / softmax written out, attention as matmuls (no
``F.scaled_dot_product_attention``), bilinear interpolation as an explicit four-neighbour
formula (no ``F.interpolate``), no ``nn.Module``. Arithmetic runs in the dtype of the input
(pass float64 for a high-precision reference).

Conventions (as in the released code):
    input x: [B, T, F] (time frames, mel bins), turned into [B, 1, F, T]
    patch 16 x 16, strides (fstride, tstride); grid (f_dim, t_dim) = ((F-16)//fs + 1, (T-16)//ts + 1)
    tokens frequency-major: k = f * t_dim + t; token 0 cls, token 1 dist
    LayerNorm eps 1e-6 in the DeiT backbone, 1e-5 (PyTorch default) in mlp_head[0]
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

__all__ = [
    "LN_EPS",
    "HEAD_LN_EPS",
    "official_grid",
    "official_num_params",
    "make_official_ast_state_dict",
    "make_deit_state_dict",
    "official_bilinear",
    "official_audioset_pos_embed",
    "official_imagenet_pos_embed",
    "official_imagenet_patch_weight",
    "official_ast_forward",
]

StateDict = Dict[str, torch.Tensor]

LN_EPS = 1e-6  # DeiT: partial(nn.LayerNorm, eps=1e-6)
HEAD_LN_EPS = 1e-5  # mlp_head = Sequential(nn.LayerNorm(768), nn.Linear(768, label_dim))
PATCH = 16


# ------------------------------------------------------------------------------------------------
# sizes
# ------------------------------------------------------------------------------------------------
def official_grid(fstride: int, tstride: int, input_fdim: int = 128, input_tdim: int = 1024) -> Tuple[int, int]:
    """``ASTModel.get_shape``: the output size of a 16x16 conv with the given strides on [F, T]."""
    f_dim = (input_fdim - PATCH) // fstride + 1
    t_dim = (input_tdim - PATCH) // tstride + 1
    return f_dim, t_dim


def official_num_params(embed_dim: int, depth: int, num_classes: int, num_patches: int, mlp_ratio: float = 4.0) -> int:
    """Parameters of ``ASTModel`` without DeiT's unused heads.

    Per block: norm1 (2D), qkv (3D*D + 3D), proj (D*D + D), norm2 (2D), fc1 (H*D + H), fc2 (D*H + D).
    Plus patch conv 1 -> D (D*256 + D), pos_embed ((N + 2) * D), cls + dist (2D), final norm (2D),
    mlp_head (2D + D*C + C).
    """
    d = embed_dim
    h = int(d * mlp_ratio)
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (h * d + h) + (d * h + d)
    return (
        depth * block
        + (d * PATCH * PATCH + d)
        + (num_patches + 2) * d
        + 2 * d
        + 2 * d
        + (2 * d + d * num_classes + num_classes)
    )


# ------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------
def _blocks(sd: StateDict, prefix: str, embed_dim: int, depth: int, mlp_ratio: float, g: torch.Generator) -> None:
    d = embed_dim
    h = int(d * mlp_ratio)

    def lin(name: str, n_out: int, n_in: int) -> None:
        sd[f"{name}.weight"] = torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in)
        sd[f"{name}.bias"] = 0.02 * torch.randn(n_out, generator=g)

    def ln(name: str) -> None:
        sd[f"{name}.weight"] = 1.0 + 0.1 * torch.randn(d, generator=g)
        sd[f"{name}.bias"] = 0.05 * torch.randn(d, generator=g)

    for i in range(depth):
        b = f"{prefix}blocks.{i}"
        ln(f"{b}.norm1")
        lin(f"{b}.attn.qkv", 3 * d, d)
        lin(f"{b}.attn.proj", d, d)
        ln(f"{b}.norm2")
        lin(f"{b}.mlp.fc1", h, d)
        lin(f"{b}.mlp.fc2", d, h)
    ln(f"{prefix}norm")


def make_official_ast_state_dict(
    *,
    embed_dim: int,
    depth: int,
    num_classes: int,
    grid: Tuple[int, int] = (12, 101),
    mlp_ratio: float = 4.0,
    imagenet_classes: int = 10,
    seed: int = 0,
) -> StateDict:
    """A released-AST-layout DataParallel state dict with random, well-scaled weights.

    Includes DeiT's unused ``v.head`` / ``v.head_dist`` (``imagenet_classes`` outputs), as the
    released file does.
    """
    g = torch.Generator().manual_seed(seed)
    d = embed_dim
    n = grid[0] * grid[1]
    sd: StateDict = {}
    sd["module.v.cls_token"] = 0.5 * torch.randn(1, 1, d, generator=g)
    sd["module.v.pos_embed"] = 0.5 * torch.randn(1, n + 2, d, generator=g)
    sd["module.v.dist_token"] = 0.5 * torch.randn(1, 1, d, generator=g)
    sd["module.v.patch_embed.proj.weight"] = torch.randn(d, 1, PATCH, PATCH, generator=g) / PATCH
    sd["module.v.patch_embed.proj.bias"] = 0.02 * torch.randn(d, generator=g)
    _blocks(sd, "module.v.", d, depth, mlp_ratio, g)
    for head in ("head", "head_dist"):
        sd[f"module.v.{head}.weight"] = torch.randn(imagenet_classes, d, generator=g) / math.sqrt(d)
        sd[f"module.v.{head}.bias"] = torch.zeros(imagenet_classes)
    sd["module.mlp_head.0.weight"] = 1.0 + 0.1 * torch.randn(d, generator=g)
    sd["module.mlp_head.0.bias"] = 0.05 * torch.randn(d, generator=g)
    sd["module.mlp_head.1.weight"] = torch.randn(num_classes, d, generator=g) / math.sqrt(d)
    sd["module.mlp_head.1.bias"] = 0.02 * torch.randn(num_classes, generator=g)
    return sd


def make_deit_state_dict(
    *,
    embed_dim: int,
    depth: int,
    side: int,
    mlp_ratio: float = 4.0,
    imagenet_classes: int = 10,
    distilled: bool = True,
    seed: int = 1,
) -> StateDict:
    """A timm DeiT (distilled) / ViT ImageNet state dict: RGB patch kernels, a side x side grid."""
    g = torch.Generator().manual_seed(seed)
    d = embed_dim
    prefix = 2 if distilled else 1
    sd: StateDict = {}
    sd["cls_token"] = 0.5 * torch.randn(1, 1, d, generator=g)
    sd["pos_embed"] = 0.5 * torch.randn(1, side * side + prefix, d, generator=g)
    if distilled:
        sd["dist_token"] = 0.5 * torch.randn(1, 1, d, generator=g)
    sd["patch_embed.proj.weight"] = torch.randn(d, 3, PATCH, PATCH, generator=g) / (PATCH * math.sqrt(3))
    sd["patch_embed.proj.bias"] = 0.02 * torch.randn(d, generator=g)
    _blocks(sd, "", d, depth, mlp_ratio, g)
    heads = ("head", "head_dist") if distilled else ("head",)
    for head in heads:
        sd[f"{head}.weight"] = torch.randn(imagenet_classes, d, generator=g) / math.sqrt(d)
        sd[f"{head}.bias"] = torch.zeros(imagenet_classes)
    return sd


# ------------------------------------------------------------------------------------------------
# positional embedding adaptation
# ------------------------------------------------------------------------------------------------
def _source_coords(out_size: int, in_size: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half-pixel source positions of ``mode='bilinear', align_corners=False`` along one axis.

    src = (i + 0.5) * in / out - 0.5, clamped at 0; neighbours i0 = floor(src), i1 = min(i0+1, in-1).
    """
    scale = in_size / out_size
    src = (torch.arange(out_size, dtype=dtype) + 0.5) * scale - 0.5
    src = torch.clamp(src, min=0.0)
    i0 = torch.clamp(torch.floor(src).long(), max=in_size - 1)
    i1 = torch.clamp(i0 + 1, max=in_size - 1)
    lam = src - i0.to(dtype)
    return i0, i1, lam


def official_bilinear(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode='bilinear')`` on [1, D, H, W] by the four-neighbour formula."""
    _, _, h_in, w_in = x.shape
    y0, y1, ly = _source_coords(size[0], h_in, x.dtype)
    x0, x1, lx = _source_coords(size[1], w_in, x.dtype)
    ly = ly[:, None]
    lx = lx[None, :]
    v00 = x[:, :, y0[:, None], x0[None, :]]
    v01 = x[:, :, y0[:, None], x1[None, :]]
    v10 = x[:, :, y1[:, None], x0[None, :]]
    v11 = x[:, :, y1[:, None], x1[None, :]]
    return (1 - ly) * (1 - lx) * v00 + (1 - ly) * lx * v01 + ly * (1 - lx) * v10 + ly * lx * v11


def official_audioset_pos_embed(pos_embed: torch.Tensor, f_dim: int, t_dim: int) -> torch.Tensor:
    """``ASTModel.__init__`` with ``audioset_pretrain=True``: the 1212-row table of the released
    1024-frame model, as a 12 x 101 grid, cut (from the middle) or interpolated to (f_dim, t_dim)."""
    d = pos_embed.shape[2]
    new = pos_embed[:, 2:, :].reshape(1, 1212, d).transpose(1, 2).reshape(1, d, 12, 101)
    if t_dim < 101:
        new = new[:, :, :, 50 - int(t_dim / 2) : 50 - int(t_dim / 2) + t_dim]
    else:
        new = official_bilinear(new, (12, t_dim))
    if f_dim < 12:
        new = new[:, :, 6 - int(f_dim / 2) : 6 - int(f_dim / 2) + f_dim, :]
    elif f_dim > 12:
        new = official_bilinear(new, (f_dim, t_dim))
    new = new.reshape(1, d, f_dim * t_dim).transpose(1, 2)
    return torch.cat([pos_embed[:, :2, :], new], dim=1)


def official_imagenet_pos_embed(pos_embed: torch.Tensor, f_dim: int, t_dim: int) -> torch.Tensor:
    """``ASTModel.__init__`` with ``imagenet_pretrain=True``: DeiT's square grid (hw x hw, after
    the cls and dist rows) cut from the middle or interpolated, time axis first."""
    d = pos_embed.shape[2]
    n = pos_embed.shape[1] - 2
    hw = int(n**0.5)
    new = pos_embed[:, 2:, :].reshape(1, n, d).transpose(1, 2).reshape(1, d, hw, hw)
    if t_dim <= hw:
        new = new[:, :, :, int(hw / 2) - int(t_dim / 2) : int(hw / 2) - int(t_dim / 2) + t_dim]
    else:
        new = official_bilinear(new, (hw, t_dim))
    if f_dim <= hw:
        new = new[:, :, int(hw / 2) - int(f_dim / 2) : int(hw / 2) - int(f_dim / 2) + f_dim, :]
    else:
        new = official_bilinear(new, (f_dim, t_dim))
    new = new.reshape(1, d, f_dim * t_dim).transpose(1, 2)
    return torch.cat([pos_embed[:, :2, :], new], dim=1)


def official_imagenet_patch_weight(weight: torch.Tensor) -> torch.Tensor:
    """[D, 3, 16, 16] -> [D, 1, 16, 16]: the RGB kernels summed, as ``new_proj.weight``."""
    return torch.sum(weight, dim=1).unsqueeze(1)


# ------------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------------
def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x @ w.transpose(0, 1) + b


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def _patch_embed(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, fstride: int, tstride: int) -> torch.Tensor:
    """x [B, 1, F, T] -> [B, f_dim * t_dim, D]: each strided 16x16 window dotted with the kernel."""
    bsz, _, fdim_in, tdim_in = x.shape
    f_dim, t_dim = official_grid(fstride, tstride, fdim_in, tdim_in)
    rows = (torch.arange(f_dim) * fstride)[:, None] + torch.arange(PATCH)[None, :]  # [f_dim, 16]
    cols = (torch.arange(t_dim) * tstride)[:, None] + torch.arange(PATCH)[None, :]  # [t_dim, 16]
    windows = x[:, 0][:, rows[:, None, :, None], cols[None, :, None, :]]  # [B, f_dim, t_dim, 16, 16]
    windows = windows.reshape(bsz, f_dim * t_dim, PATCH * PATCH)
    return windows @ w.reshape(w.shape[0], PATCH * PATCH).transpose(0, 1) + b


def _block(x: torch.Tensor, sd: StateDict, p: str, num_heads: int) -> torch.Tensor:
    bsz, n, d = x.shape
    hd = d // num_heads
    h = _layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"], LN_EPS)
    qkv = (
        _linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        .reshape(bsz, n, 3, num_heads, hd)
        .permute(2, 0, 3, 1, 4)
    )
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = _softmax((q @ k.transpose(-2, -1)) * hd**-0.5)
    a = (attn @ v).transpose(1, 2).reshape(bsz, n, d)
    x = x + _linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    h = _layer_norm(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"], LN_EPS)
    h = _linear(
        _gelu(_linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
        sd[p + "mlp.fc2.weight"],
        sd[p + "mlp.fc2.bias"],
    )
    return x + h


def official_ast_forward(
    sd: StateDict,
    x: torch.Tensor,
    *,
    num_heads: int,
    fstride: int = 10,
    tstride: int = 10,
    pos_embed: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``ASTModel.forward`` in eval mode. x: [B, T, F] -> logits [B, C].

    ``sd`` in the DataParallel layout; ``pos_embed`` replaces ``module.v.pos_embed`` (an adapted table).
    """
    dt = x.dtype
    sd = {k[len("module.") :] if k.startswith("module.") else k: v.to(dt) for k, v in sd.items()}
    pos = sd["v.pos_embed"] if pos_embed is None else pos_embed.to(dt)
    x = x.unsqueeze(1)
    x = x.transpose(2, 3)
    bsz = x.shape[0]
    x = _patch_embed(x, sd["v.patch_embed.proj.weight"], sd["v.patch_embed.proj.bias"], fstride, tstride)
    cls_tokens = sd["v.cls_token"].expand(bsz, -1, -1)
    dist_token = sd["v.dist_token"].expand(bsz, -1, -1)
    x = torch.cat((cls_tokens, dist_token, x), dim=1)
    assert x.shape[1] == pos.shape[1], f"{x.shape[1]} tokens but a positional table of {pos.shape[1]} rows"
    x = x + pos
    depth = len({k.split(".")[2] for k in sd if k.startswith("v.blocks.")})
    for i in range(depth):
        x = _block(x, sd, f"v.blocks.{i}.", num_heads)
    x = _layer_norm(x, sd["v.norm.weight"], sd["v.norm.bias"], LN_EPS)
    x = (x[:, 0] + x[:, 1]) / 2
    x = _layer_norm(x, sd["mlp_head.0.weight"], sd["mlp_head.0.bias"], HEAD_LN_EPS)
    return _linear(x, sd["mlp_head.1.weight"], sd["mlp_head.1.bias"])

"""Test oracle: the released AudioMAE models, written out as plain tensor math.

This module re-derives, independently and deliberately literally, what the released AudioMAE
code computes (pretraining ``MaskedAutoencoderViT`` with ``decoder_mode`` 0 or 1, and the
fine-tuning ``VisionTransformer`` with global pooling), so that the package under test can be
compared against it number for number. It operates on state dicts in the *official* key layout,
so the same dict can be written as an official checkpoint and fed to the package's importer.

Everything is plain math on tensors: explicit reshapes and index lists, LayerNorm / GELU /
softmax written out, and a Python loop over the attention windows of the Swin decoder. No
einops, no ``F.scaled_dot_product_attention``, no ``nn.Module``. All arithmetic runs in the
dtype of the input spectrogram (pass float64 inputs for a high-precision reference).

Conventions (as in the official code):
    imgs: [B, 1, T, F] (time frames, mel bins); patch p = 16; grid (T', F') = (T/p, F/p)
    tokens are time-major: k = t * F' + f; pixels inside a patch: dt * p + df
    mask: [B, L], 0 keep, 1 remove
    official ``patch_hw`` is (F', T') -- swapped -- and the sin-cos table is built on it.

Facts verified against the released code (facebookresearch/AudioMAE ``models_mae.py``,
``models_vit.py``, ``util/pos_embed.py``, ``timm_patch/swin_transformer.py``):
  * The Swin decoder always has 16 blocks of 16 heads (hard-coded); ``swin_depth`` /
    ``swin_heads`` here exist only to allow tiny test models.
  * Odd decoder blocks shift by (2, 0): only along time. The AudioMAE-patched block keeps the
    given shift. Modern timm's ``SwinTransformerV2CrBlock`` *replaces* any non-zero shift by
    ``window // 2`` on both axes (giving (2, 2)), so it is not a drop-in equivalent.
  * The region mask uses Swin's 3 x 3 slice labelling; with a zero shift on an axis the slices
    along that axis degenerate (``slice(-w, -0)`` is empty, ``slice(-0, None)`` is everything),
    so the labels only vary along the shifted axis.
"""

from __future__ import annotations

import argparse
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "official_pos_embed",
    "make_official_pretrain_state_dict",
    "make_official_finetune_state_dict",
    "official_patchify",
    "official_random_masking",
    "official_vit_block",
    "official_swin_window_and_shift",
    "official_swin_region_labels",
    "official_swin_block",
    "official_forward_encoder",
    "official_forward_decoder",
    "official_forward_loss",
    "official_pretrain_forward",
    "official_finetune_forward",
    "to_official_pretrain_checkpoint",
    "to_official_finetune_checkpoint",
]

StateDict = Dict[str, torch.Tensor]

LN_EPS = 1e-6  # every LayerNorm of the released models: partial(nn.LayerNorm, eps=1e-6)


# ------------------------------------------------------------------------------------------------
# positional embedding
# ------------------------------------------------------------------------------------------------
def _sincos_1d_np(dim: int, pos: np.ndarray) -> np.ndarray:
    """[M] positions -> [M, dim] float64: sin block then cos block, MAE frequencies."""
    assert dim % 2 == 0, f"dim must be even, got {dim}"
    half = dim // 2
    omega = np.arange(half, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = pos.astype(np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def official_pos_embed(embed_dim: int, grid_hw: Sequence[int] = (8, 64), cls_token: bool = True) -> torch.Tensor:
    """``get_2d_sincos_pos_embed_flexible(embed_dim, grid_hw, cls_token)`` as a [1, cls + h*w, D] float32.

    The official call passes ``patch_hw = (F/16, T/16)``, e.g. (8, 64) for 1024 x 128 inputs.
    The table is a row-major (h, w) grid: row n gets the 1-D code of ``n % w`` in its first D/2
    channels and of ``n // w`` in its last D/2. Because the tokens are actually laid out
    (T', F') time-major, token k of the model gets codes (k % T', k // T'). The cls row is zeros.
    Computed in float64 (like numpy in the original), then cast to float32.
    """
    assert embed_dim % 4 == 0, f"embed_dim must be a multiple of 4, got {embed_dim}"
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    n = np.arange(gh * gw)
    first = _sincos_1d_np(embed_dim // 2, n % gw)  # meshgrid(w, h)[0] = the w coordinate
    second = _sincos_1d_np(embed_dim // 2, n // gw)  # meshgrid(w, h)[1] = the h coordinate
    table = np.concatenate([first, second], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros([1, embed_dim]), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


# ------------------------------------------------------------------------------------------------
# random state dicts in the official layout
# ------------------------------------------------------------------------------------------------
class _Filler:
    """Deterministic, well-scaled random tensors (so attention is far from uniform)."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(int(seed))

    def normal(self, *shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g) * std + mean

    def uniform(self, *shape: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g) * (high - low) + low

    def linear(self, sd: StateDict, name: str, out_f: int, in_f: int, std: Optional[float] = None) -> None:
        sd[f"{name}.weight"] = self.normal(out_f, in_f, std=in_f**-0.5 if std is None else std)
        sd[f"{name}.bias"] = self.normal(out_f, std=0.02)

    def layer_norm(self, sd: StateDict, name: str, dim: int) -> None:
        sd[f"{name}.weight"] = self.normal(dim, std=0.1, mean=1.0)
        sd[f"{name}.bias"] = self.normal(dim, std=0.05)


def _fill_vit_block(f: _Filler, sd: StateDict, prefix: str, dim: int, mlp_ratio: float) -> None:
    # timm 0.3.2 Block: norm1, attn(qkv, proj), norm2, mlp(fc1, fc2)
    hidden = int(dim * mlp_ratio)
    f.layer_norm(sd, f"{prefix}.norm1", dim)
    f.linear(sd, f"{prefix}.attn.qkv", 3 * dim, dim)
    f.linear(sd, f"{prefix}.attn.proj", dim, dim)
    f.layer_norm(sd, f"{prefix}.norm2", dim)
    f.linear(sd, f"{prefix}.mlp.fc1", hidden, dim)
    f.linear(sd, f"{prefix}.mlp.fc2", dim, hidden)


def _fill_swin_block(
    f: _Filler, sd: StateDict, prefix: str, dim: int, heads: int, mlp_ratio: float, meta_dim: int
) -> None:
    # AudioMAE-patched SwinTransformerBlock: attn(tau, qkv, proj, meta_mlp.fc1/fc2), norm1, mlp, norm2
    hidden = int(dim * mlp_ratio)
    sd[f"{prefix}.attn.tau"] = f.uniform(heads, low=0.5, high=1.5)
    f.linear(sd, f"{prefix}.attn.qkv", 3 * dim, dim)
    f.linear(sd, f"{prefix}.attn.proj", dim, dim)
    # the meta MLP sees log-spaced coordinates in [-1.7, 1.7]; scale it so its bias is O(1)
    sd[f"{prefix}.attn.meta_mlp.fc1.weight"] = f.normal(meta_dim, 2, std=1.0)
    sd[f"{prefix}.attn.meta_mlp.fc1.bias"] = f.normal(meta_dim, std=0.5)
    sd[f"{prefix}.attn.meta_mlp.fc2.weight"] = f.normal(heads, meta_dim, std=2.0 * meta_dim**-0.5)
    sd[f"{prefix}.attn.meta_mlp.fc2.bias"] = f.normal(heads, std=0.1)
    f.layer_norm(sd, f"{prefix}.norm1", dim)
    f.linear(sd, f"{prefix}.mlp.fc1", hidden, dim)
    f.linear(sd, f"{prefix}.mlp.fc2", dim, hidden)
    f.layer_norm(sd, f"{prefix}.norm2", dim)


def make_official_pretrain_state_dict(
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    decoder_embed_dim: int,
    decoder_depth: int,
    decoder_num_heads: int,
    decoder_mode: int,
    mlp_ratio: float = 4,
    img_size: Tuple[int, int] = (1024, 128),
    patch: int = 16,
    seed: int = 0,
    swin_depth: int = 16,
    swin_heads: int = 16,
    meta_dim: int = 384,
) -> StateDict:
    """A random ``MaskedAutoencoderViT.state_dict()`` (in_chans=1, audio_exp=True), official key order.

    ``num_heads`` / ``decoder_num_heads`` do not change any shape; they are accepted for symmetry.
    decoder_mode 0: ``decoder_depth`` timm Blocks. decoder_mode 1: ``swin_depth`` Swin blocks with
    ``swin_heads`` heads (official: 16 and 16, whatever decoder_depth / decoder_num_heads say).
    """
    assert decoder_mode in (0, 1), f"the released code implements decoder_mode 0 and 1, got {decoder_mode}"
    assert embed_dim % num_heads == 0, f"embed_dim {embed_dim} not divisible by num_heads {num_heads}"
    T, Fq = int(img_size[0]), int(img_size[1])
    assert T % patch == 0 and Fq % patch == 0, f"img_size {img_size} must be a multiple of patch {patch}"
    patch_hw = (Fq // patch, T // patch)  # the official (swapped) order
    num_patches = patch_hw[0] * patch_hw[1]
    f = _Filler(seed)
    sd: StateDict = {}
    # own parameters first, in registration order
    sd["cls_token"] = f.normal(1, 1, embed_dim, std=0.02)
    sd["pos_embed"] = official_pos_embed(embed_dim, patch_hw, cls_token=True)
    sd["mask_token"] = f.normal(1, 1, decoder_embed_dim, std=0.02)
    sd["decoder_pos_embed"] = official_pos_embed(decoder_embed_dim, patch_hw, cls_token=True)
    assert sd["pos_embed"].shape == (1, num_patches + 1, embed_dim)
    # then child modules in registration order
    sd["patch_embed.proj.weight"] = f.normal(embed_dim, 1, patch, patch, std=(patch * patch) ** -0.5)
    sd["patch_embed.proj.bias"] = f.normal(embed_dim, std=0.02)
    for i in range(depth):
        _fill_vit_block(f, sd, f"blocks.{i}", embed_dim, mlp_ratio)
    f.layer_norm(sd, "norm", embed_dim)
    f.linear(sd, "decoder_embed", decoder_embed_dim, embed_dim)
    if decoder_mode == 1:
        assert decoder_embed_dim % swin_heads == 0, f"decoder dim {decoder_embed_dim} not divisible by {swin_heads}"
        for i in range(swin_depth):
            _fill_swin_block(f, sd, f"decoder_blocks.{i}", decoder_embed_dim, swin_heads, mlp_ratio, meta_dim)
    else:
        assert decoder_embed_dim % decoder_num_heads == 0, "decoder dim not divisible by decoder_num_heads"
        for i in range(decoder_depth):
            _fill_vit_block(f, sd, f"decoder_blocks.{i}", decoder_embed_dim, mlp_ratio)
    f.layer_norm(sd, "decoder_norm", decoder_embed_dim)
    f.linear(sd, "decoder_pred", patch * patch * 1, decoder_embed_dim)
    return sd


def make_official_finetune_state_dict(
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    num_classes: int = 527,
    mlp_ratio: float = 4,
    img_size: Tuple[int, int] = (1024, 128),
    patch: int = 16,
    seed: int = 0,
) -> StateDict:
    """A random fine-tuned ``models_vit.VisionTransformer(global_pool=True)`` state dict.

    Keys: cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, head.*, fc_norm.* (no ``norm``:
    the official class deletes it). pos_embed is the pretraining table (the fine-tune script loads
    it from the pretrained checkpoint and keeps it frozen).
    """
    assert embed_dim % num_heads == 0, f"embed_dim {embed_dim} not divisible by num_heads {num_heads}"
    T, Fq = int(img_size[0]), int(img_size[1])
    assert T % patch == 0 and Fq % patch == 0, f"img_size {img_size} must be a multiple of patch {patch}"
    f = _Filler(seed)
    sd: StateDict = {}
    sd["cls_token"] = f.normal(1, 1, embed_dim, std=0.02)
    sd["pos_embed"] = official_pos_embed(embed_dim, (Fq // patch, T // patch), cls_token=True)
    sd["patch_embed.proj.weight"] = f.normal(embed_dim, 1, patch, patch, std=(patch * patch) ** -0.5)
    sd["patch_embed.proj.bias"] = f.normal(embed_dim, std=0.02)
    for i in range(depth):
        _fill_vit_block(f, sd, f"blocks.{i}", embed_dim, mlp_ratio)
    f.linear(sd, "head", num_classes, embed_dim)
    f.layer_norm(sd, "fc_norm", embed_dim)
    return sd


# ------------------------------------------------------------------------------------------------
# plain-math building blocks
# ------------------------------------------------------------------------------------------------
def _sub(sd: StateDict, prefix: str, dtype: torch.dtype) -> StateDict:
    """The entries under ``prefix.`` with the prefix stripped, cast to ``dtype``."""
    head = prefix + "."
    return {k[len(head) :]: v.to(dtype) for k, v in sd.items() if k.startswith(head)}


def _count_blocks(sd: StateDict, prefix: str) -> int:
    n = 0
    while f"{prefix}.{n}.norm1.weight" in sd:
        n += 1
    return n


def _linear(x: torch.Tensor, p: StateDict, name: str) -> torch.Tensor:
    return torch.matmul(x, p[f"{name}.weight"].t()) + p[f"{name}.bias"]


def _layer_norm(x: torch.Tensor, p: StateDict, name: str, eps: float = LN_EPS) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as nn.LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))  # nn.GELU() default: exact erf form


def _relu(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, min=0.0)


def _softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def _mlp(x: torch.Tensor, p: StateDict, name: str) -> torch.Tensor:
    return _linear(_gelu(_linear(x, p, f"{name}.fc1")), p, f"{name}.fc2")


def _split_heads(qkv: torch.Tensor, heads: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, N, 3C] -> q, k, v each [B, heads, N, C/heads] (qkv channel layout: (3, heads, hd))."""
    B, N, C3 = qkv.shape
    C = C3 // 3
    hd = C // heads
    t = qkv.reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
    return t[0], t[1], t[2]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, hd] -> [B, N, heads*hd]."""
    B, h, N, hd = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, N, h * hd)


# ------------------------------------------------------------------------------------------------
# patchify, masking
# ------------------------------------------------------------------------------------------------
def official_patchify(imgs: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """[B, 1, T, F] -> [B, (T/p)*(F/p), p*p]; token k = t*(F/p)+f, pixel dt*p+df."""
    B, C, T, Fq = imgs.shape
    assert C == 1, f"audio input has one channel, got {C}"
    h, w = T // patch, Fq // patch
    x = imgs.reshape(B, h, patch, w, patch)  # b, t, dt, f, df
    x = x.permute(0, 1, 3, 2, 4)  # b, t, f, dt, df
    return x.reshape(B, h * w, patch * patch)


def _patch_embed(imgs: torch.Tensor, p: StateDict) -> torch.Tensor:
    """Conv2d(1, D, 16, stride 16) + flatten(2).transpose(1, 2), as a matmul over patchified pixels."""
    weight = p["patch_embed.proj.weight"]  # [D, 1, p, p]
    patch = weight.shape[-1]
    pixels = official_patchify(imgs, patch)  # [B, L, p*p], pixel index dt*p+df = kernel row-major
    return torch.matmul(pixels, weight.reshape(weight.shape[0], -1).t()) + p["patch_embed.proj.bias"]


def official_random_masking(
    x: torch.Tensor, noise: torch.Tensor, mask_ratio: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE random masking with given noise. x [B, L, D], noise [B, L].

    Returns (x_kept [B, len_keep, D] in ascending-noise order, mask [B, L] 0 keep 1 remove,
    ids_restore [B, L]); len_keep = int(L * (1 - mask_ratio)).
    """
    B, L, D = x.shape
    assert noise.shape == (B, L), f"noise must be [{B}, {L}], got {tuple(noise.shape)}"
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.stack([x[b, ids_keep[b]] for b in range(B)], dim=0)
    mask = torch.ones(B, L, dtype=x.dtype)
    for b in range(B):
        mask[b, ids_keep[b]] = 0.0
    return kept, mask, ids_restore


# ------------------------------------------------------------------------------------------------
# transformer blocks
# ------------------------------------------------------------------------------------------------
def official_vit_block(p: StateDict, x: torch.Tensor, *, num_heads: int) -> torch.Tensor:
    """timm (0.3.2) pre-norm ``Block`` in eval mode. p: keys norm1.*, attn.qkv.*, attn.proj.*, norm2.*, mlp.*."""
    C = x.shape[-1]
    scale = (C // num_heads) ** -0.5
    q, k, v = _split_heads(_linear(_layer_norm(x, p, "norm1"), p, "attn.qkv"), num_heads)
    attn = _softmax(torch.matmul(q, k.transpose(-2, -1)) * scale)
    x = x + _linear(_merge_heads(torch.matmul(attn, v)), p, "attn.proj")
    x = x + _mlp(_layer_norm(x, p, "norm2"), p, "mlp")
    return x


def official_swin_window_and_shift(
    grid: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``_calc_window_shift`` of the AudioMAE-patched block: clamp the window to the grid, and
    drop the shift along an axis the (clamped) window covers whole. The requested shift is kept
    otherwise (unlike modern timm, which re-derives it as window // 2 on both axes)."""
    win = tuple(g if g <= w else w for g, w in zip(grid, window))
    sh = tuple(0 if g <= w else s for g, w, s in zip(grid, win, shift))
    return (int(win[0]), int(win[1])), (int(sh[0]), int(sh[1]))


def _slice_members(n: int, s: slice) -> set:
    return set(range(n)[s])


def official_swin_region_labels(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    """Swin's region labels on the (cyclically shifted) grid: [H, W] integer ids.

    The official code assigns ``cnt`` (0..8) to ``img_mask[hs, ws]`` for hs in
    (slice(0,-wh), slice(-wh,-sh), slice(-sh,None)) and likewise ws, later assignments winning.
    A cell therefore ends with label 3*i + j where i is the *last* row slice containing it and j
    the last column slice. With sh = 0, slice(-0, None) is the whole axis, so i = 2 everywhere
    (the axis is not partitioned); with sh > 0 the three slices are the usual Swin regions.
    """
    H, W = int(grid[0]), int(grid[1])
    wh, ww = int(window[0]), int(window[1])
    sh, sw = int(shift[0]), int(shift[1])
    row_slices = (slice(0, -wh), slice(-wh, -sh), slice(-sh, None))
    col_slices = (slice(0, -ww), slice(-ww, -sw), slice(-sw, None))
    row_sets = [_slice_members(H, s) for s in row_slices]
    col_sets = [_slice_members(W, s) for s in col_slices]
    labels = torch.zeros(H, W, dtype=torch.long)
    for r in range(H):
        i = max(idx for idx in range(3) if r in row_sets[idx])
        for c in range(W):
            j = max(idx for idx in range(3) if c in col_sets[idx])
            labels[r, c] = 3 * i + j
    return labels


def _relative_position_bias(p: StateDict, window: Tuple[int, int], heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Continuous relative position bias [heads, n, n] for a (wh, ww) window, n = wh*ww.

    bias[h, a, b] = meta_mlp(sign(d) * log(1 + |d|))[h] with d = pos(a) - pos(b) (query minus
    key), window-local positions row-major: a = ai * ww + aj.
    """
    wh, ww = window
    n = wh * ww
    coords = torch.zeros(n * n, 2, dtype=dtype)
    for a in range(n):
        for b in range(n):
            d0 = float(a // ww - b // ww)
            d1 = float(a % ww - b % ww)
            coords[a * n + b, 0] = math.copysign(math.log1p(abs(d0)), d0) if d0 != 0 else 0.0
            coords[a * n + b, 1] = math.copysign(math.log1p(abs(d1)), d1) if d1 != 0 else 0.0
    hidden = _relu(_linear(coords, p, "attn.meta_mlp.fc1"))
    out = _linear(hidden, p, "attn.meta_mlp.fc2")  # [n*n, heads]
    assert out.shape[-1] == heads, f"meta_mlp outputs {out.shape[-1]} heads, expected {heads}"
    return out.reshape(n, n, heads).permute(2, 0, 1)


def _swin_window_attention(
    p: StateDict, x: torch.Tensor, *, grid: Tuple[int, int], heads: int, window: Tuple[int, int], shift: Tuple[int, int]
) -> torch.Tensor:
    """Shifted-window scaled cosine attention on [B, H*W, C] (row-major grid), looping over windows.

    A cyclic roll by (-sh, -sw) followed by window partition means: the window at (wi, wj) holds,
    at local slot (a, b), the original cell ((wi*wh + a + sh) % H, (wj*ww + b + sw) % W). The
    output is written back to the same cells, which is the reverse partition + reverse roll.
    """
    B, L, C = x.shape
    H, W = grid
    wh, ww = window
    sh, sw = shift
    assert H * W == L, f"grid {grid} does not match {L} tokens"
    assert H % wh == 0 and W % ww == 0, f"grid {grid} must be a multiple of the window {window}"
    shifted = sh != 0 or sw != 0
    labels = official_swin_region_labels(grid, window, shift) if shifted else None
    bias = _relative_position_bias(p, window, heads, x.dtype)  # [heads, n, n]
    tau = torch.clamp(p["attn.tau"], min=0.01).reshape(1, heads, 1, 1)  # no 1/sqrt(d) scaling
    out = torch.zeros_like(x)
    for wi in range(H // wh):
        for wj in range(W // ww):
            cells = []  # original flat token index of each window slot
            region = []  # region label of each window slot (in shifted coordinates)
            for a in range(wh):
                for b in range(ww):
                    r, c = wi * wh + a, wj * ww + b  # position on the rolled grid
                    cells.append(((r + sh) % H) * W + (c + sw) % W)
                    if shifted:
                        region.append(int(labels[r, c]))
            idx = torch.tensor(cells, dtype=torch.long)
            xw = x[:, idx, :]  # [B, n, C]
            q, k, v = _split_heads(_linear(xw, p, "attn.qkv"), heads)  # [B, h, n, hd]
            q_norm = torch.sqrt((q * q).sum(dim=-1, keepdim=True))  # [B, h, n, 1]
            k_norm = torch.sqrt((k * k).sum(dim=-1, keepdim=True))
            denom = torch.clamp(q_norm * k_norm.transpose(-2, -1), min=1e-6)
            logits = torch.matmul(q, k.transpose(-2, -1)) / denom
            logits = logits / tau
            logits = logits + bias.unsqueeze(0)
            if shifted:
                reg = torch.tensor(region)
                region_mask = torch.where(reg[:, None] != reg[None, :], -100.0, 0.0).to(x.dtype)
                logits = logits + region_mask
            attn = _softmax(logits)
            yw = _linear(_merge_heads(torch.matmul(attn, v)), p, "attn.proj")
            out[:, idx, :] = yw
    return out


def official_swin_block(
    p: StateDict,
    x: torch.Tensor,
    *,
    grid: Sequence[int],
    num_heads: int,
    window: Sequence[int] = (4, 4),
    shift: Sequence[int] = (0, 0),
) -> torch.Tensor:
    """AudioMAE-patched ``SwinTransformerBlock`` (Swin-V2-cr) in eval mode on [B, H*W, C].

    p: keys attn.tau, attn.qkv.*, attn.proj.*, attn.meta_mlp.fc1/fc2.*, norm1.*, mlp.*, norm2.*.
    Window / shift are clamped to the grid as the official block does. Post-norm residuals.
    """
    grid_t = (int(grid[0]), int(grid[1]))
    win, sh = official_swin_window_and_shift(grid_t, window, shift)
    a = _swin_window_attention(p, x, grid=grid_t, heads=num_heads, window=win, shift=sh)
    x = x + _layer_norm(a, p, "norm1")
    x = x + _layer_norm(_mlp(x, p, "mlp"), p, "norm2")
    return x


# ------------------------------------------------------------------------------------------------
# pretraining model
# ------------------------------------------------------------------------------------------------
def official_forward_encoder(
    sd: StateDict, imgs: torch.Tensor, noise: torch.Tensor, *, mask_ratio: float, num_heads: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (latent [B, 1+len_keep, D] after ``norm``, mask [B, L], ids_restore [B, L])."""
    dt = imgs.dtype
    p = {k: v.to(dt) for k, v in sd.items() if not k.startswith("decoder") and k != "mask_token"}
    x = _patch_embed(imgs, p)
    x = x + p["pos_embed"][:, 1:, :]
    x, mask, ids_restore = official_random_masking(x, noise, mask_ratio)
    cls = (p["cls_token"] + p["pos_embed"][:, :1, :]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for i in range(_count_blocks(sd, "blocks")):
        x = official_vit_block(_sub(sd, f"blocks.{i}", dt), x, num_heads=num_heads)
    x = _layer_norm(x, p, "norm")
    return x, mask, ids_restore


def official_forward_decoder(
    sd: StateDict,
    latent: torch.Tensor,
    ids_restore: torch.Tensor,
    *,
    grid: Sequence[int],
    decoder_mode: int,
    decoder_num_heads: int = 16,
    swin_heads: int = 16,
    window: Sequence[int] = (4, 4),
    shift: Sequence[int] = (2, 0),
    no_shift: bool = False,
) -> torch.Tensor:
    """-> pred [B, L, p*p]. grid = (T/p, F/p); mode 0 global blocks (cls passes through them),
    mode 1 Swin blocks on the patch tokens only (cls dropped before), shift on odd blocks."""
    dt = latent.dtype
    p = {k: v.to(dt) for k, v in sd.items() if k.startswith("decoder") or k == "mask_token"}
    x = _linear(latent, p, "decoder_embed")  # [B, 1+keep, Dd]
    B, n1, Dd = x.shape
    L = ids_restore.shape[1]
    # kept tokens followed by mask tokens, in shuffled order; ids_restore puts them back
    shuffled = torch.cat([x[:, 1:, :], p["mask_token"].expand(B, L - (n1 - 1), Dd)], dim=1)
    unshuffled = torch.stack([shuffled[b, ids_restore[b]] for b in range(B)], dim=0)
    x = torch.cat([x[:, :1, :], unshuffled], dim=1)
    x = x + p["decoder_pos_embed"]
    if decoder_mode == 0:
        for i in range(_count_blocks(sd, "decoder_blocks")):
            x = official_vit_block(_sub(sd, f"decoder_blocks.{i}", dt), x, num_heads=decoder_num_heads)
    elif decoder_mode == 1:
        x = x[:, 1:, :]
        for i in range(_count_blocks(sd, "decoder_blocks")):
            blk_shift = (0, 0) if (no_shift or i % 2 == 0) else tuple(shift)
            x = official_swin_block(
                _sub(sd, f"decoder_blocks.{i}", dt), x, grid=grid, num_heads=swin_heads, window=window, shift=blk_shift
            )
    else:
        raise ValueError(f"the released code implements decoder_mode 0 and 1, got {decoder_mode}")
    x = _layer_norm(x, p, "decoder_norm")
    pred = _linear(x, p, "decoder_pred")
    if decoder_mode == 0:
        pred = pred[:, 1:, :]
    return pred


def official_forward_loss(
    imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, *, norm_pix_loss: bool
) -> torch.Tensor:
    """Per-patch MSE averaged over masked patches only; norm_pix uses the unbiased variance + 1e-6."""
    patch = int(round(math.sqrt(pred.shape[-1])))
    target = official_patchify(imgs, patch)
    if norm_pix_loss:
        n = target.shape[-1]
        mean = target.sum(dim=-1, keepdim=True) / n
        var = ((target - mean) ** 2).sum(dim=-1, keepdim=True) / (n - 1)
        target = (target - mean) / torch.sqrt(var + 1e-6)
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # [B, L]
    return (per_patch * mask).sum() / mask.sum()


def official_pretrain_forward(
    sd: StateDict,
    imgs: torch.Tensor,
    noise: torch.Tensor,
    *,
    mask_ratio: float = 0.8,
    decoder_mode: int,
    num_heads: int,
    decoder_num_heads: int = 16,
    swin_heads: int = 16,
    norm_pix_loss: bool = True,
    window: Sequence[int] = (4, 4),
    shift: Sequence[int] = (2, 0),
    no_shift: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``MaskedAutoencoderViT.forward`` in eval mode with the masking noise given.

    imgs [B, 1, T, F], noise [B, L] -> (loss scalar, pred [B, L, p*p], mask [B, L]).
    The depths are read from the state dict; ``decoder_num_heads`` is used in mode 0 only,
    ``swin_heads`` in mode 1 only. (The official forward also returns a zero contrastive loss.)
    """
    patch = sd["patch_embed.proj.weight"].shape[-1]
    grid = (imgs.shape[2] // patch, imgs.shape[3] // patch)
    latent, mask, ids_restore = official_forward_encoder(sd, imgs, noise, mask_ratio=mask_ratio, num_heads=num_heads)
    pred = official_forward_decoder(
        sd,
        latent,
        ids_restore,
        grid=grid,
        decoder_mode=decoder_mode,
        decoder_num_heads=decoder_num_heads,
        swin_heads=swin_heads,
        window=window,
        shift=shift,
        no_shift=no_shift,
    )
    loss = official_forward_loss(imgs, pred, mask, norm_pix_loss=norm_pix_loss)
    return loss, pred, mask


# ------------------------------------------------------------------------------------------------
# fine-tuning model
# ------------------------------------------------------------------------------------------------
def _finetune_mask_2d(
    x: torch.Tensor,
    grid: Tuple[int, int],
    mask_t_prob: float,
    mask_f_prob: float,
    noise_t: torch.Tensor,
    noise_f: torch.Tensor,
) -> torch.Tensor:
    """models_vit ``random_masking_2d``: drop whole time rows, then whole frequency columns.

    Keeps int(T'*(1-pt)) rows (ascending noise_t order) and int(F'*(1-pf)) columns (ascending
    noise_f order); the result is [B, keep_t*keep_f, D], rows outer, both in shuffled order.
    """
    B, L, D = x.shape
    T, Fq = grid
    keep_t = int(T * (1 - mask_t_prob))
    keep_f = int(Fq * (1 - mask_f_prob))
    assert noise_t.shape == (B, T), f"noise_t must be [{B}, {T}], got {tuple(noise_t.shape)}"
    assert noise_f.shape == (B, Fq), f"noise_f must be [{B}, {Fq}], got {tuple(noise_f.shape)}"
    rows = torch.argsort(noise_t, dim=1)[:, :keep_t]
    cols = torch.argsort(noise_f, dim=1)[:, :keep_f]
    out = []
    for b in range(B):
        picked = []
        for r in rows[b].tolist():
            for c in cols[b].tolist():
                picked.append(r * Fq + c)
        out.append(x[b, torch.tensor(picked, dtype=torch.long)])
    return torch.stack(out, dim=0)


def official_finetune_forward(
    sd: StateDict,
    imgs: torch.Tensor,
    *,
    num_heads: int,
    mask_t_prob: float = 0.0,
    mask_f_prob: float = 0.0,
    noise_t: Optional[torch.Tensor] = None,
    noise_f: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``models_vit.VisionTransformer(global_pool=True).forward`` in eval mode -> logits [B, C].

    If either prob > 0 the official code always takes the 2-D path (its ``if self.random_masking_2d``
    tests a bound method), dropping time rows then frequency columns; noise_t [B, T'] and
    noise_f [B, F'] replace its ``torch.rand`` draws (drawn with torch.rand when omitted).
    Pooling: mean over the patch tokens (cls excluded), then ``fc_norm``, then ``head``.
    """
    dt = imgs.dtype
    p = {k: v.to(dt) for k, v in sd.items()}
    patch = sd["patch_embed.proj.weight"].shape[-1]
    B = imgs.shape[0]
    grid = (imgs.shape[2] // patch, imgs.shape[3] // patch)
    x = _patch_embed(imgs, p)
    x = x + p["pos_embed"][:, 1:, :]
    if mask_t_prob > 0.0 or mask_f_prob > 0.0:
        if noise_t is None:
            noise_t = torch.rand(B, grid[0])
        if noise_f is None:
            noise_f = torch.rand(B, grid[1])
        x = _finetune_mask_2d(x, grid, mask_t_prob, mask_f_prob, noise_t, noise_f)
    cls = (p["cls_token"] + p["pos_embed"][:, :1, :]).expand(B, -1, -1)
    x = torch.cat([cls, x], dim=1)
    for i in range(_count_blocks(sd, "blocks")):
        x = official_vit_block(_sub(sd, f"blocks.{i}", dt), x, num_heads=num_heads)
    pooled = x[:, 1:, :].mean(dim=1)
    return _linear(_layer_norm(pooled, p, "fc_norm"), p, "head")


# ------------------------------------------------------------------------------------------------
# checkpoints as util/misc.py save_model writes them
# ------------------------------------------------------------------------------------------------
def _official_args(**overrides) -> argparse.Namespace:
    """A representative subset of main_pretrain.py's parsed arguments (after its own edits)."""
    args = dict(
        batch_size=8,
        epochs=33,
        accum_iter=1,
        model="mae_vit_base_patch16",
        input_size=224,
        mask_ratio=0.8,
        norm_pix_loss=True,
        weight_decay=0.0001,
        lr=0.0004,
        blr=0.0002,
        min_lr=0.0,
        warmup_epochs=3,
        data_path="/datasets01/imagenet_full_size/061417/",
        output_dir="./output_dir",
        log_dir="./output_dir",
        device="cuda",
        seed=0,
        resume="",
        start_epoch=0,
        num_workers=10,
        pin_mem=True,
        world_size=64,
        local_rank=-1,
        dist_on_itp=False,
        dist_url="env://",
        audio_exp=True,
        dataset="audioset",
        freqm=0,
        timem=0,
        mixup=0.0,
        roll_mag_aug=True,
        use_custom_patch=False,
        pos_trainable=False,
        decoder_mode=1,
        mask_t_prob=0.7,
        mask_f_prob=0.3,
        mask_2d=False,
        no_shift=False,
        save_every_epoch=4,
        rank=0,
        gpu=0,
        distributed=True,
        dist_backend="nccl",
    )
    args.update(overrides)
    return argparse.Namespace(**args)


def _save_official(sd: StateDict, path, epoch: int, args: argparse.Namespace) -> None:
    to_save = {
        "model": {k: v.clone() for k, v in sd.items()},
        "optimizer": {},
        "epoch": epoch,
        "scaler": {},
        "args": args,  # a pickled argparse.Namespace: not loadable with weights_only=True as is
    }
    torch.save(to_save, str(path))


def to_official_pretrain_checkpoint(sd: StateDict, path, *, epoch: int = 3, **args_overrides) -> None:
    """Write ``{'model', 'optimizer', 'epoch', 'scaler', 'args': argparse.Namespace}`` like save_model."""
    _save_official(sd, path, epoch, _official_args(**args_overrides))


def to_official_finetune_checkpoint(sd: StateDict, path, *, epoch: int = 3, **args_overrides) -> None:
    """The same container for a fine-tuned state dict (main_finetune_as.py saves with save_model too)."""
    defaults = dict(
        model="vit_base_patch16",
        nb_classes=527,
        global_pool=True,
        drop_path=0.1,
        layer_decay=0.75,
        mask_2d=True,
        mask_t_prob=0.2,
        mask_f_prob=0.2,
        blr=0.0002,
        epochs=100,
        warmup_epochs=10,
    )
    defaults.update(args_overrides)
    _save_official(sd, path, epoch, _official_args(**defaults))

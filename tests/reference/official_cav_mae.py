"""Test oracle: the released CAV-MAE models, written out as plain tensor math.

This module re-derives, literally and independently of the package, what the released CAV-MAE
code (``YuanGongND/cav-mae``, ``src/models/cav_mae.py``: ``CAVMAE.forward`` and ``CAVMAEFT.forward``)
computes, so that the package can be compared with it number for number. It works on state dicts
in the *release's* key layout (``module.`` prefixed, as saved from ``DataParallel``), so the same
dict can be written to disk as a release checkpoint and fed to the package's importer.

Everything is plain math: explicit reshapes/permutes and index gathers, LayerNorm, GELU (erf),
softmax and log-softmax written out, attention as matrix products. No einops, no
``F.scaled_dot_product_attention``, no ``nn.Module``. Arithmetic runs in the dtype of the inputs
(pass float64 for a high-precision reference; the weights are cast to it).

Facts used (from the release):
  * every LayerNorm is ``nn.LayerNorm(dim)``: eps 1e-5;
  * ``Block`` is pre-norm with shared attention / MLP and three norm pairs: ``norm1/norm2`` (joint,
    ``modality=None``), ``norm1_a/norm2_a``, ``norm1_v/norm2_v``; attention scale head_dim ** -0.5,
    qkv with bias; MLP fc1 -> GELU -> fc2;
  * audio ``a`` [B, T, F] -> ``unsqueeze(1).transpose(2, 3)`` -> [B, 1, F, T] -> 16x16 conv -> tokens
    frequency-major (k = f * T' + t); then + ``pos_embed_a`` + ``modality_a``; video likewise;
  * ``get_2d_sincos_pos_embed(D, grid_h, grid_w)`` builds ``meshgrid(w, h)`` (w first), stacks and
    *reshapes* (no transpose) to [2, 1, grid_w, grid_h], so row n of the table encodes
    (n % grid_w) in its first D/2 channels and (n // grid_w) in its last D/2;
    audio: (D, 8, T'), video: (D, 14, 14);
  * masking: ``argsort`` of the noise (ascending keeps), keep ``int(L * (1 - ratio))``;
  * encoder: ``blocks_a`` / ``blocks_v`` with the joint norms; ``x = cat(a, v)`` through ``blocks_u``
    (joint norms) then ``norm``; ``for blk in blocks_u: ca = blk(a, 'a')`` then ``norm_a`` (only the
    last shared block acts on ``a`` -- a quirk that matters only with several shared blocks);
    same for video with ``norm_v``;
  * decoder: ``decoder_embed``; mask tokens appended per modality (count from sample 0), unshuffled
    with ``ids_restore``; + ``cat(decoder_pos_embed_a, decoder_pos_embed_v)``; + ``decoder_modality_a``
    on the audio part, + ``decoder_modality_v`` on the video part; ``decoder_blocks`` (joint norms);
    ``decoder_norm``; ``decoder_pred_a`` on the audio tokens, ``decoder_pred_v`` on the video ones;
  * targets: audio patchified from [B, 1, F, T] and video from [B, 3, H, W] by
    ``reshape(N, c, h, p, w, p) -> 'nchpwq->nhwpqc' -> (N, h*w, p*p*c)``; ``norm_pix_loss``:
    ``(t - mean) / sqrt(var + 1e-6)`` with unbiased var; loss = mean over masked patches of the
    per-patch MSE;
  * contrastive: ``normalize(mean(ca, 1))``, ``normalize(mean(cv, 1))``, ``total = a @ v.T / 0.05``,
    ``nce = -mean(diag(log_softmax(total, dim=0)))``; ``c_acc`` = share of columns whose argmax over
    dim 0 is the diagonal; bidirectional: average with the same on ``total.T``;
  * ``loss = mae_loss_weight * (loss_mae_a + loss_mae_v) + contrast_loss_weight * nce``, and the
    returned ``loss_c`` is the *weighted* contrastive term;
  * ``CAVMAEFT``: ``mlp_head = Sequential(LayerNorm, Linear)`` on the mean over tokens; modes
    multimodal / audioonly / videoonly / missingaudioonly / missingvideoonly.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch

__all__ = [
    "official_sincos_2d",
    "make_official_cav_mae_state_dict",
    "official_cav_mae_forward",
    "official_cav_mae_ft_forward",
    "official_patchify",
]

StateDict = Dict[str, torch.Tensor]
LN_EPS = 1e-5
NUM_MEL_BINS = 128  # the release hard-codes 128 bins (8 frequency rows of patches)


# ------------------------------------------------------------------------------------------------
# fixed tables
# ------------------------------------------------------------------------------------------------
def _sincos_1d_np(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(dim // 2, dtype=np.float64)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def official_sincos_2d(embed_dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """``get_2d_sincos_pos_embed(embed_dim, grid_h, grid_w)`` as a [1, h*w, D] float32 tensor."""
    gh = np.arange(grid_h, dtype=np.float32)
    gw = np.arange(grid_w, dtype=np.float32)
    grid = np.meshgrid(gw, gh)  # w goes first
    grid = np.stack(grid, axis=0)
    grid = grid.reshape([2, 1, grid_w, grid_h])  # a reshape, not a transpose
    emb_h = _sincos_1d_np(embed_dim // 2, grid[0])
    emb_w = _sincos_1d_np(embed_dim // 2, grid[1])
    table = np.concatenate([emb_h, emb_w], axis=1)
    return torch.from_numpy(table).float().unsqueeze(0)


# ------------------------------------------------------------------------------------------------
# random state dicts in the release's layout
# ------------------------------------------------------------------------------------------------
class _Filler:
    """Deterministic, well-scaled random tensors; ``lazy`` gives zero-cost views of the right
    shapes instead (to check key layouts at full size)."""

    def __init__(self, seed: int, lazy: bool = False) -> None:
        self.g = torch.Generator().manual_seed(int(seed))
        self.lazy = lazy

    def normal(self, *shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        if self.lazy:
            return torch.zeros(()).expand(*shape)
        return torch.randn(*shape, generator=self.g) * std + mean

    def linear(self, sd: StateDict, name: str, out_f: int, in_f: int) -> None:
        sd[f"{name}.weight"] = self.normal(out_f, in_f, std=in_f**-0.5)
        sd[f"{name}.bias"] = self.normal(out_f, std=0.02)

    def layer_norm(self, sd: StateDict, name: str, dim: int) -> None:
        sd[f"{name}.weight"] = self.normal(dim, std=0.1, mean=1.0)
        sd[f"{name}.bias"] = self.normal(dim, std=0.05)


def _fill_block(f: _Filler, sd: StateDict, prefix: str, dim: int, mlp_ratio: float) -> None:
    # the release's Block registers: norm1, norm1_a, norm1_v, attn, (drop_path), norm2, norm2_a, norm2_v, mlp
    for n in ("norm1", "norm1_a", "norm1_v"):
        f.layer_norm(sd, f"{prefix}.{n}", dim)
    f.linear(sd, f"{prefix}.attn.qkv", 3 * dim, dim)
    f.linear(sd, f"{prefix}.attn.proj", dim, dim)
    for n in ("norm2", "norm2_a", "norm2_v"):
        f.layer_norm(sd, f"{prefix}.{n}", dim)
    hidden = int(dim * mlp_ratio)
    f.linear(sd, f"{prefix}.mlp.fc1", hidden, dim)
    f.linear(sd, f"{prefix}.mlp.fc2", dim, hidden)


def make_official_cav_mae_state_dict(
    *,
    embed_dim: int = 768,
    modality_specific_depth: int = 11,
    total_depth: int = 12,
    decoder_embed_dim: int = 512,
    decoder_depth: int = 8,
    audio_length: int = 1024,
    img_size: int = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    mlp_ratio: float = 4.0,
    finetune: bool = False,
    label_dim: int = 527,
    seed: int = 0,
    prefix: str = "module.",
    lazy: bool = False,
) -> StateDict:
    """A random ``CAVMAE`` (or, with ``finetune``, ``CAVMAEFT``) state dict in the release's key
    order, every key prefixed like a ``DataParallel`` save. ``total_depth`` is the release's fixed
    12 (it builds ``12 - modality_specific_depth`` shared blocks); smaller values allow tiny models.
    ``lazy``: shapes only (expanded zero views), for key-layout checks at full size."""
    f = _Filler(seed, lazy)
    na = int(audio_length * NUM_MEL_BINS / 256)
    nv = (img_size // patch_size) ** 2
    sd: StateDict = {}
    # own parameters in registration order
    sd["modality_a"] = f.normal(1, 1, embed_dim, std=0.1)
    sd["modality_v"] = f.normal(1, 1, embed_dim, std=0.1)
    sd["pos_embed_a"] = official_sincos_2d(embed_dim, 8, na // 8)
    sd["pos_embed_v"] = official_sincos_2d(embed_dim, int(nv**0.5), int(nv**0.5))
    if not finetune:
        sd["mask_token"] = f.normal(1, 1, decoder_embed_dim, std=0.1)
        sd["decoder_modality_a"] = f.normal(1, 1, decoder_embed_dim, std=0.1)
        sd["decoder_modality_v"] = f.normal(1, 1, decoder_embed_dim, std=0.1)
        sd["decoder_pos_embed_a"] = official_sincos_2d(decoder_embed_dim, 8, na // 8)
        sd["decoder_pos_embed_v"] = official_sincos_2d(decoder_embed_dim, int(nv**0.5), int(nv**0.5))
    # child modules in registration order
    sd["patch_embed_a.proj.weight"] = f.normal(embed_dim, 1, patch_size, patch_size, std=patch_size**-1)
    sd["patch_embed_a.proj.bias"] = f.normal(embed_dim, std=0.02)
    sd["patch_embed_v.proj.weight"] = f.normal(
        embed_dim, in_chans, patch_size, patch_size, std=(in_chans * patch_size**2) ** -0.5
    )
    sd["patch_embed_v.proj.bias"] = f.normal(embed_dim, std=0.02)
    for branch in ("blocks_a", "blocks_v"):
        for i in range(modality_specific_depth):
            _fill_block(f, sd, f"{branch}.{i}", embed_dim, mlp_ratio)
    for i in range(total_depth - modality_specific_depth):
        _fill_block(f, sd, f"blocks_u.{i}", embed_dim, mlp_ratio)
    for n in ("norm_a", "norm_v", "norm"):
        f.layer_norm(sd, n, embed_dim)
    if finetune:
        f.layer_norm(sd, "mlp_head.0", embed_dim)
        f.linear(sd, "mlp_head.1", label_dim, embed_dim)
    else:
        f.linear(sd, "decoder_embed", decoder_embed_dim, embed_dim)
        for i in range(decoder_depth):
            _fill_block(f, sd, f"decoder_blocks.{i}", decoder_embed_dim, mlp_ratio)
        f.layer_norm(sd, "decoder_norm", decoder_embed_dim)
        f.linear(sd, "decoder_pred_a", patch_size**2 * 1, decoder_embed_dim)
        f.linear(sd, "decoder_pred_v", patch_size**2 * in_chans, decoder_embed_dim)
    return {prefix + k: v for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------
# plain-math building blocks
# ------------------------------------------------------------------------------------------------
class _Weights:
    """Reads ``module.``-prefixed (or bare) release keys, cast to the compute dtype."""

    def __init__(self, sd: StateDict, dtype: torch.dtype) -> None:
        self.sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
        self.dtype = dtype

    def __call__(self, key: str) -> torch.Tensor:
        return self.sd[key].to(self.dtype)

    def has(self, key: str) -> bool:
        return key in self.sd


def _linear(W: _Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ W(f"{name}.weight").t() + W(f"{name}.bias")


def _layer_norm(W: _Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + LN_EPS) * W(f"{name}.weight") + W(f"{name}.bias")


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    e = torch.exp(x - x.max(dim=dim, keepdim=True).values)
    return e / e.sum(dim=dim, keepdim=True)


def _log_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    m = x.max(dim=dim, keepdim=True).values
    return x - m - torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))


def _attention(W: _Weights, name: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    B, N, C = x.shape
    d = C // heads
    qkv = _linear(W, f"{name}.qkv", x).reshape(B, N, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * d**-0.5) @ k.transpose(-2, -1)
    attn = _softmax(attn, dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return _linear(W, f"{name}.proj", out)


def _block(W: _Weights, name: str, x: torch.Tensor, heads: int, modality: Optional[str] = None) -> torch.Tensor:
    """The release's ``Block.forward(x, modality)``: modality None, 'a' or 'v' picks the norm pair."""
    sfx = "" if modality is None else f"_{modality}"
    x = x + _attention(W, f"{name}.attn", _layer_norm(W, f"{name}.norm1{sfx}", x), heads)
    h = _layer_norm(W, f"{name}.norm2{sfx}", x)
    x = x + _linear(W, f"{name}.mlp.fc2", _gelu(_linear(W, f"{name}.mlp.fc1", h)))
    return x


def _patch_embed(W: _Weights, name: str, img: torch.Tensor, p: int) -> torch.Tensor:
    """Conv2d(k=p, s=p) then flatten(2).transpose(1, 2): [B, C, H, W] -> [B, h*w, D] row-major."""
    B, C, H, Wd = img.shape
    h, w = H // p, Wd // p
    patches = img.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C * p * p)
    kernel = W(f"{name}.proj.weight")  # [D, C, p, p], flattened in (c, kh, kw) order
    return patches @ kernel.reshape(kernel.shape[0], -1).t() + W(f"{name}.proj.bias")


def official_patchify(imgs: torch.Tensor, c: int, h: int, w: int, p: int = 16) -> torch.Tensor:
    """``CAVMAE.patchify``: [N, c, h*p, w*p] -> [N, h*w, p*p*c] ('nchpwq->nhwpqc')."""
    x = imgs.reshape(imgs.shape[0], c, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)
    return x.reshape(imgs.shape[0], h * w, p * p * c)


def _random_masking(x: torch.Tensor, ratio: float, noise: torch.Tensor):
    N, L, D = x.shape
    len_keep = int(L * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones(N, L, dtype=x.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_masked, mask, ids_restore


def _embed_audio(W: _Weights, a: torch.Tensor, p: int) -> torch.Tensor:
    a = a.unsqueeze(1).transpose(2, 3)  # [B, 1, F, T]
    return _patch_embed(W, "patch_embed_a", a, p) + W("pos_embed_a") + W("modality_a")


def _embed_video(W: _Weights, v: torch.Tensor, p: int) -> torch.Tensor:
    return _patch_embed(W, "patch_embed_v", v, p) + W("pos_embed_v") + W("modality_v")


def _count(W: _Weights, prefix: str) -> int:
    n = 0
    while W.has(f"{prefix}.{n}.norm1.weight"):
        n += 1
    return n


# ------------------------------------------------------------------------------------------------
# forward passes
# ------------------------------------------------------------------------------------------------
def official_cav_mae_forward(
    sd: StateDict,
    audio: torch.Tensor,
    imgs: torch.Tensor,
    *,
    noise_a: torch.Tensor,
    noise_v: torch.Tensor,
    num_heads: int,
    decoder_num_heads: int,
    mask_ratio_a: float = 0.75,
    mask_ratio_v: float = 0.75,
    mae_loss_weight: float = 1.0,
    contrast_loss_weight: float = 0.01,
    norm_pix_loss: bool = False,
    bidirect_contrast: bool = False,
    patch_size: int = 16,
) -> Dict[str, torch.Tensor]:
    """``CAVMAE.forward(audio [B, T, F], imgs [B, 3, H, W], ...)`` with the masking noise given.

    Returns loss, loss_mae, loss_mae_a, loss_mae_v, loss_c (weighted), mask_a, mask_v, c_acc,
    pred_a [B, La, p*p], pred_v [B, Lv, p*p*3], and nce (the unweighted contrastive loss).
    """
    dtype = audio.dtype
    W = _Weights(sd, dtype)
    p = patch_size
    noise_a, noise_v = noise_a.to(dtype), noise_v.to(dtype)

    # ---- encoder
    a = _embed_audio(W, audio, p)
    v = _embed_video(W, imgs, p)
    num_a = a.shape[1]
    a, mask_a, ids_restore_a = _random_masking(a, mask_ratio_a, noise_a)
    v, mask_v, ids_restore_v = _random_masking(v, mask_ratio_v, noise_v)
    for i in range(_count(W, "blocks_a")):
        a = _block(W, f"blocks_a.{i}", a, num_heads)
    for i in range(_count(W, "blocks_v")):
        v = _block(W, f"blocks_v.{i}", v, num_heads)
    x = torch.cat([a, v], dim=1)
    n_u = _count(W, "blocks_u")
    for i in range(n_u):
        x = _block(W, f"blocks_u.{i}", x, num_heads)
    x = _layer_norm(W, "norm", x)
    for i in range(n_u):
        ca = _block(W, f"blocks_u.{i}", a, num_heads, "a")  # the release's loop: input stays ``a``
    ca = _layer_norm(W, "norm_a", ca)
    for i in range(n_u):
        cv = _block(W, f"blocks_u.{i}", v, num_heads, "v")
    cv = _layer_norm(W, "norm_v", cv)

    # ---- decoder
    x = _linear(W, "decoder_embed", x)
    B, _, d = x.shape
    n_mask_a = int(mask_a[0].sum())
    n_mask_v = int(mask_v[0].sum())
    mask_token = W("mask_token")
    a_ = torch.cat([x[:, : num_a - n_mask_a], mask_token.repeat(B, n_mask_a, 1)], dim=1)
    a_ = torch.gather(a_, 1, ids_restore_a.unsqueeze(-1).repeat(1, 1, d))
    v_ = torch.cat([x[:, num_a - n_mask_a :], mask_token.repeat(B, n_mask_v, 1)], dim=1)
    v_ = torch.gather(v_, 1, ids_restore_v.unsqueeze(-1).repeat(1, 1, d))
    x = torch.cat([a_, v_], dim=1)
    x = x + torch.cat([W("decoder_pos_embed_a"), W("decoder_pos_embed_v")], dim=1)
    x = torch.cat([x[:, :num_a] + W("decoder_modality_a"), x[:, num_a:] + W("decoder_modality_v")], dim=1)
    for i in range(_count(W, "decoder_blocks")):
        x = _block(W, f"decoder_blocks.{i}", x, decoder_num_heads)
    x = _layer_norm(W, "decoder_norm", x)
    pred_a = _linear(W, "decoder_pred_a", x[:, :num_a])
    pred_v = _linear(W, "decoder_pred_v", x[:, num_a:])

    # ---- losses
    def mae_loss(target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = ((target - mean) ** 2).sum(dim=-1, keepdim=True) / (target.shape[-1] - 1)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    a_img = audio.unsqueeze(1).transpose(2, 3)
    target_a = official_patchify(a_img, 1, a_img.shape[2] // p, a_img.shape[3] // p, p)
    target_v = official_patchify(imgs, 3, imgs.shape[2] // p, imgs.shape[3] // p, p)
    loss_mae_a = mae_loss(target_a, pred_a, mask_a)
    loss_mae_v = mae_loss(target_v, pred_v, mask_v)
    loss_mae = mae_loss_weight * (loss_mae_a + loss_mae_v)

    ra, rv = ca.mean(dim=1), cv.mean(dim=1)
    ra = ra / ra.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    rv = rv / rv.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    total = ra @ rv.t() / 0.05
    idx = torch.arange(total.shape[0])

    def one_direction(t: torch.Tensor):
        nce = -torch.mean(torch.diag(_log_softmax(t, dim=0)))
        acc = (torch.argmax(_softmax(t, dim=0), dim=0) == idx).sum() / t.shape[0]
        return nce, acc

    nce, c_acc = one_direction(total)
    if bidirect_contrast:
        nce2, acc2 = one_direction(total.t())
        nce, c_acc = (nce + nce2) / 2, (c_acc + acc2) / 2
    loss_c = contrast_loss_weight * nce
    return {
        "loss": loss_mae + loss_c,
        "loss_mae": loss_mae,
        "loss_mae_a": loss_mae_a,
        "loss_mae_v": loss_mae_v,
        "loss_c": loss_c,
        "nce": nce,
        "mask_a": mask_a,
        "mask_v": mask_v,
        "c_acc": c_acc,
        "pred_a": pred_a,
        "pred_v": pred_v,
    }


def official_cav_mae_ft_forward(
    sd: StateDict,
    audio: Optional[torch.Tensor],
    imgs: Optional[torch.Tensor],
    mode: str,
    *,
    num_heads: int,
    patch_size: int = 16,
) -> torch.Tensor:
    """``CAVMAEFT.forward(a, v, mode)`` -> logits [B, label_dim]."""
    ref = audio if audio is not None else imgs
    W = _Weights(sd, ref.dtype)
    p = patch_size
    n_u = _count(W, "blocks_u")

    def specific(kind: str) -> torch.Tensor:
        x = _embed_audio(W, audio, p) if kind == "a" else _embed_video(W, imgs, p)
        for i in range(_count(W, f"blocks_{kind}")):
            x = _block(W, f"blocks_{kind}.{i}", x, num_heads)
        return x

    def shared(x: torch.Tensor, modality: Optional[str]) -> torch.Tensor:
        for i in range(n_u):
            x = _block(W, f"blocks_u.{i}", x, num_heads, modality)
        return _layer_norm(W, "norm" if modality is None else f"norm_{modality}", x)

    if mode == "multimodal":
        feat = shared(torch.cat([specific("a"), specific("v")], dim=1), None).mean(dim=1)
    elif mode in ("audioonly", "videoonly"):
        kind = mode[0]
        feat = shared(specific(kind), kind).mean(dim=1)
    elif mode in ("missingaudioonly", "missingvideoonly"):
        kind = "a" if mode == "missingaudioonly" else "v"
        x = specific(kind)
        feat = (shared(x, None).mean(dim=1) + shared(x, kind).mean(dim=1)) / 2
    else:
        raise ValueError(mode)
    return _linear(W, "mlp_head.1", _layer_norm(W, "mlp_head.0", feat))

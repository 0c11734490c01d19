"""Test oracle: the released BEATs model (microsoft/unilm ``beats/BEATs.py``, ``backbone.py``) as
plain tensor math, and a writer of its ``.pt`` layout (``cfg``, ``model``, ``label_dict``).

Written from the published facts of the released code; none of it is used:

  * preprocess: each waveform times 2^15, ``torchaudio.compliance.kaldi.fbank(num_mel_bins=128,
    sample_frequency=16000, frame_length=25, frame_shift=10)`` (its other defaults), then
    ``(fbank - 15.41663) / (2 * 6.55582)``;
  * ``patch_embedding``: Conv2d(1, 512, 16, stride 16, no bias) on [B, 1, T, 128]; tokens
    flattened from [B, 512, T', 8] (time-major); ``layer_norm`` (eps 1e-5); ``post_extract_proj``;
  * encoder: ``pos_conv`` = Conv1d(D, D, 128, padding 64, groups 16) with weight norm over dim 2
    (w = g * v / ||v||, the norm over the output and input-channel axes for each kernel tap), then
    SamePad (the last output dropped for an even kernel), GELU; x = x + pos_conv(x);
    ``encoder.layer_norm`` (not layer_norm_first);
  * layers (deep norm: alpha = (2 * layers)^(1/4)): x = self_attn_layer_norm(x * alpha + attn(x));
    x = final_layer_norm(x * alpha + fc2(gelu(fc1(x))));
  * attention: q = q_proj(x) * head_dim^-0.5 / 32; scores = q k^T; (scores - rowmax) * 32; plus
    the relative bias of layer 0's table (buckets: 320, bidirectional, exact below 80, log-spaced
    to max_distance), gated per head and query: a, b = sigmoid of the two 4-sums of
    grep_linear(q_proj(x) per head); bias * (a * (b * grep_a - 1) + 2); softmax; v; out_proj;
  * fine-tuned: predictor(x) per token, averaged over the tokens (their output is its sigmoid).

All arithmetic in the input's dtype (float64 inputs give a high-precision reference).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional

import torch
import torchaudio.compliance.kaldi as kaldi

__all__ = ["beats_preprocess", "make_beats_state_dict", "beats_forward", "beats_logits", "write_beats_checkpoint"]

StateDict = Dict[str, torch.Tensor]
MEAN, STD = 15.41663, 6.55582


def beats_preprocess(waveforms: torch.Tensor) -> torch.Tensor:
    """[B, N] in [-1, 1] -> normalised fbank [B, T, 128]."""
    out = []
    for w in waveforms:
        out.append(
            kaldi.fbank(
                w.unsqueeze(0) * 2**15, num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10
            )
        )
    return (torch.stack(out) - MEAN) / (2 * STD)


def make_beats_state_dict(
    *,
    dim: int = 64,
    patch_dim: int = 32,
    depth: int = 2,
    heads: int = 4,
    ffn: int = 128,
    conv_pos: int = 16,
    conv_groups: int = 4,
    num_buckets: int = 320,
    num_classes: Optional[int] = None,
    seed: int = 0,
) -> StateDict:
    """Random weights in the released key names (the relative table stored under every layer)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = 0.05, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    sd: StateDict = {
        "patch_embedding.weight": rnd(patch_dim, 1, 16, 16, std=0.1),
        "layer_norm.weight": rnd(patch_dim, std=0.1, mean=1.0),
        "layer_norm.bias": rnd(patch_dim, std=0.1),
        "post_extract_proj.weight": rnd(dim, patch_dim, std=patch_dim**-0.5),
        "post_extract_proj.bias": rnd(dim),
        "encoder.pos_conv.0.weight_g": rnd(1, 1, conv_pos, std=0.1, mean=1.0),
        "encoder.pos_conv.0.weight_v": rnd(dim, dim // conv_groups, conv_pos),
        "encoder.pos_conv.0.bias": rnd(dim),
        "encoder.layer_norm.weight": rnd(dim, std=0.1, mean=1.0),
        "encoder.layer_norm.bias": rnd(dim, std=0.1),
    }
    table = rnd(num_buckets, heads, std=0.5)
    for i in range(depth):
        p = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{name}.weight"] = rnd(dim, dim, std=dim**-0.5)
            sd[p + f"self_attn.{name}.bias"] = rnd(dim)
        sd[p + "self_attn.relative_attention_bias.weight"] = table  # shared, stored under each layer
        sd[p + "self_attn.grep_linear.weight"] = rnd(8, dim // heads, std=0.3)
        sd[p + "self_attn.grep_linear.bias"] = rnd(8)
        sd[p + "self_attn.grep_a"] = rnd(1, heads, 1, 1, std=0.2, mean=1.0)
        sd[p + "self_attn_layer_norm.weight"] = rnd(dim, std=0.1, mean=1.0)
        sd[p + "self_attn_layer_norm.bias"] = rnd(dim, std=0.1)
        sd[p + "fc1.weight"] = rnd(ffn, dim, std=dim**-0.5)
        sd[p + "fc1.bias"] = rnd(ffn)
        sd[p + "fc2.weight"] = rnd(dim, ffn, std=ffn**-0.5)
        sd[p + "fc2.bias"] = rnd(dim)
        sd[p + "final_layer_norm.weight"] = rnd(dim, std=0.1, mean=1.0)
        sd[p + "final_layer_norm.bias"] = rnd(dim, std=0.1)
    if num_classes is not None:
        sd["predictor.weight"] = rnd(num_classes, dim, std=0.2)
        sd["predictor.bias"] = rnd(num_classes)
    return sd


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w.to(x.dtype) + b.to(x.dtype)


def _lin(x: torch.Tensor, sd: StateDict, name: str) -> torch.Tensor:
    return x @ sd[name + ".weight"].to(x.dtype).T + sd[name + ".bias"].to(x.dtype)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _bucket(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    num_buckets = num_buckets // 2
    buckets = (rel > 0).long() * num_buckets
    rel = rel.abs()
    max_exact = num_buckets // 2
    small = rel < max_exact
    large = (
        max_exact
        + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)).long()
    )
    large = torch.minimum(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(small, rel, large)


def forward_padding_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Their ``forward_padding_mask``: [B, m] -> [B, n], the last ``m % n`` entries dropped, the
    rest grouped in order into n runs, a run padded when all of it is (samples -> frames -> tokens)."""
    extra = mask.shape[1] % n
    if extra > 0:
        mask = mask[:, :-extra]
    return mask.view(mask.shape[0], n, -1).all(-1)


def beats_forward(
    sd: StateDict,
    fbank: torch.Tensor,
    *,
    heads: int,
    num_buckets: int = 320,
    max_distance: int = 800,
    token_pad: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Normalised fbank [B, T, 128] -> the last layer's tokens [B, (T // 16) * 8, D]. ``token_pad``
    [B, L] (True = padded): their ``x[padding_mask] = 0`` before the positional conv and -inf
    for padded keys."""
    dt = fbank.dtype
    B, T, F = fbank.shape
    t, f = T // 16, F // 16
    x = fbank[:, : t * 16, : f * 16].reshape(B, t, 16, f, 16).permute(0, 1, 3, 2, 4).reshape(B, t * f, 256)
    x = x @ sd["patch_embedding.weight"].to(dt).reshape(-1, 256).T
    x = _ln(x, sd["layer_norm.weight"], sd["layer_norm.bias"])
    x = _lin(x, sd, "post_extract_proj")
    if token_pad is not None:
        x = x.clone()
        x[token_pad] = 0.0
    # positional convolution with weight norm (dim 2) and SamePad
    v = sd["encoder.pos_conv.0.weight_v"].to(dt)
    gw = sd["encoder.pos_conv.0.weight_g"].to(dt)
    w = gw * v / torch.sqrt((v**2).sum(dim=(0, 1), keepdim=True))
    D, per_group, K = w.shape
    groups = D // per_group
    L = x.shape[1]
    xp = torch.nn.functional.pad(x.transpose(1, 2), (K // 2, K // 2))  # [B, D, L + K]
    out = torch.zeros(B, D, xp.shape[-1] - K + 1, dtype=dt)
    for gi in range(groups):
        ins = xp[:, gi * per_group : (gi + 1) * per_group]  # [B, per_group, L+K]
        for o in range(gi * per_group, (gi + 1) * per_group):
            for k in range(K):
                out[:, o] += (ins[:, :, k : k + out.shape[-1]] * w[o, :, k, None]).sum(1)
    out = out + sd["encoder.pos_conv.0.bias"].to(dt)[None, :, None]
    if K % 2 == 0:
        out = out[:, :, :-1]
    x = x + _gelu(out).transpose(1, 2)
    x = _ln(x, sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"])
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    alpha = (2 * depth) ** 0.25
    pos = torch.arange(L)
    rel = pos[None, :] - pos[:, None]
    bias = sd["encoder.layers.0.self_attn.relative_attention_bias.weight"].to(dt)[
        _bucket(rel, num_buckets, max_distance)
    ]
    bias = bias.permute(2, 0, 1)  # [H, L, L]
    hd = D // heads
    for i in range(depth):
        p = f"encoder.layers.{i}."
        q_raw = _lin(x, sd, p + "self_attn.q_proj").reshape(B, L, heads, hd).transpose(1, 2)
        k_ = _lin(x, sd, p + "self_attn.k_proj").reshape(B, L, heads, hd).transpose(1, 2)
        v_ = _lin(x, sd, p + "self_attn.v_proj").reshape(B, L, heads, hd).transpose(1, 2)
        q = q_raw * hd**-0.5 / 32
        scores = q @ k_.transpose(-2, -1)
        scores = (scores - scores.max(dim=-1, keepdim=True).values) * 32
        if token_pad is not None:
            scores = scores.masked_fill(token_pad[:, None, None, :], float("-inf"))
        gates = _lin(q_raw, sd, p + "self_attn.grep_linear").reshape(B, heads, L, 2, 4).sum(-1)
        gates = torch.sigmoid(gates)
        a, b = gates[..., :1], gates[..., 1:]
        scores = scores + (a * (b * sd[p + "self_attn.grep_a"].to(dt) - 1.0) + 2.0) * bias[None]
        attn = torch.softmax(scores, dim=-1)
        y = (attn @ v_).transpose(1, 2).reshape(B, L, D)
        x = _ln(
            x * alpha + _lin(y, sd, p + "self_attn.out_proj"),
            sd[p + "self_attn_layer_norm.weight"],
            sd[p + "self_attn_layer_norm.bias"],
        )
        h = _lin(_gelu(_lin(x, sd, p + "fc1")), sd, p + "fc2")
        x = _ln(x * alpha + h, sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"])
    return x


def beats_logits(sd: StateDict, fbank: torch.Tensor, *, token_pad: Optional[torch.Tensor] = None, **kw) -> torch.Tensor:
    """The fine-tuned model's logits: the per-token predictor outputs averaged over the (unpadded) tokens."""
    x = beats_forward(sd, fbank, token_pad=token_pad, **kw)
    logits = _lin(x, sd, "predictor")
    if token_pad is None or not bool(token_pad.any()):
        return logits.mean(dim=1)
    logits = logits.masked_fill(token_pad[..., None], 0.0)
    return logits.sum(dim=1) / (~token_pad).sum(dim=1, keepdim=True)


def write_beats_checkpoint(sd: StateDict, path: Path, *, heads: int, conv_pos: int, conv_groups: int) -> Path:
    """The released layout: ``{"cfg": dict, "model": state_dict}`` plus ``label_dict`` when fine-tuned."""
    q = sd["encoder.layers.0.self_attn.q_proj.weight"]
    cfg = {
        "input_patch_size": 16,
        "embed_dim": int(sd["patch_embedding.weight"].shape[0]),
        "conv_bias": False,
        "encoder_layers": 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")),
        "encoder_embed_dim": int(q.shape[0]),
        "encoder_ffn_embed_dim": int(sd["encoder.layers.0.fc1.weight"].shape[0]),
        "encoder_attention_heads": heads,
        "activation_fn": "gelu",
        "layer_norm_first": False,
        "deep_norm": True,
        "dropout": 0.0,
        "conv_pos": conv_pos,
        "conv_pos_groups": conv_groups,
        "relative_position_embedding": True,
        "num_buckets": 320,
        "max_distance": 800,
        "gru_rel_pos": True,
        "finetuned_model": "predictor.weight" in sd,
        "predictor_class": int(sd["predictor.weight"].shape[0]) if "predictor.weight" in sd else 527,
    }
    obj = {"cfg": cfg, "model": dict(sd)}
    if "predictor.weight" in sd:
        obj["label_dict"] = {
            i: f"/m/{i:04d}" for i in range(cfg["predictor_class"])
        }  # index -> label, as read in their README
    torch.save(obj, path)
    return path

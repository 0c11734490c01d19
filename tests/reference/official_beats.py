"""Test oracle: the released BEATs model (microsoft/unilm ``beats/``), written out as plain tensor math.

It re-derives, literally and independently of ``avmae.models.beats``, what their
``BEATs.extract_features`` computes on a state dict in *their* key layout, so the same dict can be
saved as a released ``.pt`` file (``{"cfg", "model", "label_dict"}``) and fed to avmae's loader.
Plain math: LayerNorm / GELU / softmax written out, the conv1d unrolled over its taps, attention
per head in their arithmetic (the query scaled by ``1/sqrt(k)/32``, the row maximum subtracted,
times 32), tokens in their ``[T, B, C]`` order inside the encoder. No einops, no SDPA, no
``nn.Module``.

Facts read in their code (``BEATs.py``, ``backbone.py``, ``modules.py``):
  * ``preprocess``: each waveform times 2^15, ``torchaudio.compliance.kaldi.fbank(num_mel_bins=128,
    sample_frequency=16000, frame_length=25, frame_shift=10)`` (every other argument torchaudio's
    default), then ``(fbank - 15.41663) / (2 * 6.55582)``.
  * patch embedding: ``Conv2d(1, embed_dim, 16, stride 16, bias=conv_bias)`` on ``[B, 1, T, 128]``,
    flattened time-major, ``LayerNorm(embed_dim)``, then ``post_extract_proj`` (a Linear to
    ``encoder_embed_dim``, absent when equal).
  * padding: their sample mask -> frames -> tokens, each step dropping the last ``n % m`` entries
    and grouping the rest in order (``forward_padding_mask``); padded tokens are zeroed before
    the positional conv and masked as keys with -inf; the fine-tuned mean skips them.
  * positions: ``Conv1d(D, D, conv_pos, padding=conv_pos // 2, groups=conv_pos_groups)`` with
    weight norm over dim 2 (``w = g * v / ||v||``, the norm over dims 0 and 1), the last output
    dropped for an even kernel (``SamePad``), GELU, added to the tokens; then ``encoder.layer_norm``
    unless ``layer_norm_first``.
  * layers (post-LN): ``x = LN1(x * alpha + attn(x)); x = LN2(x * alpha + fc2(gelu(fc1(x))))``,
    ``alpha = (2 * layers) ** 0.25`` with ``deep_norm``, 1 otherwise.
  * attention: the relative bias is computed once (layer 0's table, shared) from T5-style
    bidirectional buckets; each layer gates it per query: ``g = a * (b * grep_a - 1) + 2`` with
    ``a, b = sigmoid(grep_linear(q_raw).view(.., 2, 4).sum(-1))``, ``q_raw`` the query projection
    of the head before any scaling.
  * fine-tuned: ``predictor`` on every token, the mean over unpadded tokens, sigmoid.
  * every LayerNorm has eps 1e-5 (torch's default).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

StateDict = Dict[str, torch.Tensor]
LN_EPS = 1e-5
FBANK_MEAN, FBANK_STD = 15.41663, 6.55582

# the released configs' architecture fields (BEATs_iter3 / iter3+, pretrained and fine-tuned)
RELEASED_CFG: Dict[str, Any] = dict(
    encoder_layers=12,
    encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072,
    encoder_attention_heads=12,
    activation_fn="gelu",
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    encoder_layerdrop=0.05,
    dropout_input=0.0,
    layer_norm_first=False,
    conv_bias=False,
    conv_pos=128,
    conv_pos_groups=16,
    relative_position_embedding=True,
    num_buckets=320,
    max_distance=800,
    gru_rel_pos=True,
    deep_norm=True,
    input_patch_size=16,
    layer_wise_gradient_decay_ratio=0.6,
    embed_dim=512,
)
TINY_CFG: Dict[str, Any] = {
    **RELEASED_CFG,
    **dict(
        encoder_layers=2,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=96,
        encoder_attention_heads=4,
        embed_dim=48,
        conv_pos=16,
        conv_pos_groups=4,
    ),
}


# ---------------------------------------------------------------------------------- fixtures


def make_beats_state_dict(cfg: Dict[str, Any], *, num_classes: int = 0, seed: int = 0) -> StateDict:
    """Random weights in their key layout for ``cfg`` (a fine-tuned file when ``num_classes``).
    Every tensor is random (LayerNorm gains near 1, biases non-zero, gates and the shared table
    spread), so that any key or formula mix-up shows."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.05, base: float = 0.0) -> torch.Tensor:
        return base + scale * torch.randn(*shape, generator=g)

    D, P, p = cfg["encoder_embed_dim"], cfg["embed_dim"], cfg["input_patch_size"]
    ffn, H, K = cfg["encoder_ffn_embed_dim"], cfg["encoder_attention_heads"], cfg["conv_pos"]
    sd: StateDict = {"patch_embedding.weight": rnd(P, 1, p, p, scale=0.1)}
    if cfg["conv_bias"]:
        sd["patch_embedding.bias"] = rnd(P)
    sd["layer_norm.weight"], sd["layer_norm.bias"] = rnd(P, base=1.0, scale=0.1), rnd(P)
    if P != D:
        sd["post_extract_proj.weight"], sd["post_extract_proj.bias"] = rnd(D, P, scale=0.1), rnd(D)
    sd["encoder.pos_conv.0.bias"] = rnd(D)
    sd["encoder.pos_conv.0.weight_g"] = rnd(1, 1, K, base=1.0, scale=0.2).abs()
    sd["encoder.pos_conv.0.weight_v"] = rnd(D, D // cfg["conv_pos_groups"], K)
    sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"] = rnd(D, base=1.0, scale=0.1), rnd(D)
    table = rnd(cfg["num_buckets"], H, scale=1.0)
    for i in range(cfg["encoder_layers"]):
        q = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[q + f"self_attn.{name}.weight"] = rnd(D, D, scale=D**-0.5)
            sd[q + f"self_attn.{name}.bias"] = rnd(D)
        if cfg["relative_position_embedding"]:
            sd[q + "self_attn.relative_attention_bias.weight"] = table  # one table, under every layer
        if cfg["gru_rel_pos"]:
            sd[q + "self_attn.grep_linear.weight"] = rnd(8, D // H, scale=0.3)
            sd[q + "self_attn.grep_linear.bias"] = rnd(8, scale=0.3)
            sd[q + "self_attn.grep_a"] = rnd(1, H, 1, 1, base=1.0, scale=0.3)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            sd[q + f"{ln}.weight"], sd[q + f"{ln}.bias"] = rnd(D, base=1.0, scale=0.1), rnd(D)
        sd[q + "fc1.weight"], sd[q + "fc1.bias"] = rnd(ffn, D, scale=D**-0.5), rnd(ffn)
        sd[q + "fc2.weight"], sd[q + "fc2.bias"] = rnd(D, ffn, scale=ffn**-0.5), rnd(D)
    if num_classes:
        sd["predictor.weight"], sd["predictor.bias"] = rnd(num_classes, D, scale=0.1), rnd(num_classes)
    return sd


def save_beats_checkpoint(sd: StateDict, cfg: Dict[str, Any], path, *, num_classes: int = 0) -> None:
    """Write ``sd`` as their released ``.pt`` files are laid out."""
    full = dict(cfg)
    if num_classes:
        full.update(finetuned_model=True, predictor_dropout=0.0, predictor_class=num_classes)
        labels = {i: f"/m/{i:05d}" for i in range(num_classes)}
        torch.save({"cfg": full, "model": sd, "label_dict": labels}, path)
    else:
        torch.save({"cfg": full, "model": sd}, path)


# ---------------------------------------------------------------------------------- pieces


def _layer_norm(x: torch.Tensor, sd: StateDict, name: str) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + LN_EPS) * sd[name + ".weight"] + sd[name + ".bias"]


def _linear(x: torch.Tensor, sd: StateDict, name: str) -> torch.Tensor:
    return x @ sd[name + ".weight"].t() + sd[name + ".bias"]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def buckets(length: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """[L, L] bucket of (query i, key j), their ``_relative_positions_bucket`` (bidirectional)."""
    out = torch.zeros(length, length, dtype=torch.long)
    half = num_buckets // 2
    max_exact = half // 2
    for i in range(length):
        for j in range(length):
            rel = j - i
            b = half if rel > 0 else 0
            n = abs(rel)
            if n < max_exact:
                b += n
            else:
                far = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (half - max_exact))
                b += min(far, half - 1)
            out[i, j] = b
    return out


def frame_mask(samples_mask: torch.Tensor, frames: int) -> torch.Tensor:
    """Their ``forward_padding_mask``: [B, n] -> [B, m] (the last ``n % m`` dropped, runs in order, all())."""
    extra = samples_mask.shape[1] % frames
    if extra:
        samples_mask = samples_mask[:, :-extra]
    return samples_mask.reshape(samples_mask.shape[0], frames, -1).all(-1)


def _patch_embed(fbank: torch.Tensor, sd: StateDict, p: int) -> torch.Tensor:
    """[B, T, F] -> [B, L, P]: each 16x16 patch (time-major) dotted with the filters."""
    B, T, F = fbank.shape
    t, f = T // p, F // p
    x = fbank[:, : t * p, : f * p].reshape(B, t, p, f, p).permute(0, 1, 3, 2, 4).reshape(B, t * f, p * p)
    w = sd["patch_embedding.weight"].reshape(sd["patch_embedding.weight"].shape[0], p * p)
    y = x @ w.t()
    if "patch_embedding.bias" in sd:
        y = y + sd["patch_embedding.bias"]
    return y


def _pos_conv(x: torch.Tensor, sd: StateDict, kernel: int, groups: int) -> torch.Tensor:
    """[B, L, D] -> GELU(grouped conv1d, zero padding kernel // 2, the first L outputs)."""
    v, gain = sd["encoder.pos_conv.0.weight_v"], sd["encoder.pos_conv.0.weight_g"]
    w = gain * v / torch.sqrt((v**2).sum(dim=(0, 1), keepdim=True))  # [D, D/groups, K]
    B, L, D = x.shape
    pad = kernel // 2
    xp = torch.cat([x.new_zeros(B, pad, D), x, x.new_zeros(B, pad, D)], dim=1)
    cg = D // groups
    out = sd["encoder.pos_conv.0.bias"].expand(B, L, D).clone()
    for g in range(groups):
        chans = slice(g * cg, (g + 1) * cg)
        for tap in range(kernel):
            # output position l reads padded input l + tap
            out[:, :, chans] += xp[:, tap : tap + L, chans] @ w[chans, :, tap].t()
    return _gelu(out)


def _attention(
    x: torch.Tensor, sd: StateDict, pre: str, heads: int, bias: Optional[torch.Tensor], key_pad: Optional[torch.Tensor]
) -> torch.Tensor:
    """x [L, B, D] (their order) -> [L, B, D]."""
    L, B, D = x.shape
    k_dim = D // heads
    scaling = k_dim**-0.5
    alpha = 32.0
    q = _linear(x, sd, pre + "q_proj") * scaling / alpha
    k = _linear(x, sd, pre + "k_proj")
    v = _linear(x, sd, pre + "v_proj")
    out = torch.zeros_like(x)
    for b in range(B):
        for h in range(heads):
            cols = slice(h * k_dim, (h + 1) * k_dim)
            qh, kh, vh = q[:, b, cols], k[:, b, cols], v[:, b, cols]
            s = qh @ kh.t()
            s = (s - s.max(-1, keepdim=True).values) * alpha
            if key_pad is not None:
                s = s.masked_fill(key_pad[b][None, :], float("-inf"))
            if bias is not None:
                rel = bias[h]
                if pre + "grep_a" in sd:
                    q_raw = qh * alpha / scaling  # [L, k]
                    gl = (q_raw @ sd[pre + "grep_linear.weight"].t() + sd[pre + "grep_linear.bias"]).reshape(L, 2, 4)
                    ga, gb = torch.sigmoid(gl.sum(-1)).unbind(-1)
                    gate = ga * (gb * sd[pre + "grep_a"][0, h, 0, 0] - 1.0) + 2.0
                    rel = gate[:, None] * rel
                s = s + rel
            out[:, b, cols] = _softmax(s) @ vh
    return _linear(out, sd, pre + "out_proj")


def official_beats_forward(
    sd: StateDict,
    cfg: Dict[str, Any],
    fbank: torch.Tensor,
    token_pad: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Their ``extract_features`` from the normalised fbank ``[B, T, 128]`` -> tokens [B, L, D],
    or, for a fine-tuned ``sd`` (``predictor.*``), the sigmoid of the mean logits [B, C].
    ``token_pad`` [B, L]: padded tokens (True), as their ``forward_padding_mask`` gives."""
    x = _patch_embed(fbank, sd, cfg["input_patch_size"])
    x = _layer_norm(x, sd, "layer_norm")
    if "post_extract_proj.weight" in sd:
        x = _linear(x, sd, "post_extract_proj")
    if token_pad is not None:
        x = x.masked_fill(token_pad[..., None], 0.0)
    x = x + _pos_conv(x, sd, cfg["conv_pos"], cfg["conv_pos_groups"])
    if not cfg["layer_norm_first"]:
        x = _layer_norm(x, sd, "encoder.layer_norm")
    x = x.transpose(0, 1)  # [L, B, D]
    L = x.shape[0]
    heads, depth = cfg["encoder_attention_heads"], cfg["encoder_layers"]
    bias = None
    if cfg["relative_position_embedding"]:
        table = sd["encoder.layers.0.self_attn.relative_attention_bias.weight"]
        bias = table[buckets(L, cfg["num_buckets"], cfg["max_distance"])].permute(2, 0, 1)  # [H, L, L]
    a = (2.0 * depth) ** 0.25 if cfg["deep_norm"] else 1.0
    for i in range(depth):
        pre = f"encoder.layers.{i}."
        if cfg["layer_norm_first"]:
            x = x + _attention(
                _layer_norm(x, sd, pre + "self_attn_layer_norm"), sd, pre + "self_attn.", heads, bias, token_pad
            )
            h = _layer_norm(x, sd, pre + "final_layer_norm")
            x = x + _linear(_gelu(_linear(h, sd, pre + "fc1")), sd, pre + "fc2")
        else:
            x = _layer_norm(
                x * a + _attention(x, sd, pre + "self_attn.", heads, bias, token_pad), sd, pre + "self_attn_layer_norm"
            )
            x = _layer_norm(
                x * a + _linear(_gelu(_linear(x, sd, pre + "fc1")), sd, pre + "fc2"), sd, pre + "final_layer_norm"
            )
    x = x.transpose(0, 1)  # [B, L, D]
    if cfg["layer_norm_first"]:
        x = _layer_norm(x, sd, "encoder.layer_norm")
    if "predictor.weight" not in sd:
        return x
    logits = _linear(x, sd, "predictor")
    if token_pad is not None and bool(token_pad.any()):
        logits = logits.masked_fill(token_pad[..., None], 0.0).sum(1) / (~token_pad).sum(1, keepdim=True)
    else:
        logits = logits.mean(1)
    return torch.sigmoid(logits)


def official_preprocess(waveforms: torch.Tensor) -> torch.Tensor:
    """Their ``preprocess``: [B, n] in [-1, 1] -> normalised fbank [B, T, 128]."""
    import torchaudio.compliance.kaldi as kaldi

    out = [
        kaldi.fbank(w[None] * 2**15, num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10)
        for w in waveforms
    ]
    return (torch.stack(out) - FBANK_MEAN) / (2 * FBANK_STD)


def official_token_mask(samples_mask: torch.Tensor, frames: int, tokens: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Their two ``forward_padding_mask`` steps: samples -> (frames [B, T], tokens [B, L])."""
    fm = frame_mask(samples_mask, frames)
    return fm, frame_mask(fm, tokens)

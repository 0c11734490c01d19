"""BEATs (Chen et al., ICML 2023; microsoft/unilm ``beats/``), exactly as released.

Legend: b batch, t / f token rows / columns of the (time, mel) grid, l = t * f tokens, d width,
h heads, k head width.

    fbank [B, 1, T, 128] --16x16 conv, no bias--> [B, l, 512] --LayerNorm--> --Linear 512->768-->
    x + GELU(conv1d over the tokens: kernel 128, 16 groups, weight norm, last output dropped)
    --LayerNorm--> post-LN blocks with deep-norm residuals (x * (2 * depth)^(1/4)) and a shared
    bucketed relative-position bias gated per query --> tokens (no cls, no final norm)

Attention: separate q / k / v projections with bias, scores ``q k^T / sqrt(k)`` plus the relative
bias ``bias[h, i, j] * g(q_i)`` where the gate ``g = a * (b * grep_a - 1) + 2`` has ``a, b`` the
sigmoid of the two 4-sums of ``grep_linear(q_i)`` (the unscaled query of head h). Buckets: 320 (160
per direction), exact up to 80, log-spaced up to ``max_distance`` (800 in the released files).
Their score arithmetic (``q / 32``, the row maximum subtracted, ``* 32``) is softmax-invariant;
here one scaled dot product with the bias as a float mask computes the same.

Fine-tuned: the per-token ``predictor`` logits averaged over tokens (their ``lprobs`` is its
sigmoid); as the predictor is linear this is ``head(mean of tokens)``. Every LayerNorm eps 1e-5.

Padding (their batched ``extract_features(source, padding_mask)``): ``inputs["padding_mask"]``
``[B, T]`` marks padded fbank frames (True); their rule takes it to tokens (``token_padding_mask``:
the last ``T % L`` frames dropped, the rest grouped in order, ``T // L`` per token, a token padded
when all its frames are), padded tokens are zeroed before the positional conv, hidden from
attention as keys, and left out of the fine-tuned mean.

Frontend (``BEATS_FBANK``): the waveform times 2^15, Kaldi fbank with torchaudio's defaults (povey
window, no HTK compatibility, DC removed per frame), 128 bins, 25 / 10 ms, normalised
``(x - 15.41663) / (2 * 6.55582)``; no padding (a clip's own frames, cut to whole patches).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath

from ..registry import register_model

__all__ = [
    "BEATS_SIZES",
    "BEATS_STATS",
    "BEATS_FBANK",
    "BEATsEncoder",
    "BEATsClassifier",
    "relative_buckets",
    "token_padding_mask",
]

BEATS_SIZES: Dict[str, Dict[str, int]] = {"base": dict(embed_dim=768, depth=12, num_heads=12)}
BEATS_STATS: Tuple[float, float] = (15.41663, 6.55582)
BEATS_FBANK = "beats"  # the frontend's fbank style (``avmae.data.AudioFrontend(style=...)``)


def relative_buckets(length: int, num_buckets: int = 320, max_distance: int = 800) -> torch.Tensor:
    """[length, length] bucket of key j for query i (BEATs / T5 bidirectional buckets)."""
    pos = torch.arange(length)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    far = exact + (torch.log(rel.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)).long()
    far = far.clamp(max=half - 1)
    return out + torch.where(rel < exact, rel, far)


def token_padding_mask(frames_mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Frame padding ``[B, T]`` (True = padded) -> token padding ``[B, L]`` by BEATs' rule (their
    ``forward_padding_mask``): the last ``T % L`` frames dropped, the rest grouped in order into L
    runs, a token padded when its whole run is. (Runs of consecutive frames, not a token's own
    16 x 16 patch: as theirs.)"""
    extra = frames_mask.shape[1] % num_tokens
    if extra:
        frames_mask = frames_mask[:, :-extra]
    return frames_mask.reshape(frames_mask.shape[0], num_tokens, -1).all(-1)


class _Patches(nn.Module):
    """The audio input side: 16x16 conv (no bias), LayerNorm(512), projection to the width."""

    key = "audio"
    layout = "tf"  # time-major tokens, as AudioMAE's audio modality

    def __init__(self, *, embed_dim: int, patch_dim: int, target_length: int, num_mel_bins: int, patch: int) -> None:
        super().__init__()
        self.patch_size = patch
        self.input_shape = (1, target_length, num_mel_bins)
        self.grid = (target_length // patch, num_mel_bins // patch)
        self.proj = nn.Conv2d(1, patch_dim, kernel_size=patch, stride=patch, bias=False)
        self.norm = nn.LayerNorm(patch_dim, eps=1e-5)
        self.post_proj = nn.Linear(patch_dim, embed_dim) if patch_dim != embed_dim else nn.Identity()

    def accepts_length(self, frames: int) -> bool:
        return frames > 0 and frames % self.patch_size == 0

    def input_grid(self, x: torch.Tensor) -> Tuple[int, int]:
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def check_input(self, x: torch.Tensor) -> None:
        F_ = self.input_shape[2]
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[3] != F_ or x.shape[2] < self.patch_size:
            raise ValueError(
                f"audio input must be [B, 1, T, {F_}] with T >= {self.patch_size} frames, got {list(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, T, F] -> [B, (T // 16) * (F // 16), D] (time-major; frames past the last whole patch dropped)."""
        self.check_input(x)
        y = rearrange(self.proj(x), "b d t f -> b (t f) d")
        return self.post_proj(self.norm(y))


class _ConvPositions(nn.Module):
    """GELU(weight-normed grouped conv1d over the token sequence), the last output dropped (even kernel)."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel, self.groups = kernel, groups
        self.weight_v = nn.Parameter(torch.randn(dim, dim // groups, kernel) * math.sqrt(4.0 / (kernel * dim)))
        self.weight_g = nn.Parameter(self.weight_v.detach().norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]."""
        w = self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)
        y = F.conv1d(
            x.transpose(1, 2), w.to(x.dtype), self.bias.to(x.dtype), padding=self.kernel // 2, groups=self.groups
        )
        if self.kernel % 2 == 0:
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)


class _GatedAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim // num_heads, 8)
        self.gate_a = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def forward(self, x: torch.Tensor, bias: torch.Tensor, key_padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, L, D], bias [H, L, L], key_padding [B, L] (True: a padded key, -inf) -> [B, L, D]."""
        h = self.num_heads
        q, k, v = (rearrange(p(x), "b l (h k) -> b h l k", h=h) for p in (self.q, self.k, self.v))
        a, b = torch.sigmoid(rearrange(self.gate(q), "b h l (two four) -> b h l two four", two=2).sum(-1)).chunk(2, -1)
        gate = a * (b * self.gate_a - 1.0) + 2.0  # [B, H, L, 1]
        mask = gate * bias.unsqueeze(0)
        if key_padding is not None:
            mask = mask.masked_fill(key_padding[:, None, None, :], -math.inf)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return self.proj(rearrange(y, "b h l k -> b l (h k)"))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _DeepNormBlock(nn.Module):
    """``x = norm1(x * alpha + attn(x)); x = norm2(x * alpha + mlp(x))`` (post-LN, deep norm)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, alpha: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # fine-tuning only
        self.attn = _GatedAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = _Mlp(dim, hidden)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, key_padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.norm1(x * self.alpha + self.drop_path(self.attn(x, bias, key_padding)))
        return self.norm2(x * self.alpha + self.drop_path(self.mlp(x)))


class _BEATs(nn.Module):
    """The parts both BEATs models share (see the module doc)."""

    has_cls = False
    drops_partial_patch = True  # a clip's frames past its last whole patch are dropped (avmae extract follows)

    def __init__(
        self,
        *,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: Optional[int] = None,
        patch_dim: int = 512,
        patch_size: int = 16,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        conv_pos: int = 128,
        conv_pos_groups: int = 16,
        num_buckets: int = 320,
        max_distance: int = 800,
        deep_norm: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.modalities = nn.ModuleDict(
            {
                "audio": _Patches(
                    embed_dim=embed_dim,
                    patch_dim=patch_dim,
                    target_length=target_length,
                    num_mel_bins=num_mel_bins,
                    patch=patch_size,
                )
            }
        )
        self.pos_conv = _ConvPositions(embed_dim, conv_pos, conv_pos_groups)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)
        self.rel_pos_bias = nn.Embedding(num_buckets, num_heads)
        alpha = math.pow(2 * depth, 0.25) if deep_norm else 1.0
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # stochastic depth, rising
        self.blocks = nn.ModuleList(
            [_DeepNormBlock(embed_dim, num_heads, mlp_dim or 4 * embed_dim, alpha, r) for r in rates]
        )

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor:
        """[H, L, L]: the shared relative-position bias, before each block's gate."""
        buckets = relative_buckets(length, self.num_buckets, self.max_distance).to(device)
        return self.rel_pos_bias(buckets).permute(2, 0, 1)

    def hidden_tokens(self, audio: torch.Tensor) -> Optional[torch.Tensor]:
        """Tokens hidden besides padding [B, L] (True), or None: the classifier's training masking."""
        return None

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``{"audio": [B, 1, T, F], "padding_mask": [B, T] (optional, True = padded frame)}``
        -> (tokens [B, L, D], token padding [B, L] or None)."""
        if "audio" not in inputs:
            raise KeyError(f"inputs lack modality 'audio'; got {list(inputs)}")
        x = self.modalities["audio"](inputs["audio"])
        frames = inputs.get("padding_mask")
        pad = None if frames is None else token_padding_mask(frames.to(torch.bool), x.shape[1])
        hidden = self.hidden_tokens(inputs["audio"])
        if hidden is not None:
            pad = hidden if pad is None else pad | hidden
        if pad is not None:
            x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        x = self.norm(x + self.pos_conv(x))
        bias = self.position_bias(x.shape[1], x.device)
        for blk in self.blocks:
            x = blk(x, bias, pad)
        return x, pad

    def forward_tokens(self, inputs: Mapping[str, torch.Tensor], mask: bool = False) -> torch.Tensor:
        """-> every token of the last block [B, L, D] (``mask`` is the tools' argument; nothing is hidden here)."""
        return self.encode(inputs)[0]


class BEATsEncoder(_BEATs):
    """The BEATs encoder. ``forward_features({"audio": fbank [B, 1, T, 128]}) -> [B, (T//16)*8, D]``
    (every token; no cls). ``decoder`` is None: the tools treat it as an encoder whose features are
    its tokens (mean-pooled for clip embeddings)."""

    decoder = None

    def forward_features(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """-> every token of the last block [B, L, D]."""
        return self.forward_tokens(inputs)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_features(inputs)


class BEATsClassifier(_BEATs):
    """A fine-tuned BEATs: the encoder, the mean of its unpadded tokens, dropout, the linear
    ``head`` (their ``predictor``) -> logits [B, C]; ``forward_features`` / ``pool`` give the
    pooled tokens [B, D]; ``fc_norm`` is the identity (BEATs has none), for the tools.

    Fine-tuning options (their fine-tuning code is not released; these are avmae's):
    ``drop_path`` (stochastic depth on the block branches), ``head_drop`` (their
    ``predictor_dropout``), and, in training, ``mask_t_prob`` / ``mask_f_prob``: that share of the
    time rows / mel columns of token grid hidden per clip (AudioMAE's structured masking, here
    through the padding mask: zeroed, hidden as keys, left out of the mean)."""

    head_name = "head"

    def __init__(
        self,
        *,
        num_classes: int = 527,
        head_drop: float = 0.0,
        mask_t_prob: float = 0.0,
        mask_f_prob: float = 0.0,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.num_classes = num_classes
        self.mask_t_prob, self.mask_f_prob = float(mask_t_prob), float(mask_f_prob)
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def reset_head(self, num_classes: Optional[int] = None) -> None:
        if num_classes is not None and num_classes != self.num_classes:
            self.num_classes = num_classes
            self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def hidden_tokens(self, audio: torch.Tensor) -> Optional[torch.Tensor]:
        """In training: ``int(rows * mask_t_prob)`` random time rows and ``int(cols * mask_f_prob)``
        random mel columns of each clip's token grid [B, L] (True = hidden); None in eval."""
        if not self.training or (self.mask_t_prob <= 0 and self.mask_f_prob <= 0):
            return None
        patch = self.modalities["audio"].patch_size
        t, f = audio.shape[-2] // patch, audio.shape[-1] // patch
        B = audio.shape[0]

        def pick(n: int, prob: float) -> torch.Tensor:
            out = torch.zeros(B, n, dtype=torch.bool, device=audio.device)
            k = int(n * prob)
            if k > 0:
                out.scatter_(1, torch.rand(B, n, device=audio.device).argsort(dim=1)[:, :k], True)
            return out

        return (pick(t, self.mask_t_prob)[:, :, None] | pick(f, self.mask_f_prob)[:, None, :]).reshape(B, t * f)

    @staticmethod
    def pool(tokens: torch.Tensor, pad: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, L, D] -> the mean of the unpadded tokens [B, D] (all of them when ``pad`` is None)."""
        if pad is None:
            return tokens.mean(dim=1)
        keep = (~pad).unsqueeze(-1).to(tokens.dtype)
        return (tokens * keep).sum(dim=1) / keep.sum(dim=1)

    def forward_features(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.pool(*self.encode(inputs))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """-> logits [B, C] (the head is linear: on the mean it equals their mean of per-token logits)."""
        return self.head(self.head_drop(self.forward_features(inputs)))


def _register(size: str) -> None:
    s = BEATS_SIZES[size]

    def encoder(**kw: Any) -> BEATsEncoder:
        return BEATsEncoder(**{**s, **kw})

    def classifier(**kw: Any) -> BEATsClassifier:
        return BEATsClassifier(**{**s, **kw})

    encoder.__doc__ = (
        "BEATs encoder (768-d, 12 deep-norm post-LN blocks, gated relative positions); see avmae.models.beats."
    )
    classifier.__doc__ = "BEATs fine-tuned classifier (mean of the tokens, linear head); see avmae.models.beats."
    register_model(f"beats_{size}")(encoder)
    register_model(f"beats_{size}_cls")(classifier)


for _name in BEATS_SIZES:
    _register(_name)

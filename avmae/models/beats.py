"""BEATs (Chen et al., ICML 2023; microsoft/unilm ``beats/``): the encoder and its fine-tuned
classifier, as the released checkpoints compute them.

Legend: B batch, T frames, F mel bins, L tokens (time-major, ``l = t * F/16 + f``), D width,
P patch-embedding width (512 released), H heads, k head width.

    fbank [B, 1, T, F] --Conv2d 16x16 stride 16 (no bias)--> [B, L, P] --LayerNorm--> --Linear P->D-->
    x = x + GELU(weight-normed conv1d over the L tokens, kernel 128, 16 groups, the last output dropped)
    x = LayerNorm(x)                                  (before the blocks: ``layer_norm_first`` False)
    blocks: x = norm1(alpha * x + attn(x)); x = norm2(alpha * x + mlp(x))   (post-LN, deep norm:
            alpha = (2 * depth) ** 0.25; pre-LN blocks and a final norm when ``layer_norm_first``)
    -> tokens [B, L, D] (no cls token)

Attention: separate q / k / v projections with bias; scores ``q k^T / sqrt(k)`` plus a relative
position bias shared by every block (one ``[buckets, H]`` table, T5's bidirectional log buckets:
half per direction, exact below a quarter of them, log-spaced up to ``max_distance``), gated per
query in each block: ``bias[h, i, j] * (a * (b * s_h - 1) + 2)`` with ``a, b`` the sigmoids of the
two sums of four of ``gate(q_i)`` (the unscaled query of head h) and ``s_h`` a learnt scale.

Fine-tuned: ``head`` (their ``predictor``) on the mean of the tokens, the padded ones left out;
their ``extract_features`` returns its sigmoid. A frame-level padding mask reaches the tokens by
their rule (frames grouped in order, ``T // L`` per token, a token padded when all its frames are),
padded tokens are zeroed before the positional conv and hidden from attention as keys.

Inputs: ``avmae.data.AudioFrontend(style="beats")``: the waveform times 2^15, Kaldi fbank with
torchaudio's defaults (povey window, DC removed per frame, no HTK compatibility), 128 bins, 25 / 10
ms frames, ``(x - 15.41663) / (2 * 6.55582)``, each clip's own frames (frames past the last whole
patch are dropped by the stride). ``BEATS_DATA`` is that frontend as a run config's ``data`` section.
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
    "BEATS_DATA",
    "BEATsEncoder",
    "BEATsClassifier",
    "relative_position_buckets",
    "token_padding_mask",
    "ConvPositionalEmbedding",
    "GatedRelPosAttention",
    "BEATsBlock",
    "BEATsPatchEmbed",
]

BEATS_SIZES: Dict[str, Dict[str, int]] = {
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, patch_dim=512),
    "tiny": dict(embed_dim=64, depth=2, num_heads=4, mlp_dim=96, patch_dim=48, conv_pos=16, conv_pos_groups=4),
}
BEATS_STATS: Tuple[float, float] = (15.41663, 6.55582)  # (mean, std) of BEATs' fbank, from their code
BEATS_DATA: Dict[str, Any] = {
    "sample_rate": 16000,
    "mean": BEATS_STATS[0],
    "std": BEATS_STATS[1],
    "fbank_style": "beats",
    "pad_to_length": False,
}


def relative_position_buckets(length: int, num_buckets: int = 320, max_distance: int = 800) -> torch.Tensor:
    """[length, length] bucket of key j seen from query i: keys after the query use the upper
    half; distances below a quarter of the buckets are exact, the rest log-spaced up to
    ``max_distance`` (the last bucket of each half beyond)."""
    pos = torch.arange(length)
    dist = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    exact = half // 2
    side = (dist > 0).long() * half
    dist = dist.abs()
    log_part = torch.log(dist.clamp(min=1).float() / exact) / math.log(max_distance / exact) * (half - exact)
    far = (exact + log_part.long()).clamp(max=half - 1)
    return side + torch.where(dist < exact, dist, far)


def token_padding_mask(frames_mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Frame-level padding ``[B, T]`` (True = padded) -> token-level ``[B, L]`` by BEATs' rule:
    the last ``T % L`` frames dropped, the rest grouped in order into L runs, a token padded when
    its whole run is."""
    extra = frames_mask.shape[1] % num_tokens
    if extra:
        frames_mask = frames_mask[:, :-extra]
    return frames_mask.reshape(frames_mask.shape[0], num_tokens, -1).all(-1)


class BEATsPatchEmbed(nn.Module):
    """The audio input side: ``[B, 1, T, F] -> [B, L, D]`` (conv, LayerNorm over P, projection)."""

    key = "audio"
    layout = "tf"  # time-major tokens, as AudioMAE's audio modality

    def __init__(
        self,
        *,
        embed_dim: int,
        patch_dim: int,
        patch_size: int,
        target_length: int,
        num_mel_bins: int,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        assert num_mel_bins % patch_size == 0, f"num_mel_bins {num_mel_bins} is not a multiple of {patch_size}"
        self.patch_size = patch_size
        self.input_shape = (1, target_length, num_mel_bins)
        self.proj = nn.Conv2d(1, patch_dim, kernel_size=patch_size, stride=patch_size, bias=conv_bias)
        self.norm = nn.LayerNorm(patch_dim)
        self.post_proj = nn.Linear(patch_dim, embed_dim) if patch_dim != embed_dim else nn.Identity()

    @property
    def num_tokens(self) -> int:
        return math.prod(self.input_grid(None))

    def input_grid(self, x: Optional[torch.Tensor]) -> Tuple[int, int]:
        """(time rows, mel columns) of the tokens of ``x`` (of the model's own input when None)."""
        t, f = self.input_shape[1:] if x is None else x.shape[-2:]
        return int(t) // self.patch_size, int(f) // self.patch_size

    def accepts_length(self, frames: int) -> bool:
        return frames >= self.patch_size

    def check_input(self, x: torch.Tensor) -> None:
        bins = self.input_shape[2]
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[3] != bins or x.shape[2] < self.patch_size:
            raise ValueError(
                f"audio input must be [B, 1, T, {bins}] with T >= {self.patch_size} frames, got {list(x.shape)}"
            )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, T, F] -> patch features after the LayerNorm [B, L, P] (frames past the last whole patch dropped)."""
        self.check_input(x)
        return self.norm(rearrange(self.proj(x), "b p t f -> b (t f) p"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_proj(self.embed(x))


class ConvPositionalEmbedding(nn.Module):
    """``GELU(conv1d(x))`` over the token sequence, the conv weight-normed over its kernel axis
    (``weight = g * v / ||v||``, the norm over output and input channels for each tap) and its
    last output dropped when the kernel is even (so L tokens in, L out)."""

    def __init__(self, dim: int, kernel: int = 128, groups: int = 16) -> None:
        super().__init__()
        assert dim % groups == 0, f"width {dim} is not a multiple of conv_pos_groups {groups}"
        self.kernel, self.groups = kernel, groups
        std = math.sqrt(4.0 / (kernel * dim))  # their init
        v = torch.randn(dim, dim // groups, kernel) * std
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, L, D]."""
        w = self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)
        y = F.conv1d(x.transpose(1, 2), w, self.bias, padding=self.kernel // 2, groups=self.groups)
        y = y[..., : x.shape[1]]  # an even kernel gives one output too many
        return F.gelu(y).transpose(1, 2)


class GatedRelPosAttention(nn.Module):
    """Self-attention with the shared relative-position bias, gated per query (see the module doc)."""

    def __init__(self, dim: int, num_heads: int, *, gated: bool = True) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"width {dim} is not a multiple of {num_heads} heads"
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        if gated:
            self.gate = nn.Linear(dim // num_heads, 8)
            self.gate_scale = nn.Parameter(torch.ones(1, num_heads, 1, 1))
        else:
            self.gate = None

    def forward(
        self, x: torch.Tensor, bias: Optional[torch.Tensor], key_padding: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """x [B, L, D], bias [H, L, L] or None, key_padding [B, L] (True = padded) -> [B, L, D]."""
        q, k, v = (rearrange(lin(x), "b l (h k) -> b h l k", h=self.num_heads) for lin in (self.q, self.k, self.v))
        mask = None
        if bias is not None:
            mask = bias.unsqueeze(0)  # [1, H, L, L]
            if self.gate is not None:
                sums = rearrange(self.gate(q), "b h l (two four) -> b h l two four", two=2).sum(-1)
                a, b = torch.sigmoid(sums).unbind(-1)  # [B, H, L] each
                mask = mask * (a * (b * self.gate_scale[..., 0] - 1.0) + 2.0).unsqueeze(-1)
        if key_padding is not None:
            hide = torch.zeros(key_padding.shape, dtype=q.dtype, device=q.device).masked_fill(key_padding, -math.inf)
            hide = hide[:, None, None, :]
            mask = hide if mask is None else mask + hide
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
        return self.proj(rearrange(y, "b h l k -> b l (h k)"))


class BEATsBlock(nn.Module):
    """A BEATs layer: post-LN with the deep-norm residual scale ``alpha``, or pre-LN (``pre_norm``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        alpha: float,
        pre_norm: bool,
        gated: bool,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.alpha, self.pre_norm = alpha, pre_norm
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = GatedRelPosAttention(dim, num_heads, gated=gated)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(
        self, x: torch.Tensor, bias: Optional[torch.Tensor], key_padding: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        dp = self.drop_path  # stochastic depth on the branches (fine-tuning; identity in eval)
        if self.pre_norm:
            x = x + dp(self.attn(self.norm1(x), bias, key_padding))
            return x + dp(self.mlp(self.norm2(x)))
        x = self.norm1(self.alpha * x + dp(self.attn(x, bias, key_padding)))
        return self.norm2(self.alpha * x + dp(self.mlp(x)))


class _BEATs(nn.Module):
    """The parts both BEATs models share; the arguments (their ``cfg`` names in brackets):
    embed_dim [encoder_embed_dim], depth [encoder_layers], num_heads [encoder_attention_heads],
    mlp_dim [encoder_ffn_embed_dim], patch_dim [embed_dim], patch_size [input_patch_size],
    conv_bias, conv_pos, conv_pos_groups, num_buckets, max_distance, rel_pos
    [relative_position_embedding], gated_rel_pos [gru_rel_pos], deep_norm, pre_norm
    [layer_norm_first]; target_length / num_mel_bins: the input the tools cut windows to (any
    length of at least one patch runs)."""

    has_cls = False

    def __init__(
        self,
        *,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        patch_dim: int = 512,
        patch_size: int = 16,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        conv_bias: bool = False,
        conv_pos: int = 128,
        conv_pos_groups: int = 16,
        num_buckets: int = 320,
        max_distance: int = 800,
        rel_pos: bool = True,
        gated_rel_pos: bool = True,
        deep_norm: bool = True,
        pre_norm: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if deep_norm and pre_norm:
            raise ValueError("BEATs: deep_norm and pre_norm (layer_norm_first) exclude each other, as in their code")
        self.embed_dim, self.depth = embed_dim, depth
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.pre_norm = pre_norm
        self.modalities = nn.ModuleDict(
            {
                "audio": BEATsPatchEmbed(
                    embed_dim=embed_dim,
                    patch_dim=patch_dim,
                    patch_size=patch_size,
                    target_length=target_length,
                    num_mel_bins=num_mel_bins,
                    conv_bias=conv_bias,
                )
            }
        )
        self.pos_conv = ConvPositionalEmbedding(embed_dim, conv_pos, conv_pos_groups)
        self.norm = nn.LayerNorm(embed_dim)  # before the blocks (post-LN), after them (pre-LN)
        self.rel_pos_bias = nn.Embedding(num_buckets, num_heads) if rel_pos else None
        alpha = (2.0 * depth) ** 0.25 if deep_norm else 1.0
        gated = rel_pos and gated_rel_pos
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            [
                BEATsBlock(embed_dim, num_heads, mlp_dim, alpha=alpha, pre_norm=pre_norm, gated=gated, drop_path=r)
                for r in rates
            ]
        )

    def position_bias(self, length: int) -> Optional[torch.Tensor]:
        """[H, L, L]: the shared relative-position bias before the gates (None without one)."""
        if self.rel_pos_bias is None:
            return None
        buckets = relative_position_buckets(length, self.num_buckets, self.max_distance)
        return self.rel_pos_bias(buckets.to(self.rel_pos_bias.weight.device)).permute(2, 0, 1)

    def hidden_tokens(self, audio: torch.Tensor) -> Optional[torch.Tensor]:
        """Tokens hidden in training [B, L] (True = hidden), or None; the classifier's masking."""
        return None

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``{"audio": [B, 1, T, F], "padding_mask": [B, T] frames, True = padded (optional)}``
        -> (tokens [B, L, D], token padding [B, L] or None)."""
        if "audio" not in inputs:
            raise KeyError(f"inputs lack modality 'audio'; got {list(inputs)}")
        x = self.modalities["audio"](inputs["audio"])
        frames = inputs.get("padding_mask")
        pad = None if frames is None else token_padding_mask(frames.bool(), x.shape[1])
        hidden = self.hidden_tokens(inputs["audio"])
        if hidden is not None:
            pad = hidden if pad is None else pad | hidden
        if pad is not None:
            x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x)
        if not self.pre_norm:
            x = self.norm(x)
        bias = self.position_bias(x.shape[1])
        for blk in self.blocks:
            x = blk(x, bias, pad)
        return (self.norm(x) if self.pre_norm else x), pad

    def forward_tokens(self, inputs: Mapping[str, torch.Tensor], mask: bool = False) -> torch.Tensor:
        """-> every token of the last block [B, L, D] (``mask`` is taken for the tools' calls; BEATs hides nothing)."""
        return self.encode(inputs)[0]


class BEATsEncoder(_BEATs):
    """The BEATs encoder: ``forward_features({"audio": fbank [B, 1, T, F]}) -> tokens [B, L, D]``,
    their ``extract_features`` of a pretrained model (no cls token). ``decoder`` is None: the tools
    treat it as an encoder whose features are its tokens (mean-pooled for clip vectors)."""

    decoder = None

    def forward_features(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_tokens(inputs)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_features(inputs)


class BEATsClassifier(_BEATs):
    """A fine-tuned BEATs: the encoder, the mean of its unpadded tokens, dropout, the linear
    ``head`` (their ``predictor``) -> logits [B, C] (their ``extract_features`` gives the sigmoid).
    ``forward_features`` / ``pool`` give the pooled tokens [B, D]; ``fc_norm`` is the identity
    (there is none), so avmae's tools pool BEATs as theirs does."""

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
        self.mask_t_prob, self.mask_f_prob = float(mask_t_prob), float(mask_f_prob)
        self.num_classes = num_classes
        self.fc_norm = nn.Identity()
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def reset_head(self, num_classes: Optional[int] = None) -> None:
        """A fresh head (for a new label set): N(0, 0.02) weights, zero bias."""
        if num_classes is not None and num_classes != self.num_classes:
            self.num_classes = num_classes
            self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def hidden_tokens(self, audio: torch.Tensor) -> Optional[torch.Tensor]:
        """In training, ``int(rows * mask_t_prob)`` random time rows and ``int(cols * mask_f_prob)``
        random mel columns of each clip hidden [B, L] (True = hidden): zeroed, hidden as keys and
        left out of the mean, as padding is (their fine-tuning recipe is not released; this is
        AudioMAE's structured masking expressed through BEATs' padding mask)."""
        if not self.training or (self.mask_t_prob <= 0 and self.mask_f_prob <= 0):
            return None
        t, f = self.modalities["audio"].input_grid(audio)
        B = audio.shape[0]

        def pick(n: int, prob: float) -> torch.Tensor:
            k = int(n * prob)
            out = torch.zeros(B, n, dtype=torch.bool, device=audio.device)
            if k > 0:
                idx = torch.rand(B, n, device=audio.device).argsort(dim=1)[:, :k]
                out.scatter_(1, idx, True)
            return out

        rows, cols = pick(t, self.mask_t_prob), pick(f, self.mask_f_prob)
        return (rows[:, :, None] | cols[:, None, :]).reshape(B, t * f)

    @staticmethod
    def pool(tokens: torch.Tensor, pad: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, L, D] -> the mean of the unpadded tokens [B, D] (of all when ``pad`` is None)."""
        if pad is None:
            return tokens.mean(dim=1)
        keep = (~pad).unsqueeze(-1).to(tokens.dtype)
        return (tokens * keep).sum(dim=1) / keep.sum(dim=1)

    def forward_features(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.pool(*self.encode(inputs))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """-> logits [B, C]. The head is linear, so on the mean it equals their mean of per-token logits."""
        return self.head(self.head_drop(self.forward_features(inputs)))


def _register(size: str) -> None:
    preset = BEATS_SIZES[size]

    def encoder(**kw: Any) -> BEATsEncoder:
        return BEATsEncoder(**{**preset, **kw})

    def classifier(**kw: Any) -> BEATsClassifier:
        return BEATsClassifier(**{**preset, **kw})

    encoder.__doc__ = f"BEATs encoder ({preset['embed_dim']}-d, {preset['depth']} blocks); see avmae.models.beats."
    classifier.__doc__ = f"BEATs classifier ({preset['embed_dim']}-d, mean of the tokens, linear head)."
    register_model(f"beats_{size}")(encoder)
    register_model(f"beats_{size}_cls")(classifier)


for _size in BEATS_SIZES:
    _register(_size)

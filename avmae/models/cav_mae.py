"""CAV-MAE (Gong et al., ICLR 2023): the contrastive audio-visual masked autoencoder, and its
fine-tuning classifier, with import of the released checkpoints.

    audio [B,1,T,F] --transpose, 16x16 patches, freq-major--> + pos + modality --mask--> 11 blocks ─┐
    video [B,1,3,H,W] --16x16 patches--------------------> + pos + modality --mask--> 11 blocks ─┤
        ┌──────────────────────────────────────────────────────────────────────────────────────┘
        ├─ cat(a, v) --shared block, joint norms--> norm --joint decoder (8 x 512)--> heads --> masked MSE
        ├─ a --shared block, audio norms--> norm_a --mean--┐
        └─ v --shared block, video norms--> norm_v --mean--┴--> InfoNCE (tau 0.05) x 0.01

The shared ("unified") block has one attention and one MLP but three sets of LayerNorms: joint,
audio-only and video-only (``ModalityNormBlock``). Everything else reuses avmae's parts: the audio
modality with ``layout="ft"`` (CAV-MAE's frequency-major tokens and sin-cos table), the video
modality with one frame, the ``joint`` decoder in global mode, masking from external noise and
the masked-MSE / InfoNCE losses. All LayerNorms use eps 1e-5 (``nn.LayerNorm``'s default, as the
release).

Differences from the release, on purpose:
- With more than one shared block the release's contrastive passes only keep the last block's
  output (``for blk in blocks_u: ca = blk(a, 'a')``); here the blocks are chained. With the
  released depth (one shared block) both are the same.
- ``blocks_a/v`` and the decoder blocks of the release also carry audio/video LayerNorms that its
  forward never uses; they are not built here (so DDP sees no unused parameters) and are listed
  as ignored when a release checkpoint is imported.
- Contrastive negatives come from every process under torch.distributed (``contrastive_gather``);
  the release trained under DataParallel, where each GPU only contrasted its own sub-batch.

Parameter names follow avmae (``modalities.audio.patch_embed``, ``modality_blocks.audio.N``,
``blocks.N``, ``modality_norm.audio``, ``decoder.*``); ``load_checkpoint`` maps the release's names
(``patch_embed_a``, ``blocks_a``, ``blocks_u``, ``norm_a``, ``decoder_pred_a``, ``mlp_head``, ...)
through the "cav-mae" checkpoint format registered here.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp
from timm.models.vision_transformer import Attention

from ..checkpoint import CheckpointError, register_format
from ..layers import drop_path_rates, init_mae_weights, make_block
from ..registry import register_model
from .mae import MaskedAutoencoder, build_modalities, mae_objectives

__all__ = [
    "ModalityNormBlock",
    "CAVMAE",
    "CAVMAEClassifier",
    "CAV_MAE_SIZES",
    "cav_mae",
    "cav_mae_classifier",
    "FT_MODES",
]

LN_EPS = 1e-5  # the release builds every norm with nn.LayerNorm's default eps
MODALITY_KEYS = ("audio", "video")  # the release's "a" and "v"


class ModalityNormBlock(nn.Module):
    """Pre-norm transformer block with shared attention / MLP weights and one pair of LayerNorms
    per input kind: ``norm1/norm2`` for joint input, ``modality_norm1/2.<m>`` for modality m alone.

    x: [B, N, D] -> [B, N, D]; ``forward(x, modality=None)`` uses the joint norms.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        modalities: Tuple[str, ...] = MODALITY_KEYS,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_eps: float = LN_EPS,
    ) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=norm_eps)
        self.norm1 = norm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.modality_norm1 = nn.ModuleDict({m: norm(dim) for m in modalities})
        self.modality_norm2 = nn.ModuleDict({m: norm(dim) for m in modalities})
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, modality: Optional[str] = None) -> torch.Tensor:
        if modality is None:
            n1, n2 = self.norm1, self.norm2
        else:
            n1, n2 = self.modality_norm1[modality], self.modality_norm2[modality]
        x = x + self.drop_path(self.attn(n1(x)))
        x = x + self.drop_path(self.mlp(n2(x)))
        return x


def _modality_configs(audio_length: int, num_mel_bins: int, image_size: int, patch_size: int, pos_trainable: bool):
    return {
        "audio": dict(
            target_length=audio_length,
            num_mel_bins=num_mel_bins,
            patch_size=patch_size,
            layout="ft",
            pos_embed="sincos2d",
            pos_trainable=pos_trainable,
        ),
        "video": dict(
            num_frames=1, image_size=image_size, patch_size=patch_size, tubelet=1, pos_trainable=pos_trainable
        ),
    }


def _check_depths(depth: int, modality_specific_depth: int) -> None:
    if not 0 <= modality_specific_depth < depth:
        raise ValueError(
            f"modality_specific_depth={modality_specific_depth} must leave at least one shared block of depth={depth}"
        )


def _shared_blocks(embed_dim: int, num_heads: int, mlp_ratio: float, drop_paths: List[float]) -> nn.ModuleList:
    """The blocks both modalities share, one per stochastic-depth rate in ``drop_paths``."""
    return nn.ModuleList(
        [ModalityNormBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, drop_path=d) for d in drop_paths]
    )


class CAVMAE(MaskedAutoencoder):
    """CAV-MAE pretraining model.

    ``model({"audio": [B,1,T,F], "video": [B,1,3,H,W]}, mask_ratio=None, noise={"audio": [B,La],
    "video": [B,Lv]})`` -> ``MAEOutput`` with losses ``mae_audio``, ``mae_video``, ``contrastive``
    (unweighted; ``loss`` = mae_loss_weight * (mae_audio + mae_video) + contrast_loss_weight *
    contrastive), ``pred`` {"audio": [B,La,256], "video": [B,Lv,768]}, ``mask``, and
    ``extras["contrastive_acc"]``.

    Args:
        audio_length: spectrogram frames T (1024).
        num_mel_bins: spectrogram mel bins F (128).
        image_size: frame side (224).
        patch_size: patch side (16).
        embed_dim: encoder width (768).
        depth: encoder blocks, a modality branch plus the shared blocks (12).
        num_heads: encoder attention heads (12).
        mlp_ratio: encoder MLP width, in multiples of ``embed_dim`` (4).
        modality_specific_depth: blocks per modality before the shared ones (11).
        decoder_embed_dim: the joint decoder's width (512).
        decoder_depth: the joint decoder's blocks (8).
        decoder_num_heads: the joint decoder's attention heads (16).
        norm_pix_loss: per-patch normalised targets (the released recipes use True).
        mask_ratio_a: default audio masking ratio (0.75).
        mask_ratio_v: default video masking ratio (0.75).
        mae_loss_weight: weight of the reconstruction losses (1.0).
        contrast_loss_weight: weight of the contrastive loss (0.01).
        bidirect_contrast: average both InfoNCE directions (default: column-wise only).
        contrastive_gather: negatives from every process under torch.distributed.
        pos_trainable: learn the positional tables (the release's ``tr_pos``; False).
        drop_path: stochastic depth.
    """

    def __init__(
        self,
        *,
        audio_length: int = 1024,
        num_mel_bins: int = 128,
        image_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        modality_specific_depth: int = 11,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
        mask_ratio_a: float = 0.75,
        mask_ratio_v: float = 0.75,
        mae_loss_weight: float = 1.0,
        contrast_loss_weight: float = 0.01,
        bidirect_contrast: bool = False,
        contrastive_gather: bool = True,
        pos_trainable: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        _check_depths(depth, modality_specific_depth)
        super().__init__(
            modalities=_modality_configs(audio_length, num_mel_bins, image_size, patch_size, pos_trainable),
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            joint_depth=depth - modality_specific_depth,
            cls_token=False,
            decoder="joint",
            decoder_params=dict(
                embed_dim=decoder_embed_dim,
                depth=decoder_depth,
                num_heads=decoder_num_heads,
                mlp_ratio=mlp_ratio,
                norm_eps=LN_EPS,
            ),
            mask_ratio={"audio": mask_ratio_a, "video": mask_ratio_v},
            objectives=mae_objectives(
                2,
                norm_pix_loss=norm_pix_loss,
                loss_weights={"audio": mae_loss_weight, "video": mae_loss_weight},
                contrastive_weight=contrast_loss_weight,
                contrastive_temperature=0.05,
                contrastive_bidirectional=bidirect_contrast,
                contrastive_gather=contrastive_gather,
            ),
            drop_path=drop_path,
            norm_eps=LN_EPS,
        )
        dpr = drop_path_rates(drop_path, depth)
        self.blocks = _shared_blocks(embed_dim, num_heads, mlp_ratio, dpr[modality_specific_depth:])
        self.modality_norm = nn.ModuleDict({m: nn.LayerNorm(embed_dim, eps=LN_EPS) for m in MODALITY_KEYS})
        # the rest was initialised by MaskedAutoencoder (MAE / CAV-MAE init); the new parts alike
        self.blocks.apply(init_mae_weights)
        self.modality_norm.apply(init_mae_weights)

    def single_modality(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """Modality m alone through the shared blocks with its own norms, then ``modality_norm[m]``."""
        for blk in self.blocks:
            x = blk(x, m)
        return self.modality_norm[m](x)

    @torch.no_grad()
    def forward_modality_features(self, inputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Unmasked single-modality features, the release's ``forward_feat`` (retrieval):
        {m: [B, L_m, D]} for each modality present in ``inputs``."""
        out = {}
        for m, mod in self.modalities.items():
            if m not in inputs:
                continue
            x = mod.embed(inputs[m]) + self.modality_embed[m].to(inputs[m].dtype)
            for blk in self.modality_blocks[m] if m in self.modality_blocks else ():
                x = blk(x)
            out[m] = self.single_modality(m, x)
        return out


FT_MODES = ("multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly")


class CAVMAEClassifier(nn.Module):
    """CAV-MAE fine-tuning model (the release's ``CAVMAEFT``): the pretraining encoder (same
    parameter names) + mean over tokens + ``mlp_head`` (LayerNorm, Linear). ``model(inputs)`` ->
    logits [B, num_classes].

    Modes (``mode=``, or per call ``model(inputs, mode=...)``):
    - "multimodal": cat(audio, video) -> shared blocks (joint norms) -> ``norm`` -> mean;
    - "audioonly" / "videoonly": one modality -> shared blocks (its norms) -> ``modality_norm`` -> mean;
    - "missingaudioonly" / "missingvideoonly" (trained multimodal, only audio / only video given; the
      release's names): the average of the joint-norm and the modality-norm pooled features.

    Positional tables are trainable by default (the release's fine-tuning ``tr_pos=True``).
    ``head_name`` names the classifier head among the submodules (the part a linear probe trains).
    """

    head_name: ClassVar[str] = "mlp_head"

    def __init__(
        self,
        *,
        num_classes: int = 527,
        mode: str = "multimodal",
        audio_length: int = 1024,
        num_mel_bins: int = 128,
        image_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        modality_specific_depth: int = 11,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        pos_trainable: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in FT_MODES:
            raise ValueError(f"unknown CAV-MAE mode {mode!r}; valid: {', '.join(FT_MODES)}")
        _check_depths(depth, modality_specific_depth)
        self.mode = mode
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.modalities = build_modalities(
            _modality_configs(audio_length, num_mel_bins, image_size, patch_size, pos_trainable), embed_dim
        )
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, embed_dim)) for m in MODALITY_KEYS})
        dpr = drop_path_rates(drop_path, depth)
        norm = partial(nn.LayerNorm, eps=LN_EPS)
        self.modality_blocks = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    [
                        make_block(embed_dim, num_heads, mlp_ratio=mlp_ratio, drop_path=dpr[i], norm_eps=LN_EPS)
                        for i in range(modality_specific_depth)
                    ]
                )
                for m in MODALITY_KEYS
            }
        )
        self.blocks = _shared_blocks(embed_dim, num_heads, mlp_ratio, dpr[modality_specific_depth:])
        self.norm = norm(embed_dim)
        self.modality_norm = nn.ModuleDict({m: norm(embed_dim) for m in MODALITY_KEYS})
        self.mlp_head = nn.Sequential(norm(embed_dim), nn.Linear(embed_dim, num_classes))
        self.apply(init_mae_weights)
        for mod in self.modalities.values():
            w = mod.patch_embed.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for p in self.modality_embed.values():
            nn.init.normal_(p, std=0.02)

    def no_weight_decay(self) -> set:
        return {f"modality_embed.{m}" for m in MODALITY_KEYS}

    def encode(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """Embed modality m and run its own blocks. -> [B, L_m, D]."""
        x = self.modalities[m].embed(x) + self.modality_embed[m].to(x.dtype)
        for blk in self.modality_blocks[m]:
            x = blk(x)
        return x

    def _shared(self, x: torch.Tensor, modality: Optional[str]) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, modality)
        return self.norm(x) if modality is None else self.modality_norm[modality](x)

    def forward_features(self, inputs: Mapping[str, torch.Tensor], mode: Optional[str] = None) -> torch.Tensor:
        """-> pooled features [B, D] for ``mode`` (default ``self.mode``)."""
        mode = mode or self.mode
        if mode not in FT_MODES:
            raise ValueError(f"unknown CAV-MAE mode {mode!r}; valid: {', '.join(FT_MODES)}")
        need = {"multimodal": MODALITY_KEYS, "audioonly": ("audio",), "missingaudioonly": ("audio",)}.get(
            mode, ("video",)
        )
        missing = [m for m in need if m not in inputs]
        if missing:
            raise KeyError(f"mode {mode!r} needs inputs {list(need)}; missing {missing}")
        if mode == "multimodal":
            x = torch.cat([self.encode(m, inputs[m]) for m in MODALITY_KEYS], dim=1)
            return self._shared(x, None).mean(dim=1)
        m = need[0]
        x = self.encode(m, inputs[m])
        own = self._shared(x, m).mean(dim=1)
        if mode.startswith("missing"):
            return (self._shared(x, None).mean(dim=1) + own) / 2
        return own

    def forward(self, inputs: Mapping[str, torch.Tensor], mode: Optional[str] = None) -> torch.Tensor:
        return self.mlp_head(self.forward_features(inputs, mode))


# ------------------------------------------------------------------------------------------------
# presets

CAV_MAE_SIZES: Dict[str, Dict[str, Any]] = {
    # the release: ViT-B towers of 11 blocks + 1 shared block, 8 x 512 joint decoder
    "base": dict(
        embed_dim=768,
        depth=12,
        modality_specific_depth=11,
        num_heads=12,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
    ),
    # for tests: 64-d, 1 + 1 blocks; 64 x 128 spectrograms (8 x 4 = 32 tokens), 64 x 64 frames (16 tokens)
    "tiny": dict(
        embed_dim=64,
        depth=2,
        modality_specific_depth=1,
        num_heads=4,
        decoder_embed_dim=32,
        decoder_depth=2,
        decoder_num_heads=4,
        audio_length=64,
        image_size=64,
    ),
}
_DECODER_KEYS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")


def _check_size(size: str) -> None:
    if size not in CAV_MAE_SIZES:
        raise ValueError(f"unknown CAV-MAE size {size!r}; valid: {', '.join(CAV_MAE_SIZES)}")


def _check_one_frame(num_frames: int) -> None:
    if num_frames != 1:
        raise ValueError(
            f"CAV-MAE takes one video frame per clip; got num_frames={num_frames} (leave model.params.num_frames out,"
            " or 1)"
        )


def _audio_length(target_length: Optional[int], overrides: Dict[str, Any]) -> None:
    """``target_length`` (fbank frames, ``data.target_length``) as ``audio_length`` in ``overrides``."""
    if target_length is None:
        return
    if overrides.get("audio_length", target_length) != target_length:
        raise ValueError(
            f"target_length={target_length} (data.target_length) and audio_length={overrides['audio_length']} "
            "(model.params.audio_length) disagree; give one"
        )
    overrides["audio_length"] = target_length


def _mask_ratios(mask_ratio: Union[float, Mapping[str, float], None], overrides: Dict[str, Any]) -> None:
    """``mask_ratio`` (a float for both modalities, or {"audio": r, "video": r}) as CAVMAE's
    ``mask_ratio_a`` / ``mask_ratio_v`` in ``overrides``; None keeps the defaults (0.75 each)."""
    if mask_ratio is None:
        return
    if isinstance(mask_ratio, Mapping):
        unknown = sorted(set(mask_ratio) - set(MODALITY_KEYS))
        if unknown:
            raise ValueError(f"mask_ratio names {unknown}, not modalities of CAV-MAE ({list(MODALITY_KEYS)})")
        ratios = {m: float(r) for m, r in mask_ratio.items()}
    else:
        ratios = {m: float(mask_ratio) for m in MODALITY_KEYS}
    for m, r in ratios.items():
        if not 0.0 <= r < 1.0:
            raise ValueError(f"mask_ratio for {m!r} must be in [0, 1), got {r} (masking.mask_ratio)")
        key = f"mask_ratio_{m[0]}"
        if key in overrides and float(overrides[key]) != r:
            raise ValueError(
                f"mask_ratio={r} (masking.mask_ratio / masking.per_modality) and {key}={overrides[key]} "
                f"(model.params.{key}) disagree for {m!r}; give one"
            )
        overrides[key] = r


def cav_mae(
    size: str = "base",
    *,
    target_length: Optional[int] = None,
    mask_ratio: Union[float, Mapping[str, float], None] = None,
    num_frames: int = 1,
    **overrides: Any,
) -> CAVMAE:
    """CAV-MAE pretraining model of a named size (``CAV_MAE_SIZES``); keyword overrides go to ``CAVMAE``.

    Takes the keywords the trainer's pretraining task passes, as avmae's own presets do:
    ``target_length`` (fbank frames, ``data.target_length``) is ``audio_length``; ``mask_ratio``
    (``masking.mask_ratio``: a float for audio and video, or {modality: ratio}) sets
    ``mask_ratio_a`` / ``mask_ratio_v`` (the release masks both at 0.75, the default when it is
    None, which is what the trainer passes when ``masking.mask_ratio`` is unset). ``num_frames`` is
    accepted for the audio-visual dataset, which reads the clip length from ``model.params``;
    CAV-MAE pretrains on one frame per clip, so it must be 1.
    """
    _check_size(size)
    _check_one_frame(num_frames)
    _audio_length(target_length, overrides)
    _mask_ratios(mask_ratio, overrides)
    return CAVMAE(**{**CAV_MAE_SIZES[size], **overrides})


def cav_mae_classifier(
    size: str = "base",
    *,
    target_length: Optional[int] = None,
    mask_t_prob: float = 0.0,
    mask_f_prob: float = 0.0,
    num_frames: int = 1,
    **overrides: Any,
) -> CAVMAEClassifier:
    """CAV-MAE fine-tuning classifier of a named size; overrides go to ``CAVMAEClassifier``.

    Takes the keywords the trainer's fine-tuning task passes: ``target_length`` (fbank frames,
    ``data.target_length``) is ``audio_length``; ``mask_t_prob`` / ``mask_f_prob`` (AudioMAE's
    structured token masking) must stay 0, since CAV-MAE fine-tunes without it; ``num_frames``
    (one frame per view, as in pretraining) must be 1.
    """
    _check_size(size)
    _check_one_frame(num_frames)
    if mask_t_prob or mask_f_prob:
        raise ValueError(
            f"CAV-MAE fine-tuning has no structured time/frequency token masking; got mask_t_prob={mask_t_prob}, "
            f"mask_f_prob={mask_f_prob} (leave masking.mask_t_prob / masking.mask_f_prob at 0)"
        )
    _audio_length(target_length, overrides)
    kw = {k: v for k, v in CAV_MAE_SIZES[size].items() if k not in _DECODER_KEYS}
    return CAVMAEClassifier(**{**kw, **overrides})


@register_model("cav_mae_base")
def cav_mae_base(**kw: Any) -> CAVMAE:
    """CAV-MAE base (the released architecture: 11 + 1 ViT-B blocks, 8 x 512 joint decoder)."""
    return cav_mae("base", **kw)


@register_model("cav_mae_tiny")
def cav_mae_tiny(**kw: Any) -> CAVMAE:
    """A tiny CAV-MAE for tests (64 x 128 spectrograms, 64 x 64 frames)."""
    return cav_mae("tiny", **kw)


@register_model("cav_mae_base_ft")
def cav_mae_base_ft(**kw: Any) -> CAVMAEClassifier:
    """CAV-MAE base fine-tuning classifier (``num_classes=``, ``mode=``)."""
    return cav_mae_classifier("base", **kw)


@register_model("cav_mae_tiny_ft")
def cav_mae_tiny_ft(**kw: Any) -> CAVMAEClassifier:
    """A tiny CAV-MAE classifier for tests."""
    return cav_mae_classifier("tiny", **kw)


# ------------------------------------------------------------------------------------------------
# import of the released checkpoints

_RELEASE_MODALITY = {"a": "audio", "v": "video"}


def _detect_cav_mae(sd: Dict[str, torch.Tensor]) -> bool:
    return "patch_embed_a.proj.weight" in sd and "patch_embed_v.proj.weight" in sd


def _map_block(rest: str, shared: bool) -> Optional[str]:
    """Key inside a release ``Block`` -> ours; None for the modality norms a plain block lacks."""
    head, _, tail = rest.partition(".")
    if head in ("norm1_a", "norm1_v", "norm2_a", "norm2_v"):
        if not shared:
            return None
        kind, m = head.split("_")
        return f"modality_{kind}.{_RELEASE_MODALITY[m]}.{tail}"
    return rest


def _map_cav_mae(sd: Dict[str, torch.Tensor], model: nn.Module):
    """The release's keys (``module.`` already stripped) -> this module's models."""
    if not isinstance(model, (CAVMAE, CAVMAEClassifier)):
        raise CheckpointError(
            f"a CAV-MAE checkpoint loads into CAVMAE / CAVMAEClassifier (cav_mae_* models), not {type(model).__name__}"
        )
    pretrain = isinstance(model, CAVMAE)
    out: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        new: Optional[str]
        if head in ("patch_embed_a", "patch_embed_v"):
            new = f"modalities.{_RELEASE_MODALITY[head[-1]]}.patch_embed.{rest}"
        elif head in ("pos_embed_a", "pos_embed_v"):
            new = f"modalities.{_RELEASE_MODALITY[head[-1]]}.pos_embed"
        elif head in ("modality_a", "modality_v"):
            new = f"modality_embed.{_RELEASE_MODALITY[head[-1]]}"
        elif head in ("blocks_a", "blocks_v"):
            idx, _, inner = rest.partition(".")
            mapped = _map_block(inner, shared=False)
            new = None if mapped is None else f"modality_blocks.{_RELEASE_MODALITY[head[-1]]}.{idx}.{mapped}"
        elif head == "blocks_u":
            idx, _, inner = rest.partition(".")
            new = f"blocks.{idx}.{_map_block(inner, shared=True)}"
        elif head in ("norm_a", "norm_v"):
            new = f"modality_norm.{_RELEASE_MODALITY[head[-1]]}.{rest}"
        elif head == "norm":
            new = k
        elif head == "mlp_head":
            new = k if not pretrain else None
        elif head.startswith("decoder_") or head == "mask_token":
            if not pretrain:
                new = None
            elif head == "decoder_blocks":
                idx, _, inner = rest.partition(".")
                mapped = _map_block(inner, shared=False)
                new = None if mapped is None else f"decoder.blocks.{idx}.{mapped}"
            elif head in ("decoder_pos_embed_a", "decoder_pos_embed_v"):
                new = f"decoder.pos_embed.{_RELEASE_MODALITY[head[-1]]}"
            elif head in ("decoder_modality_a", "decoder_modality_v"):
                new = f"decoder.modality_embed.{_RELEASE_MODALITY[head[-1]]}"
            elif head in ("decoder_pred_a", "decoder_pred_v"):
                new = f"decoder.pred.{_RELEASE_MODALITY[head[-1]]}.{rest}"
            elif head == "mask_token":
                new = "decoder.mask_token"
            else:  # decoder_embed, decoder_norm
                new = f"decoder.{head[len('decoder_') :]}" + (f".{rest}" if rest else "")
        else:
            new = k  # left for the strict check to report
        if new is None:
            ignored.append(k)
        else:
            out[new] = v
    fresh = (
        []
        if pretrain
        else [
            k for k in ("mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.1.weight", "mlp_head.1.bias") if k not in out
        ]
    )
    return out, ignored, fresh


register_format("cav-mae", _detect_cav_mae, _map_cav_mae)

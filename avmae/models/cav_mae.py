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
through the "cav-mae" checkpoint format (``avmae.models.cav_mae_format``).

The modules live in ``avmae.models.cav_mae_model``; this module registers the presets and
re-exports the modules' public names.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

from ..registry import register_model
from .cav_mae_model import (
    CAVMAE,
    FT_MODES,
    LN_EPS,  # noqa: F401  (importable from here as before)
    MODALITY_KEYS,
    CAVMAEClassifier,
    ModalityNormBlock,
)

__all__ = [
    "ModalityNormBlock",
    "CAVMAE",
    "CAVMAEClassifier",
    "CAV_MAE_SIZES",
    "cav_mae",
    "cav_mae_classifier",
    "FT_MODES",
]


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

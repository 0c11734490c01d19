"""avmae's own audio-visual masked autoencoder presets: ``avmae_<size>``.

A ``MaskedAutoencoder`` over two registered modalities, configured only by name:

- audio: AudioMAE's branch (time-major tokens, the released AudioMAE sin-cos table), so AudioMAE
  weights and targets carry over; masking 0.8, unstructured;
- video: a clip of ``num_frames`` frames cut into 2x16x16 tubelets (VideoMAE) with a 3-D sin-cos
  table and tube masking at 0.9 (``tubelet=1`` gives CAV-MAE style per-frame patches at 0.75);
- encoder: ``depth - joint_depth`` blocks per modality, then ``joint_depth`` blocks over the
  concatenated visible tokens (mid fusion; ViT-B: 11 + 1), no cls token;
- decoder: the ``joint`` decoder; its lower ``local_depth`` blocks use shifted-window attention
  inside the audio grid (4x4 windows, shift (2, 0), as AudioMAE's decoder) while video tokens
  attend globally among themselves; the top blocks attend over both modalities;
- losses: masked MSE on per-patch normalised targets per modality + 0.01 x InfoNCE (tau 0.05)
  between mean-pooled single-modality passes through the joint blocks, negatives gathered across
  processes.

Sizes:

===========  =====  =====  ======  =====  =============================  ================
size         width  depth  joint   heads  audio / video input            decoder
===========  =====  =====  ======  =====  =============================  ================
vit_base     768    12     1       12     1024x128 / 8 x 224^2, t=2      512-d, 8 (4 local)
demo         192    4      1       3      256x128 / 4 x 64^2, t=2        128-d, 2 (1 local)
tiny         64     2      1       4      64x128 / 4 x 64^2, t=2         64-d, 2 (1 local)
===========  =====  =====  ======  =====  =============================  ================

``demo`` trains for a few minutes on 2 CPU cores: 128 audio tokens (16 x 8 grid) and 32 video
tokens (2 x 4 x 4 tubelets) per clip, of which 25 + 4 are visible.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

from ..registry import register_model
from .mae import MaskedAutoencoder, preset_objectives

__all__ = ["AV_SIZES", "avmae_av"]

AV_SIZES: Dict[str, Dict[str, Any]] = {
    "vit_base": dict(
        embed_dim=768,
        depth=12,
        joint_depth=1,
        num_heads=12,
        decoder_dim=512,
        decoder_depth=8,
        decoder_heads=16,
        local_depth=4,
        target_length=1024,
        num_frames=8,
        image_size=224,
    ),
    "demo": dict(
        embed_dim=192,
        depth=4,
        joint_depth=1,
        num_heads=3,
        decoder_dim=128,
        decoder_depth=2,
        decoder_heads=4,
        local_depth=1,
        target_length=256,
        num_frames=4,
        image_size=64,
    ),
    "tiny": dict(
        embed_dim=64,
        depth=2,
        joint_depth=1,
        num_heads=4,
        decoder_dim=64,
        decoder_depth=2,
        decoder_heads=4,
        local_depth=1,
        target_length=64,
        num_frames=4,
        image_size=64,
    ),
}


def avmae_av(
    size: str,
    *,
    target_length: Optional[int] = None,
    num_mel_bins: int = 128,
    num_frames: Optional[int] = None,
    image_size: Optional[int] = None,
    tubelet: int = 2,
    joint_depth: Optional[int] = None,
    mask_ratio: Union[float, Mapping[str, float], None] = None,
    local_window: Any = (4, 4),
    local_shift: Any = (2, 0),
    decoder: Union[str, Mapping[str, Any]] = "joint",
    decoder_params: Optional[Mapping[str, Any]] = None,
    contrastive_weight: float = 0.01,
    norm_pix_loss: bool = True,
    **overrides: Any,
) -> MaskedAutoencoder:
    """avmae's audio-visual MAE of a named size (``AV_SIZES``).

    ``decoder_params`` update the joint decoder's (``local_depth=0`` makes it fully global);
    other keyword arguments go to ``MaskedAutoencoder``.
    """
    if size not in AV_SIZES:
        raise ValueError(f"unknown avmae size {size!r}; valid: {', '.join(AV_SIZES)}")
    s = AV_SIZES[size]
    modalities = {
        "audio": dict(
            target_length=target_length or s["target_length"], num_mel_bins=num_mel_bins, pos_embed="audiomae"
        ),
        "video": dict(
            num_frames=num_frames or s["num_frames"], image_size=image_size or s["image_size"], tubelet=tubelet
        ),
    }
    params: Dict[str, Any] = dict(embed_dim=s["decoder_dim"], depth=s["decoder_depth"], num_heads=s["decoder_heads"])
    if decoder == "joint":
        params.update(
            local_modalities={"audio": {"window": list(local_window), "shift": list(local_shift)}},
            local_depth=s["local_depth"],
        )
    params.update(dict(decoder_params or {}))
    if params.get("local_depth") == 0:
        params.pop("local_modalities", None)
    kw: Dict[str, Any] = dict(
        embed_dim=s["embed_dim"],
        depth=s["depth"],
        num_heads=s["num_heads"],
        joint_depth=s["joint_depth"] if joint_depth is None else joint_depth,
    )
    kw.update(overrides)
    # the loss options (out of kw) -> objective specs: masked-patch MSE and InfoNCE
    objectives = preset_objectives(kw, 2, norm_pix_loss=norm_pix_loss, contrastive_weight=contrastive_weight)
    return MaskedAutoencoder(
        modalities=modalities,
        cls_token=False,
        decoder=decoder,
        decoder_params=params,
        mask_ratio=mask_ratio,
        objectives=objectives,
        **kw,
    )


def _register(size: str) -> None:
    def factory(**kw: Any) -> MaskedAutoencoder:
        return avmae_av(size, **kw)

    factory.__name__ = f"avmae_{size}"
    factory.__doc__ = f"avmae audio-visual MAE, size {size} (see avmae.models.av_presets)."
    register_model(f"avmae_{size}")(factory)


for _size in AV_SIZES:
    _register(_size)

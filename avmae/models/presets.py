"""Named model presets, registered in the model registry.

Sizes: ``vit_base`` is AudioMAE's ViT-B/16 (768-d, 12 blocks, 12 heads; decoder 512-d).
``vit_small`` / ``vit_large`` follow MAE's factories; ``tiny`` and ``demo`` are small models for tests
and for the CPU demo.

``audiomae_<size>`` builds the pretraining model (``decoder=`` "swin" (default, the released
model), "global" or "hybrid", or any registered plugin); ``audiomae_<size>_cls`` the fine-tuning
classifier (``num_classes=``).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

from ..registry import DECODERS, register_model
from .classifier import EncoderClassifier
from .mae import MaskedAutoencoder, preset_objectives

__all__ = ["SIZES", "audiomae", "audiomae_cls"]

SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(embed_dim=64, depth=2, num_heads=4, decoder_dim=64, decoder_heads=4),
    "demo": dict(embed_dim=192, depth=4, num_heads=3, decoder_dim=128, decoder_heads=4),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, decoder_dim=512, decoder_heads=16),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, decoder_dim=512, decoder_heads=16),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_dim=512, decoder_heads=16),
}


def _decoder_params(size: str, decoder: str, params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The decoder's width and heads at ``size``, its own params at that size
    (``Decoder.preset_params``: fewer blocks at the small sizes), then ``params``."""
    s = SIZES[size]
    out: Dict[str, Any] = dict(embed_dim=s["decoder_dim"], num_heads=s["decoder_heads"])
    preset = getattr(DECODERS.get(decoder), "preset_params", None)
    if callable(preset):
        out.update(preset(size))
    out.update(dict(params or {}))
    return out


def _audio(
    target_length: int, num_mel_bins: int, pos_embed: str, pos_base_length: Optional[int] = None
) -> Dict[str, Any]:
    params: Dict[str, Any] = dict(target_length=target_length, num_mel_bins=num_mel_bins, pos_embed=pos_embed)
    if pos_base_length is not None:
        params["pos_base_length"] = pos_base_length
    return {"audio": params}


def audiomae(
    size: str,
    *,
    decoder: Union[str, Mapping[str, Any]] = "swin",
    decoder_params: Optional[Mapping[str, Any]] = None,
    target_length: int = 1024,
    num_mel_bins: int = 128,
    pos_embed: str = "audiomae",
    norm_pix_loss: bool = True,
    mask_ratio: float = 0.8,
    pos_base_length: Optional[int] = None,
    **overrides: Any,
) -> MaskedAutoencoder:
    """AudioMAE pretraining model of a named size. ``pos_base_length``: frames the fixed positional
    tables are laid out for (default ``target_length``; see ``avmae.modalities.audio``)."""
    s = SIZES[size]
    name, own = DECODERS.parse(decoder)
    decoder_params = {**own, **dict(decoder_params or {})}
    kw: Dict[str, Any] = dict(embed_dim=s["embed_dim"], depth=s["depth"], num_heads=s["num_heads"])
    kw.update(overrides)
    objectives = preset_objectives(kw, 1, norm_pix_loss=norm_pix_loss)  # takes the loss options out of kw
    return MaskedAutoencoder(
        modalities=_audio(target_length, num_mel_bins, pos_embed, pos_base_length),
        decoder=name,
        decoder_params=_decoder_params(size, name, decoder_params),
        mask_ratio=mask_ratio,
        objectives=objectives,
        **kw,
    )


def audiomae_cls(
    size: str,
    *,
    num_classes: int = 527,
    target_length: int = 1024,
    num_mel_bins: int = 128,
    pos_embed: str = "audiomae",
    pos_base_length: Optional[int] = None,
    **overrides: Any,
) -> EncoderClassifier:
    """AudioMAE fine-tuning classifier of a named size (``pos_base_length``: as ``audiomae``)."""
    s = SIZES[size]
    kw: Dict[str, Any] = dict(embed_dim=s["embed_dim"], depth=s["depth"], num_heads=s["num_heads"])
    kw.update(overrides)
    return EncoderClassifier(
        modalities=_audio(target_length, num_mel_bins, pos_embed, pos_base_length), num_classes=num_classes, **kw
    )


def _register(size: str) -> None:
    def pretrain(**kw: Any) -> MaskedAutoencoder:
        return audiomae(size, **kw)

    def finetune(**kw: Any) -> EncoderClassifier:
        return audiomae_cls(size, **kw)

    pretrain.__doc__ = f"AudioMAE {size} pretraining model (see avmae.models.presets.audiomae)."
    finetune.__doc__ = f"AudioMAE {size} classifier (see avmae.models.presets.audiomae_cls)."
    register_model(f"audiomae_{size}")(pretrain)
    register_model(f"audiomae_{size}_cls")(finetune)


for _size in SIZES:
    _register(_size)

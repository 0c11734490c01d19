"""An AudioMAE-style encoder as a plain timm ``VisionTransformer``: ``timm_kwargs`` (its
constructor arguments) and ``to_timm`` (its state dict). Public through ``avmae.hub``."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn as nn

from .model_inputs import audio_modality

__all__ = ["timm_kwargs", "to_timm"]


def timm_kwargs(model: nn.Module) -> Dict[str, Any]:
    """``timm.models.vision_transformer.VisionTransformer`` arguments that rebuild ``model``'s encoder.

    A classifier maps to ``global_pool='avg', fc_norm=True`` (its mean pool and ``fc_norm``; no final
    norm) with its head; a pretraining model to ``global_pool='avg', fc_norm=False`` (final norm on
    every token, then the mean over the patch tokens) without a head. Either way timm's pre-logits
    features equal this project's pooled features.
    """
    from .models.classifier import EncoderClassifier
    from .models.mae import MaskedAutoencoder

    if type(model) not in (MaskedAutoencoder, EncoderClassifier):
        raise ValueError(
            f"{type(model).__name__} is not an AudioMAE-style ViT (MaskedAutoencoder or EncoderClassifier)"
        )
    if getattr(model, "pre_norm", None) is not None or type(model.blocks[0]).__name__ == "PostNormBlock":
        raise ValueError("post-LN blocks with a pre-norm (EAT) have no timm VisionTransformer equivalent")
    mod = audio_modality(model)
    if getattr(mod, "layout", "tf") != "tf":
        raise ValueError("only the time-major ('tf', AudioMAE) audio layout maps onto timm's ViT patch order")
    _, T, F = mod.input_shape
    blk = model.blocks[0]
    D = int(getattr(model, "embed_dim", mod.patch_embed.proj.out_channels))
    is_cls = not hasattr(model, "decoder")
    kw: Dict[str, Any] = dict(
        img_size=(int(T), int(F)),
        patch_size=int(mod.patch_size),
        in_chans=1,
        embed_dim=D,
        depth=len(model.blocks),
        num_heads=int(blk.attn.num_heads),
        mlp_ratio=blk.mlp.fc1.out_features / D,
        qkv_bias=blk.attn.qkv.bias is not None,
        class_token=bool(getattr(model, "has_cls", True)),
    )
    if is_cls:
        pool = getattr(model, "global_pool", "avg")
        kw.update(
            global_pool="token" if pool == "cls" else "avg",
            fc_norm=True,
            num_classes=int(getattr(model, "num_classes", 0) or 0),
        )
    else:
        if len(model.modalities) != 1:
            raise ValueError(f"a timm ViT holds a single-modality encoder; this model has {list(model.modalities)}")
        kw.update(global_pool="avg", fc_norm=False, num_classes=0)
    return kw


def to_timm(model: nn.Module) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """-> (state dict for timm's ``VisionTransformer(**kwargs)``, kwargs). The decoder is dropped."""
    from .checkpoint import to_audiomae_official

    kw = timm_kwargs(model)
    sd = to_audiomae_official(model)
    drop = ("decoder_", "mask_token")
    sd = {k: v for k, v in sd.items() if not k.startswith(drop)}
    if kw["num_classes"] == 0:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    return sd, kw

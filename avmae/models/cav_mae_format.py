"""Import of CAV-MAE's released checkpoints: the "cav-mae" checkpoint format maps the release's
names (``patch_embed_a``, ``blocks_a``, ``blocks_u``, ``norm_a``, ``decoder_pred_a``, ``mlp_head``,
...) onto ``CAVMAE`` / ``CAVMAEClassifier`` (see ``avmae.models.cav_mae``)."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn

from ..checkpoint import CheckpointError, register_format
from .cav_mae_model import CAVMAE, CAVMAEClassifier

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

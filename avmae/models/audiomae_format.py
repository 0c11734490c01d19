"""AudioMAE's checkpoint layouts, the format entry ``audiomae`` (``avmae.checkpoint.CheckpointFormat``).

One layout, three files: the official pretraining ``.pth`` (``audiomae-pretrain``: encoder,
``decoder_*``, ``mask_token``), the official fine-tuned ``.pth`` (``audiomae-finetune``:
``fc_norm``, ``head``, no ``norm``) and a timm ``VisionTransformer`` state dict of the encoder
(``timm-vit``, hub ports). ``map_keys`` maps them to avmae's keys; ``model_spec`` reads the
``create_model`` call from the shapes (embedding width, depth, input length from ``pos_embed``),
the decoder from its block keys (the registered decoder whose ``official_params`` recognises
them: ``attn.tau`` marks the shifted-window decoder of the released pretraining file), the class
count from the head.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..checkpoint import CheckpointError, CheckpointFormat, Conversion, _is_mae, _single_key
from ..registry import DECODERS, register_checkpoint_format
from .presets import SIZES

__all__ = ["AudioMAEFormat", "map_keys", "model_spec"]


def map_keys(sd: Mapping[str, torch.Tensor], model: nn.Module) -> Conversion:
    """Official AudioMAE (pretrain or fine-tuned) and timm-format encoders -> avmae keys."""
    key = _single_key(model)
    out: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    fresh: List[str] = []
    target_is_mae = _is_mae(model)
    for k, v in sd.items():
        if k == "pos_embed":
            out["cls_pos_embed"] = v[:, :1]
            out[f"modalities.{key}.pos_embed"] = v[:, 1:]
        elif k.startswith("patch_embed."):
            out[f"modalities.{key}.{k}"] = v
        elif k in ("cls_token",) or k.startswith("blocks."):
            out[k] = v
        elif k.startswith("norm."):
            if target_is_mae:
                out[k] = v
            else:
                ignored.append(k)  # the fine-tuning model pools into a fresh fc_norm, as AudioMAE does
        elif k.startswith(("fc_norm.", "head.")):
            if target_is_mae:
                ignored.append(k)
            else:
                out[k] = v
        elif k == "mask_token":
            (out.__setitem__("decoder.mask_token", v) if target_is_mae else ignored.append(k))
        elif k == "decoder_pos_embed":
            if target_is_mae:
                out["decoder.cls_pos_embed"] = v[:, :1]
                out[f"decoder.pos_embed.{key}"] = v[:, 1:]
            else:
                ignored.append(k)
        elif k.startswith(("decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.")):
            if not target_is_mae:
                ignored.append(k)
                continue
            head, _, rest = k.partition(".")
            new = {
                "decoder_embed": "decoder.embed",
                "decoder_blocks": "decoder.blocks",
                "decoder_norm": "decoder.norm",
                "decoder_pred": f"decoder.pred.{key}",
            }[head]
            out[f"{new}.{rest}"] = v
        elif k.startswith(("head_dist.", "pre_logits.")) or k in ("dist_token",):
            ignored.append(k)
        else:
            out[k] = v  # left for the strict check to report
    if not target_is_mae:
        fresh += [k for k in ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias") if k not in out]
    return Conversion(out, ignored, fresh)


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {
        int(k[len(prefix) :].split(".", 1)[0])
        for k in sd
        if k.startswith(prefix) and k[len(prefix) :].split(".", 1)[0].isdigit()
    }
    return max(idx) + 1 if idx else 0


def model_spec(sd: Mapping[str, torch.Tensor], fmt: str, num_mel_bins: int = 128) -> Tuple[str, Dict[str, Any]]:
    """(model name, params) of an official AudioMAE / timm-format file, from tensor shapes."""
    embed_dim = int(sd["patch_embed.proj.weight"].shape[0])
    patch = int(sd["patch_embed.proj.weight"].shape[-1])
    depth = _count(sd, "blocks.")
    size = next((s for s, v in SIZES.items() if v["embed_dim"] == embed_dim and v["depth"] == depth), None)
    params: Dict[str, Any] = {}
    if size is None:  # not a preset size: give the shape explicitly (heads of 64 dims, as ViT)
        size = "vit_base"
        params.update(embed_dim=embed_dim, depth=depth, num_heads=max(1, embed_dim // 64))
    per_row = num_mel_bins // patch
    tokens = int(sd["pos_embed"].shape[1]) - 1
    if tokens % per_row:
        raise CheckpointError(
            f"pos_embed has {tokens} patch rows, not a multiple of {per_row} ({num_mel_bins} mel bins); pass"
            " num_mel_bins="
        )
    params["target_length"] = tokens // per_row * patch
    params["num_mel_bins"] = num_mel_bins
    if fmt == "audiomae-pretrain":
        dec_dim = int(sd["decoder_embed.weight"].shape[0])
        # the registered decoder that recognises the blocks (``Decoder.official_params``)
        found = [
            (name, p)
            for name in DECODERS.names()
            if (p := getattr(DECODERS.get(name), "official_params", lambda _: None)(sd)) is not None
        ]
        if len(found) != 1:
            raise CheckpointError(
                f"the decoder blocks fit {'none' if not found else ', '.join(n for n, _ in found)} of the registered"
                f" decoders ({', '.join(DECODERS.names())}); pass model_name= and decoder="
            )
        decoder, dparams = found[0]
        dparams = {k: v for k, v in dparams.items() if v is not None}
        dparams["embed_dim"] = dec_dim
        if "num_heads" not in dparams and dec_dim != SIZES[size]["decoder_dim"]:
            dparams["num_heads"] = max(1, dec_dim // 32)  # not in the keys: heads of 32 dims
        params["decoder"] = decoder
        params["decoder_params"] = dparams
        return f"audiomae_{size}", params
    if "head.weight" in sd or "fc_norm.weight" in sd:
        params["num_classes"] = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
        return f"audiomae_{size}_cls", params
    # an encoder alone with its final norm (a pretrained timm port): the pretraining model's
    # encoder computes its features (the decoder stays untrained and is reported missing)
    return f"audiomae_{size}", params


@register_checkpoint_format("audiomae")
class AudioMAEFormat(CheckpointFormat):
    """A ViT with ``patch_embed``, ``blocks`` and a ``pos_embed`` with a cls row: the generic
    layout, so it is tried last (``priority`` -100). A distillation token marks a DeiT / AST
    backbone, which has a format of its own."""

    priority = -100

    def detect(self, sd: Mapping[str, torch.Tensor]) -> bool:
        return (
            "patch_embed.proj.weight" in sd
            and "blocks.0.attn.qkv.weight" in sd
            and "pos_embed" in sd
            and "dist_token" not in sd
        )

    def convert(self, sd: Dict[str, torch.Tensor], model: nn.Module) -> Conversion:
        return map_keys(sd, model)

    def label(self, sd: Mapping[str, torch.Tensor]) -> str:
        if "decoder_embed.weight" in sd:
            return "audiomae-pretrain"
        return "audiomae-finetune" if "fc_norm.weight" in sd else "timm-vit"

    def describe(self, sd: Mapping[str, torch.Tensor], num_mel_bins: int = 128) -> Optional[Tuple[str, Dict[str, Any]]]:
        return model_spec(sd, self.label(sd), num_mel_bins) if self.detect(sd) else None

"""BEATs checkpoints (microsoft/unilm ``beats/``): ``.pt`` files holding ``cfg`` (a plain dict of
``BEATsConfig`` fields), ``model`` (the state dict) and, for fine-tuned files, ``label_dict``.

Keys: ``patch_embedding.weight``, ``layer_norm.*``, ``post_extract_proj.*``,
``encoder.pos_conv.0.{weight_g, weight_v, bias}`` (weight norm; torch's newer parametrisation names
``parametrizations.weight.original0/1`` are read too), ``encoder.layer_norm.*``,
``encoder.layers.N.self_attn.{q,k,v,out}_proj.*``, ``...self_attn.grep_linear.*``,
``...self_attn.grep_a``, ``...self_attn.relative_attention_bias.weight`` (one table shared by every
layer, stored under each), ``...self_attn_layer_norm.*``, ``...fc1.*``, ``...fc2.*``,
``...final_layer_norm.*``; fine-tuned: ``predictor.*``.

The file is read like a fairseq one (``avmae.checkpoint.read_state_dict``): its ``cfg`` reaches
``beats_spec`` as JSON metadata, which describes the model (sizes, buckets, whether fine-tuned).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..checkpoint_error import CheckpointError
from ..checkpoint_formats import CheckpointFormat, Conversion
from ..models.beats import BEATS_FBANK, BEATS_STATS
from ..registry import register_checkpoint_format

_logger = logging.getLogger(__name__)

__all__ = ["BEATsFormat", "detect_beats", "map_beats", "beats_spec", "beats_labels"]

_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.out_proj": "attn.proj",
    "self_attn.grep_linear": "attn.gate",
    "self_attn_layer_norm": "norm1",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
    "final_layer_norm": "norm2",
}
_TOP = {
    "patch_embedding.weight": "modalities.audio.proj.weight",
    "encoder.pos_conv.0.weight_g": "pos_conv.weight_g",
    "encoder.pos_conv.0.weight_v": "pos_conv.weight_v",
    "encoder.pos_conv.0.parametrizations.weight.original0": "pos_conv.weight_g",
    "encoder.pos_conv.0.parametrizations.weight.original1": "pos_conv.weight_v",
    "encoder.pos_conv.0.bias": "pos_conv.bias",
}


def detect_beats(sd: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embedding.weight" in sd and "encoder.layers.0.self_attn.q_proj.weight" in sd


def map_beats(sd: Dict[str, torch.Tensor], model: nn.Module):
    """A BEATs state dict -> ``beats_*`` keys. -> (state dict, ignored, fresh)."""
    is_classifier = hasattr(model, "head")
    out: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    for k, v in sd.items():
        if k in _TOP:
            out[_TOP[k]] = v
        elif k.startswith("layer_norm."):
            out["modalities.audio.norm." + k.split(".", 1)[1]] = v
        elif k.startswith("post_extract_proj."):
            out["modalities.audio.post_proj." + k.split(".", 1)[1]] = v
        elif k.startswith("encoder.layer_norm."):
            out["norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("predictor."):
            (out.__setitem__("head." + k.split(".", 1)[1], v) if is_classifier else ignored.append(k))
        elif (m := _LAYER.match(k)) is not None:
            i, rest = m.group(1), m.group(2)
            if rest == "self_attn.relative_attention_bias.weight":
                if i == "0":
                    out["rel_pos_bias.weight"] = v
                else:
                    ignored.append(k)  # the same table, stored again under each layer
            elif rest == "self_attn.grep_a":
                out[f"blocks.{i}.attn.gate_a"] = v
            else:
                name, _, leaf = rest.rpartition(".")
                out[f"blocks.{i}.{_LAYER_NAMES.get(name, name)}.{leaf}"] = v
        else:
            out[k] = v  # left for the strict check to report
    fresh = [k for k in ("head.weight", "head.bias") if is_classifier and k not in out]
    return out, ignored, fresh


def _check_cfg(cfg: Mapping[str, Any], sd: Mapping[str, torch.Tensor]) -> None:
    """Every value of the file's ``cfg`` that its weights also tell, compared with them before
    anything is built; a mismatch names the key, the cfg's value and the weights'."""
    patch = sd["patch_embedding.weight"]
    v = sd.get("encoder.pos_conv.0.weight_v", sd.get("encoder.pos_conv.0.parametrizations.weight.original1"))
    dim = int(sd["encoder.layers.0.self_attn.q_proj.weight"].shape[0])
    told: Dict[str, Any] = {
        "encoder_embed_dim": dim,
        "encoder_layers": 1 + max(int(m.group(1)) for k in sd if (m := _LAYER.match(k)) is not None),
        "encoder_ffn_embed_dim": int(sd["encoder.layers.0.fc1.weight"].shape[0]),
        "embed_dim": int(patch.shape[0]),
        "input_patch_size": int(patch.shape[-1]),
        "conv_bias": "patch_embedding.bias" in sd,
        "finetuned_model": "predictor.weight" in sd,
    }
    if v is not None:
        told["conv_pos"] = int(v.shape[-1])
        told["conv_pos_groups"] = dim // max(1, int(v.shape[1]))
    table = sd.get("encoder.layers.0.self_attn.relative_attention_bias.weight")
    if table is not None:
        told["num_buckets"], told["encoder_attention_heads"] = int(table.shape[0]), int(table.shape[1])
    if "predictor.weight" in sd:
        told["predictor_class"] = int(sd["predictor.weight"].shape[0])
    bad = [f"{k}={cfg[k]!r} (the weights say {t!r})" for k, t in told.items() if k in cfg and cfg[k] != t]
    if bad:
        raise CheckpointError(f"the BEATs cfg does not match its weights: {', '.join(bad)}")
    if cfg.get("activation_fn", "gelu") != "gelu":
        raise CheckpointError(f"BEATs with activation_fn={cfg['activation_fn']!r} is not supported (released: gelu)")
    distance = cfg.get("max_distance", 1280)
    if not isinstance(distance, int) or isinstance(distance, bool) or distance <= 0:
        raise CheckpointError(f"the BEATs cfg has max_distance={distance!r}; a positive integer is needed")


def beats_labels(meta: Optional[Mapping[str, str]], num_classes: int) -> Optional[List[str]]:
    """The fine-tuned file's ``label_dict`` ({class index: label}, as their README reads it) as a
    list in the head's order; None when the file has none."""
    text = (meta or {}).get("label_dict")
    if not text:
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"the BEATs label_dict is not readable ({exc})") from None
    try:
        by_index = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise CheckpointError("the BEATs label_dict maps something other than class indices to labels") from None
    if sorted(by_index) != list(range(num_classes)):
        raise CheckpointError(
            f"the BEATs label_dict has {len(by_index)} entries (indices {min(by_index, default=0)}.."
            f"{max(by_index, default=-1)}), the predictor {num_classes} classes"
        )
    return [by_index[i] for i in range(num_classes)]


def beats_spec(
    sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, str]] = None, *, num_mel_bins: int = 128
) -> Optional[Tuple[str, Dict[str, Any], Dict[str, Any]]]:
    """(model name, params, frontend config) of a BEATs file, None for other files."""
    if not detect_beats(sd):
        return None
    cfg: Dict[str, Any] = {}
    if meta and meta.get("fairseq_cfg"):
        try:
            cfg = json.loads(meta["fairseq_cfg"]) or {}
        except json.JSONDecodeError:
            cfg = {}
    _check_cfg(cfg, sd)
    if cfg.get("layer_norm_first"):
        raise CheckpointError("BEATs with layer_norm_first=True is not supported (the released models are post-LN)")
    if cfg and not (cfg.get("relative_position_embedding", True) and cfg.get("gru_rel_pos", True)):
        raise CheckpointError("BEATs without the gated relative-position bias is not supported (the released have it)")
    q = sd["encoder.layers.0.self_attn.q_proj.weight"]
    patch = sd["patch_embedding.weight"]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER.match(k)) is not None)
    embed_dim = int(q.shape[0])
    params: Dict[str, Any] = dict(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=int(sd["encoder.layers.0.self_attn.grep_a"].shape[1])
        if "encoder.layers.0.self_attn.grep_a" in sd
        else int(cfg.get("encoder_attention_heads", 12)),
        mlp_dim=int(sd["encoder.layers.0.fc1.weight"].shape[0]),
        patch_dim=int(patch.shape[0]),
        patch_size=int(patch.shape[-1]),
        num_mel_bins=num_mel_bins,
        conv_pos=int(cfg.get("conv_pos", 128)),
        conv_pos_groups=int(cfg.get("conv_pos_groups", 16)),
        num_buckets=int(cfg.get("num_buckets", 320)),
        # what the weights cannot tell: the cfg's value, else BEATsConfig's default (as their code
        # reads a cfg); a file without any cfg is taken as the released configuration
        max_distance=int(cfg.get("max_distance", 1280 if cfg else 800)),
        deep_norm=bool(cfg.get("deep_norm", False if cfg else True)),
    )
    if not cfg:
        _logger.warning(
            "a BEATs file without its cfg: assuming the released configuration (deep_norm, max_distance 800)"
        )
    name = "beats_base"
    if "predictor.weight" in sd:
        name += "_cls"
        params["num_classes"] = int(sd["predictor.weight"].shape[0])
    mean, std = BEATS_STATS
    frontend: Dict[str, Any] = {
        "data": {"sample_rate": 16000, "mean": mean, "std": std, "fbank_style": BEATS_FBANK, "pad_to_length": False}
    }
    labels = beats_labels(meta, params["num_classes"]) if "num_classes" in params else None
    if labels is not None:
        frontend["labels"] = labels  # the head's classes in order (``label_dict``); evaluate matches them by id
    return name, params, frontend


@register_checkpoint_format("beats")
class BEATsFormat(CheckpointFormat):
    """The checkpoint-format entry for BEATs ``.pt`` files."""

    def detect(self, sd: Mapping[str, torch.Tensor]) -> bool:
        return detect_beats(sd)

    def convert(self, sd: Dict[str, torch.Tensor], model: nn.Module) -> Conversion:
        return Conversion(*map_beats(sd, model))

    def describe(self, sd, num_mel_bins: int = 128, meta: Optional[Mapping[str, str]] = None):
        return beats_spec(sd, meta, num_mel_bins=num_mel_bins)

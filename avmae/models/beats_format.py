"""BEATs checkpoints (microsoft/unilm ``beats/``), the format entry ``beats``.

The released ``.pt`` files are ``{"cfg": dict, "model": state dict}``, fine-tuned ones add
``"label_dict"``; ``cfg`` holds plain values (``BEATsConfig`` fields over its defaults), so
``torch.load(weights_only=True)`` reads them as they are. ``avmae.checkpoint.read_state_dict``
hands the config on as JSON metadata (``fairseq_cfg``); ``describe`` builds the model from it,
each value checked against the shapes of the weights first.

Keys (theirs -> avmae's ``beats_*``): ``patch_embedding.weight`` -> ``modalities.audio.proj``,
``layer_norm`` -> ``modalities.audio.norm``, ``post_extract_proj`` -> ``modalities.audio.post_proj``,
``encoder.pos_conv.0.{weight_g, weight_v, bias}`` -> ``pos_conv.*`` (torch's parametrised names
``parametrizations.weight.original0/1`` too), ``encoder.layer_norm`` -> ``norm``,
``encoder.layers.N.self_attn.{q,k,v,out}_proj`` -> ``blocks.N.attn.{q,k,v,proj}``,
``...self_attn.grep_linear`` / ``grep_a`` -> ``blocks.N.attn.gate`` / ``gate_scale``,
``...self_attn_layer_norm`` / ``final_layer_norm`` -> ``blocks.N.norm1`` / ``norm2``,
``...fc1`` / ``fc2`` -> ``blocks.N.fc1`` / ``fc2``, ``...relative_attention_bias`` (one table,
stored again under every layer) -> ``rel_pos_bias``; fine-tuned: ``predictor`` -> ``head``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..checkpoint import CheckpointError
from ..checkpoint_formats import CheckpointFormat, Conversion
from ..registry import register_checkpoint_format
from .beats import BEATS_DATA

__all__ = ["BEATsFormat", "BEATS_DEFAULTS", "beats_config", "map_beats", "beats_spec"]

# ``BEATsConfig``'s defaults: a file's ``cfg`` updates these, as their code does
BEATS_DEFAULTS: Dict[str, Any] = dict(
    input_patch_size=-1,
    embed_dim=512,
    conv_bias=False,
    encoder_layers=12,
    encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072,
    encoder_attention_heads=12,
    activation_fn="gelu",
    layer_norm_first=False,
    deep_norm=False,
    conv_pos=128,
    conv_pos_groups=16,
    relative_position_embedding=False,
    num_buckets=320,
    max_distance=1280,
    gru_rel_pos=False,
    finetuned_model=False,
    predictor_class=527,
)

_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_IN_LAYER = {
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.out_proj": "attn.proj",
    "self_attn.grep_linear": "attn.gate",
    "self_attn_layer_norm": "norm1",
    "final_layer_norm": "norm2",
    "fc1": "fc1",
    "fc2": "fc2",
}
_TOP = {
    "patch_embedding": "modalities.audio.proj",
    "layer_norm": "modalities.audio.norm",
    "post_extract_proj": "modalities.audio.post_proj",
    "encoder.layer_norm": "norm",
    "predictor": "head",
}
_POS_CONV = {
    "encoder.pos_conv.0.weight_g": "pos_conv.weight_g",
    "encoder.pos_conv.0.weight_v": "pos_conv.weight_v",
    "encoder.pos_conv.0.parametrizations.weight.original0": "pos_conv.weight_g",
    "encoder.pos_conv.0.parametrizations.weight.original1": "pos_conv.weight_v",
    "encoder.pos_conv.0.bias": "pos_conv.bias",
}
_SHARED_BIAS = "self_attn.relative_attention_bias.weight"


def _detect(sd: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embedding.weight" in sd and "encoder.layers.0.self_attn.q_proj.weight" in sd


def map_beats(sd: Mapping[str, torch.Tensor], model: nn.Module) -> Conversion:
    """A BEATs state dict -> ``beats_*`` keys (see the module doc)."""
    is_classifier = hasattr(model, "head")
    out: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    table = sd.get(f"encoder.layers.0.{_SHARED_BIAS}")
    for k, v in sd.items():
        prefix, _, leaf = k.rpartition(".")
        if k in _POS_CONV:
            out[_POS_CONV[k]] = v
        elif prefix in _TOP:
            if prefix == "predictor" and not is_classifier:
                ignored.append(k)  # an encoder takes the fine-tuned file's tokens, not its head
            else:
                out[f"{_TOP[prefix]}.{leaf}"] = v
        elif (m := _LAYER.match(k)) is not None:
            i, rest = m.group(1), m.group(2)
            if rest == _SHARED_BIAS:
                if i == "0":
                    out["rel_pos_bias.weight"] = v
                elif table is None or v.shape != table.shape or (not v.is_meta and not torch.equal(v, table)):
                    raise CheckpointError(
                        f"{k} differs from layer 0's table; BEATs shares one relative-position table across layers"
                    )
                else:
                    ignored.append(k)  # the same table again
            elif rest == "self_attn.grep_a":
                out[f"blocks.{i}.attn.gate_scale"] = v
            else:
                name, _, leaf = rest.rpartition(".")
                out[f"blocks.{i}.{_IN_LAYER.get(name, name)}.{leaf}"] = v
        else:
            out[k] = v  # left for the strict check to report
    fresh = [k for k in ("head.weight", "head.bias") if is_classifier and k not in out]
    return Conversion(out, ignored, fresh)


def beats_config(meta: Optional[Mapping[str, str]]) -> Optional[Dict[str, Any]]:
    """The file's ``cfg`` over ``BEATS_DEFAULTS`` (None when the file carries no cfg)."""
    text = (meta or {}).get("fairseq_cfg")
    if not text:
        return None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"the BEATs cfg is not readable ({exc})") from None
    if not isinstance(cfg, dict) or not cfg:
        return None
    return {**BEATS_DEFAULTS, **cfg}


def _layers(sd: Mapping[str, torch.Tensor]) -> int:
    return 1 + max(int(m.group(1)) for k in sd if (m := _LAYER.match(k)) is not None)


def _check(cfg: Mapping[str, Any], sd: Mapping[str, torch.Tensor]) -> None:
    """Every cfg value that the weights also tell, compared with them; a mismatch names both."""
    dim = cfg["encoder_embed_dim"]
    q = sd["encoder.layers.0.self_attn.q_proj.weight"]
    patch = sd["patch_embedding.weight"]
    v = sd.get("encoder.pos_conv.0.weight_v", sd.get("encoder.pos_conv.0.parametrizations.weight.original1"))
    told = {
        "encoder_embed_dim": int(q.shape[0]),
        "encoder_layers": _layers(sd),
        "encoder_ffn_embed_dim": int(sd["encoder.layers.0.fc1.weight"].shape[0]),
        "embed_dim": int(patch.shape[0]),
        "input_patch_size": int(patch.shape[-1]),
        "conv_bias": "patch_embedding.bias" in sd,
        "relative_position_embedding": f"encoder.layers.0.{_SHARED_BIAS}" in sd,
        "gru_rel_pos": "encoder.layers.0.self_attn.grep_a" in sd,
        "finetuned_model": "predictor.weight" in sd,
    }
    if v is not None:
        told["conv_pos"] = int(v.shape[-1])
        told["conv_pos_groups"] = dim // int(v.shape[1]) if isinstance(dim, int) and v.shape[1] else -1
    if told["relative_position_embedding"]:
        table = sd[f"encoder.layers.0.{_SHARED_BIAS}"]
        told["num_buckets"], told["encoder_attention_heads"] = int(table.shape[0]), int(table.shape[1])
    elif told["gru_rel_pos"]:
        told["encoder_attention_heads"] = int(sd["encoder.layers.0.self_attn.grep_a"].shape[1])
    if told["finetuned_model"]:
        told["predictor_class"] = int(sd["predictor.weight"].shape[0])
    bad = [f"{k}={cfg[k]!r} (the weights say {t!r})" for k, t in told.items() if cfg[k] != t]
    if bad:
        raise CheckpointError(f"the BEATs cfg does not match its weights: {', '.join(bad)}")
    if cfg["activation_fn"] != "gelu":
        raise CheckpointError(f"BEATs with activation_fn={cfg['activation_fn']!r}: only 'gelu' (released) is built")
    if cfg["deep_norm"] and cfg["layer_norm_first"]:
        raise CheckpointError("the BEATs cfg sets both deep_norm and layer_norm_first, which their code refuses")
    for k in ("num_buckets", "max_distance", "encoder_attention_heads"):
        if not isinstance(cfg[k], int) or cfg[k] <= 0:
            raise CheckpointError(f"the BEATs cfg has {k}={cfg[k]!r}; a positive integer is needed")


def beats_spec(
    sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, str]] = None, *, num_mel_bins: int = 128
) -> Optional[Tuple[str, Dict[str, Any], Dict[str, Any]]]:
    """(model name, factory params, run config with the input statistics) of a BEATs file; None
    for other files and for BEATs weights without their ``cfg`` (then name the model)."""
    if not _detect(sd):
        return None
    cfg = beats_config(meta)
    if cfg is None:
        return None
    _check(cfg, sd)
    params: Dict[str, Any] = dict(
        embed_dim=cfg["encoder_embed_dim"],
        depth=cfg["encoder_layers"],
        num_heads=cfg["encoder_attention_heads"],
        mlp_dim=cfg["encoder_ffn_embed_dim"],
        patch_dim=cfg["embed_dim"],
        patch_size=cfg["input_patch_size"],
        num_mel_bins=num_mel_bins,
        conv_bias=bool(cfg["conv_bias"]),
        conv_pos=cfg["conv_pos"],
        conv_pos_groups=cfg["conv_pos_groups"],
        num_buckets=cfg["num_buckets"],
        max_distance=cfg["max_distance"],
        rel_pos=bool(cfg["relative_position_embedding"]),
        gated_rel_pos=bool(cfg["gru_rel_pos"]),
        deep_norm=bool(cfg["deep_norm"]),
        pre_norm=bool(cfg["layer_norm_first"]),
    )
    name = "beats_base"
    if cfg["finetuned_model"]:
        name = "beats_base_cls"
        params["num_classes"] = cfg["predictor_class"]
    return name, params, {"data": dict(BEATS_DATA)}


@register_checkpoint_format("beats")
class BEATsFormat(CheckpointFormat):
    """BEATs ``.pt`` files (pretrained and fine-tuned): ``patch_embedding`` and ``encoder.layers``."""

    def detect(self, sd: Mapping[str, torch.Tensor]) -> bool:
        return _detect(sd)

    def convert(self, sd: Dict[str, torch.Tensor], model: nn.Module) -> Conversion:
        return map_beats(sd, model)

    def label(self, sd: Mapping[str, torch.Tensor]) -> str:
        return "beats-finetune" if "predictor.weight" in sd else "beats-pretrain"

    def describe(self, sd, num_mel_bins: int = 128, meta: Optional[Mapping[str, str]] = None):
        return beats_spec(sd, meta, num_mel_bins=num_mel_bins)

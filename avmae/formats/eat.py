"""EAT / SSLAM checkpoints: the released fairseq files and the Hugging Face port folders.

Layouts (after a ``module.`` prefix is stripped), ``P = modality_encoders.IMAGE.``:

==================  =====================================================================  ===========
layout              keys                                                                   extra
==================  =====================================================================  ===========
eat-pretrain        ``P.local_encoder.proj``, ``P.extra_tokens``,                           ``P.decoder.*``
                    ``P.fixed_positional_encoder.positions``, ``P.context_encoder.norm``,   (CNN decoder),
                    ``blocks.N.*``                                                          ``_ema.*``
eat-finetune        the same prefixed ``model.``, plus ``fc_norm.*``, ``head.*``            --
eat-hf              ``model.local_encoder.proj``, ``model.extra_tokens``,                   ``model.fc_norm``,
                    ``model.fixed_positional_encoder.positions``, ``model.pre_norm``,       ``model.head``
                    ``model.blocks.N.*``                                                    (fine-tuned)
==================  =====================================================================  ===========

``_ema.*`` is the EMA teacher of a pretraining file, flattened by ``avmae.formats.fairseq``; the
student is loaded unless the teacher is asked for (``avmae.formats.fairseq.take_teacher``,
``load_pretrained(path, teacher=True)``). The decoder and the teacher
are reported as ignored when the student encoder is loaded.

The model description comes from the shapes (width, depth, table rows, classes) and, for
fairseq files, the config (heads, ``prediction_mode``, the task's ``target_length`` and the
dataset flags that pick EAT's fbank statistics).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..checkpoint_error import CheckpointError
from ..checkpoint_formats import CheckpointFormat, Conversion
from ..models.eat import EAT_SIZES, EAT_STATS
from ..registry import register_checkpoint_format
from .fairseq import EMA_PREFIX

_logger = logging.getLogger(__name__)

__all__ = [
    "EATFormat",
    "eat_layout",
    "detect_eat",
    "canonical_eat",
    "map_eat",
    "eat_spec",
    "eat_statistics",
]

_P = "modality_encoders.IMAGE."
_HF_NAMES = {"pre_norm": "context_encoder.norm"}  # the HF port's names that differ from fairseq's


def eat_layout(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """ "eat-pretrain", "eat-finetune", "eat-hf" or None."""
    if f"{_P}local_encoder.proj.weight" in sd and "blocks.0.attn.qkv.weight" in sd:
        return "eat-pretrain"
    if f"model.{_P}local_encoder.proj.weight" in sd and "model.blocks.0.attn.qkv.weight" in sd:
        return "eat-finetune"
    if "model.local_encoder.proj.weight" in sd and "model.pre_norm.weight" in sd:
        return "eat-hf"
    return None


def detect_eat(sd: Mapping[str, torch.Tensor]) -> bool:
    return eat_layout(sd) is not None


def canonical_eat(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Any EAT layout -> fairseq pretraining names (``modality_encoders.IMAGE.*``, ``blocks.*``,
    ``fc_norm.*``, ``head.*``, ``_ema.*``)."""
    layout = eat_layout(sd)
    if layout == "eat-pretrain":
        return dict(sd)
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if layout == "eat-finetune":
            out[k[len("model.") :] if k.startswith("model.") else k] = v
            continue
        rest = k[len("model.") :] if k.startswith("model.") else k
        head = rest.split(".", 1)[0]
        if head in ("blocks", "fc_norm", "head") or not k.startswith("model."):
            out[rest] = v
        else:
            name = _HF_NAMES.get(head, head)
            out[_P + name + rest[len(head) :]] = v
    return out


def map_eat(sd: Dict[str, torch.Tensor], model: nn.Module):
    """An EAT checkpoint -> an ``eat_*`` model's keys. -> (state dict, ignored keys, fresh keys)."""
    canon = canonical_eat(sd)
    is_mae = hasattr(model, "decoder")
    out: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    fresh: List[str] = []
    for k, v in canon.items():
        if k.startswith(EMA_PREFIX) or k.startswith(_P + "decoder."):
            ignored.append(k)  # the teacher, the CNN decoder: pretraining only
        elif k == _P + "local_encoder.proj.weight" or k == _P + "local_encoder.proj.bias":
            out["modalities.audio.patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k == _P + "extra_tokens":
            out["cls_token"] = v
        elif k == _P + "fixed_positional_encoder.positions":
            out["modalities.audio.pos_embed"] = v
        elif k.startswith(_P + "context_encoder.norm."):
            out["pre_norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith(("fc_norm.", "head.")):
            (ignored.append(k) if is_mae else out.__setitem__(k, v))
        else:
            out[k] = v  # blocks.*, or left for the strict check to report
    if "cls_token" in out:
        # EAT's cls is prepended after the positions: it has none
        out["cls_pos_embed"] = torch.zeros_like(out["cls_token"])
    if not is_mae:
        fresh += [k for k in ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias") if k not in out]
    return out, ignored, fresh


# ---------------------------------------------------------------------------------------------
# model description


def _find(cfg: Any, key: str, depth: int = 0) -> Any:
    """The first value of ``key`` in a nested plain config (breadth first)."""
    if depth > 8 or not isinstance(cfg, Mapping):
        return None
    if key in cfg and not isinstance(cfg[key], Mapping):
        return cfg[key]
    for v in cfg.values():
        found = _find(v, key, depth + 1)
        if found is not None:
            return found
    return None


def _pool(mode: Any, where: str) -> str:
    if mode is None:
        return "cls"
    text = str(mode).upper()
    if text in ("CLS_TOKEN", "2") or text.endswith(".CLS_TOKEN"):
        return "cls"
    if text in ("MEAN_POOLING", "1") or text.endswith(".MEAN_POOLING"):
        return "avg"
    raise CheckpointError(f"{where}: prediction_mode {mode!r} is not supported (CLS_TOKEN and MEAN_POOLING are)")


def eat_statistics(cfg: Mapping[str, Any]) -> Tuple[float, float, str]:
    """EAT's fbank statistics for a file's task config: ESC-50 / Speech Commands flags, else AudioSet."""
    task = cfg.get("task") if isinstance(cfg.get("task"), Mapping) else {}
    if task.get("esc50_eval"):
        return (*EAT_STATS["esc50"], "esc50")
    if task.get("spcv2_eval"):
        return (*EAT_STATS["speechcommands"], "speechcommands")
    return (*EAT_STATS["audioset"], "audioset")


def eat_spec(
    sd: Mapping[str, torch.Tensor], meta: Optional[Mapping[str, str]] = None, *, num_mel_bins: int = 128
) -> Optional[Tuple[str, Dict[str, Any], Dict[str, Any]]]:
    """(model name, factory params, frontend config) of an EAT checkpoint, None for other files."""
    if not detect_eat(sd):
        return None
    canon = canonical_eat(sd)
    cfg: Dict[str, Any] = {}
    if meta and meta.get("fairseq_cfg"):
        try:
            cfg = json.loads(meta["fairseq_cfg"]) or {}
        except json.JSONDecodeError:
            cfg = {}
    proj = canon[_P + "local_encoder.proj.weight"]
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in canon if k.startswith("blocks.") and k.split(".")[1].isdigit())
    heads = _find(cfg.get("model"), "num_heads")
    if heads is None and meta and meta.get("folder_config"):  # an HF port's config.json
        try:
            folder = json.loads(meta["folder_config"])
        except json.JSONDecodeError:
            folder = {}
        heads = _find(folder, "num_heads") or _find(folder, "num_attention_heads")
    size = next((s for s, v in EAT_SIZES.items() if v["embed_dim"] == embed_dim and v["depth"] == depth), None)
    params: Dict[str, Any] = {}
    if size is None or (heads is not None and int(heads) != EAT_SIZES[size]["num_heads"]):
        size = size or "base"
        params.update(embed_dim=embed_dim, depth=depth, num_heads=int(heads) if heads else max(1, embed_dim // 64))
    per_row = num_mel_bins // patch
    pos = canon.get(_P + "fixed_positional_encoder.positions")
    if pos is not None:
        if pos.shape[1] % per_row:
            raise CheckpointError(f"EAT positional table of {pos.shape[1]} rows is not a multiple of {per_row}")
        params["pos_max_length"] = int(pos.shape[1]) // per_row * patch
    target = _find(cfg.get("task"), "target_length") or 1024
    params["target_length"] = min(int(target), params.get("pos_max_length", int(target)))
    params["num_mel_bins"] = num_mel_bins
    name = f"eat_{size}"
    if "head.weight" in canon:
        name += "_cls"
        params["num_classes"] = int(canon["head.weight"].shape[0])
        params["global_pool"] = _pool(_find(cfg.get("model"), "prediction_mode"), "EAT checkpoint")
    mean, std, stats = eat_statistics(cfg)
    frontend = {
        "data": {
            "sample_rate": 16000,
            "mean": mean,
            "std": std,
            "norm": stats,
            "padding": "zeros at the end before normalising",
            "target_length": params["target_length"],
        }
    }
    return name, params, frontend


@register_checkpoint_format("eat")
class EATFormat(CheckpointFormat):
    """The checkpoint-format entry: fairseq pretraining / fine-tuned files and HF-port folders,
    reported as ``eat-pretrain``, ``eat-finetune`` or ``eat-hf``."""

    def detect(self, sd: Mapping[str, torch.Tensor]) -> bool:
        return detect_eat(sd)

    def convert(self, sd: Dict[str, torch.Tensor], model: nn.Module) -> Conversion:
        return Conversion(*map_eat(sd, model))

    def describe(self, sd, num_mel_bins: int = 128, meta: Optional[Mapping[str, str]] = None):
        return eat_spec(sd, meta, num_mel_bins=num_mel_bins)

    def label(self, sd: Mapping[str, torch.Tensor]) -> str:
        return eat_layout(sd) or self.name

"""Checkpoint saving and loading.

``save_checkpoint`` writes safetensors (weights) with the model name and resolved config in the
file's metadata. ``load_checkpoint`` reads this project's files and foreign formats, each through a
filter function picked by marker keys (the timm way), then loads strictly and returns a report:

- ``avmae``: this project's own keys (safetensors or a torch file holding a state dict);
- ``audiomae-pretrain``: the official AudioMAE pretraining ``.pth`` (``{'model': ...}``; encoder,
  ``decoder_*`` keys, ``mask_token``);
- ``audiomae-finetune``: the official fine-tuned ``.pth`` (``fc_norm``, ``head``, no ``norm``);
- ``timm-vit``: a timm ``VisionTransformer`` state dict of an AudioMAE encoder (hub ports).

Each layout is a ``CheckpointFormat`` in the registry ``CHECKPOINT_FORMATS`` (entry-point group
``avmae.checkpoint_formats``): AudioMAE's lives beside its presets (``avmae.models.audiomae_format``),
AST's and CAV-MAE's beside their models; a plugin adds its own with
``avmae.register_checkpoint_format`` or an entry point. Torch files are always read with
``weights_only=True``; the official files also pickle an ``argparse.Namespace``, which is allowed
as the only non-tensor class (it carries plain values, no code). Anything else is refused.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .checkpoint_error import CheckpointError
from .checkpoint_formats import (
    CheckpointFormat,
    Conversion,
    checkpoint_formats,
    find_format,
    register_format,
)
from .files import atomic_path, fsync_dir, give_umask_mode, to_json
from .registry import CHECKPOINT_FORMATS, register_checkpoint_format

_logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "LoadReport",
    "load_checkpoint",
    "save_checkpoint",
    "read_state_dict",
    "convert_state_dict",
    "register_format",
    "CheckpointFormat",
    "Conversion",
    "CHECKPOINT_FORMATS",
    "FORMATS",
    "checkpoint_formats",
    "to_audiomae_official",
    "write_safetensors",
    "unpickling_reason",
    "fsync_dir",
    "give_umask_mode",
    "group_keys",
]

PathLike = Union[str, os.PathLike]

# Globals allowed besides tensors when unpickling: plain-value containers only.
_HARMLESS_GLOBALS = {
    "argparse.Namespace",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "collections.OrderedDict",
}


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did."""

    path: str
    format: str
    loaded: int = 0
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)  # in the file, not used by design (e.g. a decoder)
    reinitialized: List[str] = field(default_factory=list)  # model keys left fresh by design (e.g. a new head)
    regenerated: List[str] = field(default_factory=list)  # fixed tables kept from the model (other grid)
    resized: List[str] = field(
        default_factory=list
    )  # audio positional tables of another input length, cut or continued

    def summary(self) -> str:
        """A few short lines: the file and format, then one line per kind of key, grouped by module
        (``decoder.blocks.* (32)``)."""
        lines = [f"{self.path}: format {self.format}, {self.loaded} tensors loaded"]
        for name in ("missing", "unexpected", "ignored", "reinitialized", "regenerated", "resized"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name} ({len(keys)}): {group_keys(keys)}")
        return "\n".join(lines)


def group_keys(keys: List[str], limit: int = 6) -> str:
    """``["decoder.blocks.0.x", "decoder.blocks.1.x", "head.weight"]`` -> ``"decoder.blocks.* (2), head.weight"``:
    keys grouped by their path up to the first block index (at most two names deep), ``limit`` groups shown."""
    groups: Dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        head: List[str] = []
        for part in parts[:2]:
            if part.isdigit():
                break
            head.append(part)
        prefix = ".".join(head) if len(head) < len(parts) else k
        name = prefix + ".*" if prefix != k else k
        groups[name] = groups.get(name, 0) + 1
    shown = [f"{g} ({n})" if n > 1 else g for g, n in list(groups.items())[:limit]]
    if len(groups) > limit:
        shown.append(f"... ({len(groups) - limit} more groups)")
    return ", ".join(shown)


# ---------------------------------------------------------------------------------------------
# reading


def unpickling_reason(exc: BaseException) -> Tuple[str, bool]:
    """(one-line reason, whether the file asks to import code) of torch's ``weights_only``
    refusal. torch's own text runs over several lines and suggests turning the safety off; this
    keeps only what the file holds."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it asks to import {found.group(1)}", True
    what = next((line.strip() for line in text.splitlines() if line.strip().startswith("Unsupported")), None)
    return (f"not a torch checkpoint: {what}" if what else "not a torch checkpoint"), False


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, also allowing the plain-value classes of
    ``_HARMLESS_GLOBALS`` (learnt from torch's refusals, so that the zip and the legacy formats
    are read the same way). Anything else is refused with a ``CheckpointError``."""
    allowed: List[Any] = []
    for _ in range(len(_HARMLESS_GLOBALS) + 1):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            reason, code = unpickling_reason(exc)
            name = reason.rpartition(" ")[2] if code else None
            obj = _resolve_global(name) if name in _HARMLESS_GLOBALS else None
            if obj is None or obj in allowed:
                if code:
                    raise CheckpointError(
                        f"{path}: refusing to unpickle it: {reason}; a checkpoint must hold only tensors and plain"
                        " values. Convert it to safetensors in a trusted environment."
                    ) from None
                raise CheckpointError(f"{path}: {reason}; the file is damaged or not a checkpoint") from None
            allowed.append(obj)
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first}); the file is damaged,"
                " truncated or not a checkpoint"
            ) from None
    raise CheckpointError(f"{path}: not a readable torch checkpoint")


def _torch_obj(path: Path) -> Any:
    """``_torch_load``; a file whose only refused globals are the config classes a fairseq
    checkpoint pickles (omegaconf, enums, Namespace) is read by ``avmae.formats.fairseq``'s
    restricted unpickler instead, which maps them to plain values and refuses anything else."""
    try:
        return _torch_load(path)
    except CheckpointError as exc:
        from .formats.fairseq import is_config_global, restricted_load

        found = re.search(r"asks to import ([\w.]+)", str(exc))
        if found is None or not is_config_global(found.group(1)):
            raise
        return restricted_load(path)


def _resolve_global(name: str) -> Any:
    import importlib

    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def read_state_dict(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read tensors from a safetensors or torch file. -> (flat state dict, metadata).

    Common containers are unwrapped: ``{'model': ...}``, ``{'state_dict': ...}``, ``{'module': ...}``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    meta: Dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({first}); it is damaged or truncated: copy or export it"
                " again"
            ) from None
        return sd, meta
    obj = _torch_obj(path)
    from .formats.fairseq import fairseq_state, is_fairseq_container

    if is_fairseq_container(obj):  # fairseq: ``_ema`` flattened, the config kept as JSON metadata
        sd, cfg = fairseq_state(obj, path)
        meta = {"fairseq_cfg": to_json(cfg, default=str)}
        labels = obj.get("label_dict")
        if isinstance(labels, Mapping) and labels:  # BEATs' fine-tuned files: {class index: label}
            meta["label_dict"] = to_json({str(k): v for k, v in labels.items()}, default=str)
        return sd, meta
    for key in ("model", "state_dict", "module", "model_state"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: no state dict of tensors found (top-level keys:"
            f" {list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__})"
        )
    return dict(obj), meta


# ---------------------------------------------------------------------------------------------
# formats (the protocol: avmae.checkpoint_formats)

FORMATS = CHECKPOINT_FORMATS  # the name this module had for it


def _resize_audio_table(model: nn.Module, key: str, table: torch.Tensor, own: torch.Tensor) -> Optional[torch.Tensor]:
    """``table`` resized to ``own``'s time rows when ``key`` is an audio modality's positional table
    (``modalities.<m>.pos_embed``) or the decoder's table of it (``decoder.pos_embed.<m>``) and
    only the number of time rows differs; else None."""
    parts = key.split(".")
    if parts[:1] == ["modalities"] and parts[2:] == ["pos_embed"]:
        name, learned = parts[1], None
    elif parts[:2] == ["decoder", "pos_embed"] and len(parts) == 3:
        name, learned = parts[2], False
    else:
        return None
    mods = getattr(model, "modalities", None)
    mod = mods[name] if mods is not None and name in mods else None
    if mod is None or not hasattr(mod, "resize_pos_table") or table.dim() != 3 or table.shape[-1] != own.shape[-1]:
        return None
    f = mod.input_shape[2] // mod.patch_size
    if table.shape[1] % f or own.shape[1] % f:
        return None
    return mod.resize_pos_table(table.to(own.dtype), own.shape[1] // f, learned=learned)


def _strip_prefix(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _single_key(model: nn.Module) -> str:
    mods = getattr(model, "modalities", None)
    if mods is None or len(mods) != 1:
        raise CheckpointError(f"an AudioMAE checkpoint needs a single-modality model, got {type(model).__name__}")
    return next(iter(mods))


def _is_mae(model: nn.Module) -> bool:
    return hasattr(model, "decoder")


_HEAD_PREFIXES = ("head.", "mlp_head.")


@register_checkpoint_format("avmae")
class AvmaeFormat(CheckpointFormat):
    """This project's own keys (``modalities.*``). Tried first: its keys are unambiguous. Such a
    file names its model in its metadata or config (``avmae.hub``), so ``describe`` says nothing."""

    priority = 100

    def detect(self, sd):
        return any(k.startswith("modalities.") for k in sd)

    def convert(self, sd, model):
        """A pretraining file (it has a decoder) loaded into a model without one keeps what the
        model has: the decoder and other pretraining-only parts are ignored and the classifier's
        own head and pooling norm start fresh."""
        if _is_mae(model) or not any(k.startswith("decoder.") for k in sd):
            return Conversion(dict(sd), [], [])
        own = set(model.state_dict())
        ignored = [k for k in sd if k not in own]
        out = {k: v for k, v in sd.items() if k in own}
        fresh = [k for k in own if k not in out and k.startswith(_HEAD_PREFIXES + ("fc_norm.",))]
        return Conversion(out, ignored, fresh)


def convert_state_dict(
    sd: Dict[str, torch.Tensor], model: nn.Module
) -> Tuple[str, Dict[str, torch.Tensor], List[str], List[str]]:
    """Detect the format of ``sd`` and map it to ``model``'s keys. -> (format, sd, ignored, fresh)."""
    sd = _strip_prefix(sd, "module.")
    fmt = find_format(sd)
    if fmt is None:
        raise CheckpointError(
            f"unrecognised checkpoint layout (first keys: {list(sd)[:5]}); known formats:"
            f" {', '.join(CHECKPOINT_FORMATS.names())}"
        )
    mapped, ignored, fresh = fmt.convert(sd, model)
    return fmt.label(sd), mapped, ignored, fresh


# ---------------------------------------------------------------------------------------------
# loading


def load_checkpoint(
    model: nn.Module,
    path: PathLike,
    *,
    strict: bool = True,
    reset_head: bool = False,
    state_dict: Optional[Mapping[str, torch.Tensor]] = None,
) -> LoadReport:
    """Load weights from ``path`` into ``model`` and report what was done.

    Args:
        model: an avmae model.
        path: a safetensors or torch file (this project's, official AudioMAE, timm-format encoder,
            or any registered format).
        strict: raise on missing or unexpected keys (keys that a format leaves out or ignores by
            design, such as a decoder when fine-tuning, are reported instead).
        reset_head: drop a classifier head whose shape does not fit (a new label set); otherwise a
            shape mismatch is an error.
        state_dict: the tensors of ``path`` when the caller has read them already
            (``read_state_dict``); the file is then not read again.
    """
    path = Path(path)
    sd = dict(state_dict) if state_dict is not None else read_state_dict(path)[0]
    try:
        fmt, mapped, ignored, fresh = convert_state_dict(sd, model)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    report = LoadReport(path=str(path), format=fmt, ignored=sorted(ignored))
    own = model.state_dict()
    params = dict(model.named_parameters())
    for k in list(mapped):
        if k not in own or mapped[k].shape == own[k].shape:
            continue
        p = params.get(k)
        resized = _resize_audio_table(model, k, mapped[k], own[k])
        if resized is not None:
            # a table of another input length: cut or continued on the model's grid (positions kept)
            mapped[k] = resized
            report.resized.append(k)
        elif "pos_embed" in k.split(".") and p is not None and not p.requires_grad:
            # a fixed sin-cos table of another grid size: keep the model's, made by the same formula
            report.regenerated.append(k)
            del mapped[k]
        elif reset_head and k.startswith(_HEAD_PREFIXES):
            report.reinitialized.append(k)
            del mapped[k]
        else:
            raise CheckpointError(
                f"{path}: tensor {k!r} has shape {tuple(mapped[k].shape)} in the checkpoint but {tuple(own[k].shape)} "
                "in the model (different size or input length?)"
            )
    missing = sorted(set(own) - set(mapped) - set(report.regenerated) - set(report.reinitialized))
    report.reinitialized += [k for k in missing if k in fresh]
    report.missing = [k for k in missing if k not in fresh]
    report.unexpected = sorted(set(mapped) - set(own))
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(
            f"{path} ({fmt}) does not fit {type(model).__name__}: "
            f"missing {report.missing[:8]}{'...' if len(report.missing) > 8 else ''}, "
            f"unexpected {report.unexpected[:8]}{'...' if len(report.unexpected) > 8 else ''}"
        )
    to_load = {k: v for k, v in mapped.items() if k in own}
    model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    if (
        report.reinitialized
        and hasattr(model, "reset_head")
        and any(k.startswith(_HEAD_PREFIXES) for k in report.reinitialized)
    ):
        model.reset_head()
    _logger.info("%s", report.summary())
    return report


# ---------------------------------------------------------------------------------------------
# saving


def save_checkpoint(
    model: nn.Module,
    path: PathLike,
    *,
    model_name: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``model``'s weights to safetensors (atomically: temp file, then rename).

    The file's metadata describes the model: ``model`` (its registered name: ``model_name``, else
    the one ``avmae.create_model`` recorded in ``model.avmae_spec``), ``model_params`` (JSON: the
    factory params of that call) and ``config`` (JSON: the run config, when given).
    """
    path = Path(path)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "avmae"}
    spec = getattr(model, "avmae_spec", None)
    if isinstance(spec, Mapping) and (model_name is None or model_name == spec.get("name")):
        model_name = spec.get("name")
        try:
            meta["model_params"] = to_json(spec.get("params") or {})
        except (TypeError, ValueError) as exc:  # a param JSON cannot hold: the config must describe the model
            _logger.warning("%s: the model's params are not JSON (%s); the file names its model only", path, exc)
    if model_name:
        meta["model"] = model_name
    if config is not None:
        meta["config"] = to_json(config, default=str)
    return write_safetensors(sd, path, metadata=meta)


def write_safetensors(
    tensors: Mapping[str, torch.Tensor], path: PathLike, *, metadata: Optional[Mapping[str, str]] = None
) -> Path:
    """Write ``tensors`` to a safetensors file, atomically (temp file, fsync, rename), with the
    mode the process umask gives every other file (the writer alone would give 0600)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata=dict(metadata) if metadata else None,
        )
    return path


# ---------------------------------------------------------------------------------------------
# export


def to_audiomae_official(model: nn.Module) -> Dict[str, torch.Tensor]:
    """avmae AudioMAE weights -> the official key layout (pretrain or fine-tuning model).

    The result is also a timm ``VisionTransformer`` state dict for the encoder part
    (``cls_token``, ``pos_embed`` with its cls row, ``patch_embed``, ``blocks``, ``norm``/``fc_norm``, ``head``).
    """
    key = _single_key(model)
    if getattr(model, "pre_norm", None) is not None:
        raise CheckpointError("post-LN blocks with a pre-norm (EAT) have no place in AudioMAE's layout")
    sd = model.state_dict()
    if "blocks.0.attn.qkv.weight" not in sd:
        raise CheckpointError(f"{type(model).__name__} is not an AudioMAE-style ViT (no fused qkv blocks)")
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "cls_pos_embed" or k.startswith(
            "objectives."
        ):  # an objective's own state (a teacher) has no official place
            continue
        if k == f"modalities.{key}.pos_embed":
            out["pos_embed"] = torch.cat([sd["cls_pos_embed"], v], dim=1)
        elif k.startswith(f"modalities.{key}."):
            out[k[len(f"modalities.{key}.") :]] = v
        elif k == "decoder.mask_token":
            out["mask_token"] = v
        elif k == "decoder.cls_pos_embed":
            continue
        elif k == f"decoder.pos_embed.{key}":
            out["decoder_pos_embed"] = torch.cat([sd["decoder.cls_pos_embed"], v], dim=1)
        elif k.startswith("decoder."):
            rest = k[len("decoder.") :]
            head, _, tail = rest.partition(".")
            if head == "pred":
                tail = tail.partition(".")[2]
            out[
                {"embed": "decoder_embed", "blocks": "decoder_blocks", "norm": "decoder_norm", "pred": "decoder_pred"}[
                    head
                ]
                + "."
                + tail
            ] = v
        else:
            out[k] = v
    return out

"""Model params read from a file, checked against the weights they claim to describe before a model is built.

A checkpoint's model description (safetensors metadata ``model_params``, a run's ``config.yaml``,
a ``save_pretrained`` folder's ``config.json``) is text anyone can edit: ``{"embed_dim": 65536,
"depth": 48}`` beside a tiny model's weights describes 2.5 T parameters, and building that model
first ends in an allocation failure, swapping or the OOM killer. So (``avmae.hub.load_pretrained``,
the fine-tuning planner):

1. the model is built on the meta device (``build_on_meta``: shapes only, no memory, no init);
   a param named like a size (``embed_dim``, ``depth``, ``num_heads``, ``target_length``, ...)
   that is not a whole number >= 0, or params its factory refuses, are one ``CheckpointError``;
2. the weights, as meta tensors of their shapes (``stand_ins``: from the tensors read, or from the
   safetensors header alone), are mapped onto it as ``load_checkpoint`` maps them, and
   ``check_fits`` requires
   - every tensor of the model that the weights hold to have the weights' shape, unless
     ``load_checkpoint`` adapts it (an audio positional table of another input length, a fixed
     sin-cos table of another grid): else one ``CheckpointError`` line naming the file, the tensor
     and both shapes;
   - the model's tensors that no weights stand behind (missing from the file, left fresh, adapted)
     to hold at most ``MAX_UNBACKED_ELEMENTS`` elements (2**28: 1 GiB of float32). A new
     classifier head, or the decoder an encoder-only file lacks (26 M for ViT-B's), pass; params
     describing a model mostly absent from the file are refused;
3. only then is the model built for real.

Missing and unexpected keys within that limit are left to ``load_checkpoint``, which reports
them (strictly or not) after building.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, _resize_audio_table, convert_state_dict

_logger = logging.getLogger(__name__)

__all__ = [
    "MAX_UNBACKED_ELEMENTS",
    "size_problem",
    "stand_ins",
    "header_stand_ins",
    "build_on_meta",
    "check_fits",
    "check_described",
]

MAX_UNBACKED_ELEMENTS = 1 << 28  # elements of a model's tensors no weights stand behind (1 GiB of float32)

PathLike = Union[str, os.PathLike]


def describe_call(name: str, params: Mapping[str, Any]) -> str:
    """``name(k=v, ...)``, the params sorted."""
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in sorted(params.items()))})"


def stand_ins(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Meta tensors of the shapes and dtypes of ``state_dict`` (no memory)."""
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state_dict.items()}


def header_stand_ins(weights: PathLike) -> Dict[str, torch.Tensor]:
    """``stand_ins`` of a weights file: a safetensors file from its header alone (no tensor
    read); any other file through ``read_state_dict``."""
    weights = Path(weights)
    if weights.suffix != ".safetensors":
        from .checkpoint import read_state_dict

        return stand_ins(read_state_dict(weights)[0])
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from None
    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    return {k: torch.empty(s, dtype=dtypes.get(d, torch.float32), device="meta") for k, (s, d) in shapes.items()}


# params named like a size: a whole number >= 0 (or a list of them), None where a factory takes it
_SIZE_NAME = re.compile(r"(^|_)(dim|depth|heads|length|size|bins|frames|classes)$|^num_")


def size_problem(params: Mapping[str, Any], prefix: str = "") -> Optional[str]:
    """The first param (nested mappings too: ``decoder_params.depth``) named like a size whose
    value is not a whole number >= 0, as ``"name=value"``; None if there is none."""
    for k, v in params.items():
        if isinstance(v, Mapping):
            found = size_problem(v, f"{prefix}{k}.")
            if found:
                return found
        elif v is not None and _SIZE_NAME.search(str(k)):
            values = v if isinstance(v, (list, tuple)) else [v]
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in values):
                return f"{prefix}{k}={v!r}"
    return None


def build_on_meta(
    weights: PathLike, name: str, params: Mapping[str, Any], *, where: str = "", type_errors_of: Tuple[str, ...] = ()
) -> nn.Module:
    """``avmae.create_model(name, **params)`` on the meta device -> the model (shapes, no memory).

    A factory that refuses the params (wrong types, negative or inconsistent sizes) is one
    ``CheckpointError`` naming ``weights`` and ``where`` the params came from; except a
    ``TypeError`` naming every param of ``type_errors_of``, re-raised as it is (the caller tries
    without those params)."""
    import avmae

    bad = size_problem(params)
    if bad:
        raise CheckpointError(
            f"{weights}: {bad} in {describe_call(name, params)}{_from(where)}: a size must be a whole number >= 0"
        )
    try:
        with torch.device("meta"):
            return avmae.create_model(name, **params)
    except TypeError as exc:
        if type_errors_of and all(k in str(exc) for k in type_errors_of):
            raise
        reason = exc
    except (ValueError, KeyError, AssertionError, RuntimeError, NotImplementedError, OverflowError) as exc:
        reason = exc
    first = (str(reason).strip().splitlines() or [type(reason).__name__])[0]
    raise CheckpointError(
        f"{weights}: cannot build {describe_call(name, params)}{_from(where)}: {type(reason).__name__}: {first}"
    ) from reason


def _from(where: str) -> str:
    return f" (params from {where})" if where else ""


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def check_fits(
    weights: PathLike,
    model: nn.Module,
    weight_stand_ins: Mapping[str, torch.Tensor],
    *,
    call: str,
    where: str = "",
    limit: int = MAX_UNBACKED_ELEMENTS,
) -> None:
    """Raise ``CheckpointError`` unless the weights (``weight_stand_ins``) fit ``model`` (built
    on the meta device from params read from a file; see the module doc). ``call``: how the model
    was built (``name(params)``), ``where``: where the params came from, both for the message."""
    own = {k: t for k, t in model.state_dict().items()}
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))  # non-persistent buffers too: they take memory
    total = sum(t.numel() for t in tensors.values())
    try:
        with torch.device("meta"):
            _, mapped, _, _ = convert_state_dict(dict(weight_stand_ins), model)
    except CheckpointError as exc:
        raise CheckpointError(f"{weights}: {exc}") from None
    except Exception as exc:  # a format filter that needs values: bound the sizes alone
        _logger.debug("%s: key mapping on the meta device failed (%s); comparing sizes only", weights, exc)
        held = sum(t.numel() for t in weight_stand_ins.values())
        if total > held + limit:
            raise CheckpointError(
                f"{weights}: {call}{_from(where)} has {total:,} elements, the weights {held:,}: more than"
                f" {limit:,} elements without weights (the limit); the params do not describe these weights"
            ) from None
        return
    backed = 0
    for k, t in own.items():
        v = mapped.get(k)
        if v is None:
            continue
        if tuple(v.shape) == tuple(t.shape):
            backed += t.numel()
            continue
        p = tensors.get(k)
        with torch.device("meta"):
            adapted = _resize_audio_table(model, k, v, t) is not None
        fixed_table = "pos_embed" in k.split(".") and p is not None and not p.requires_grad
        if not (adapted or fixed_table):  # load_checkpoint would refuse it too, after building
            raise CheckpointError(
                f"{weights}: tensor {k!r} has shape {tuple(v.shape)} in the weights but {tuple(t.shape)} in"
                f" {call}{_from(where)}; the params do not describe these weights"
            )
    unbacked = total - backed
    if unbacked > limit:
        fresh = [k for k, t in tensors.items() if k not in mapped or tuple(mapped[k].shape) != tuple(t.shape)]
        raise CheckpointError(
            f"{weights}: {call}{_from(where)} would hold {unbacked:,} elements the weights do not provide"
            f" ({', '.join(fresh[:4])}{', ...' if len(fresh) > 4 else ''}), above the limit of {limit:,}"
            " (avmae.weights_fit.MAX_UNBACKED_ELEMENTS); the params do not describe these weights"
        )


def check_described(weights: PathLike, name: str, params: Mapping[str, Any], *, where: str = "") -> None:
    """``build_on_meta`` + ``check_fits`` for a model described by a file (``name``, ``params``)
    against the weights of ``weights`` (shapes from the safetensors header)."""
    model = build_on_meta(weights, name, params, where=where)
    check_fits(weights, model, header_stand_ins(weights), call=describe_call(name, params), where=where)

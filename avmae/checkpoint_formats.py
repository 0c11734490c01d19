"""Checkpoint layouts as registry entries: the ``CheckpointFormat`` protocol, the ``Conversion`` it
returns, and the order the loaders try the registered formats in (``checkpoint_formats``).

The registry is ``avmae.registry.CHECKPOINT_FORMATS`` (entry-point group
``avmae.checkpoint_formats``); the loaders are ``avmae.checkpoint.load_checkpoint`` (convert) and
``avmae.hub.load_pretrained`` (describe, then convert). avmae's own layout is in
``avmae.checkpoint``, AudioMAE's in ``avmae.models.audiomae_format``, AST's and CAV-MAE's beside
their models.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from .registry import CHECKPOINT_FORMATS

__all__ = ["Conversion", "CheckpointFormat", "register_format", "checkpoint_formats", "find_format"]


class Conversion(NamedTuple):
    """What ``CheckpointFormat.convert`` returns.

    state_dict: the file's tensors under the model's keys (shapes are checked by the loader).
    ignored: keys of the file dropped by design (a decoder when the model has none); reported.
    fresh: keys of the model the file has no tensor for by design (a new head); left at their init.
    """

    state_dict: Dict[str, torch.Tensor]
    ignored: List[str]
    fresh: List[str]


class CheckpointFormat:
    """A checkpoint layout the loaders read (``load_checkpoint``, ``avmae.hub.load_pretrained``).

    Register a subclass (an instance is made for each use) or an instance, with
    ``@avmae.register_checkpoint_format("name")`` or in the entry-point group
    ``avmae.checkpoint_formats``::

        @avmae.register_checkpoint_format("my-layout")
        class MyLayout(CheckpointFormat):
            def detect(self, sd):
                return "encoder.my_marker" in sd
            def convert(self, sd, model):
                out = {k.replace("encoder.", "", 1): v for k, v in sd.items() if k.startswith("encoder.")}
                return Conversion(out, ignored=[k for k in sd if not k.startswith("encoder.")], fresh=[])
            def describe(self, sd, num_mel_bins=128):
                if not self.detect(sd):
                    return None
                return "audiomae_vit_base", {"num_mel_bins": num_mel_bins}

    ``sd`` is always a flat ``{key: Tensor}`` read with ``weights_only=True``, its ``module.``
    prefix already stripped. The methods:

    - ``detect(sd) -> bool`` (required): the file has this layout, decided by marker keys. It
      must not claim another format's files; formats are tried by ``priority``, highest first
      (ties: registration order; avmae's own is 100, AudioMAE's generic ViT layout -100).
    - ``convert(sd, model) -> Conversion`` (required): the tensors under ``model``'s keys, what
      was dropped (``ignored``) and what the model keeps fresh (``fresh``). Raise
      ``CheckpointError`` when ``model`` cannot take this layout.
    - ``describe(sd, num_mel_bins=128) -> (model name, params) | None``: the ``create_model`` call
      that builds the model the file holds, read from the tensors (shapes, key counts), for files
      that do not name their model; None when the file is not this layout or the format cannot
      tell (the caller then names the model). Default: None.
    - ``label(sd) -> str``: the format name reported (AudioMAE's entry says ``audiomae-pretrain``,
      ``audiomae-finetune`` or ``timm-vit``). Default: the registered name.
    """

    name: str = ""
    priority: int = 0

    def detect(self, sd: Mapping[str, torch.Tensor]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def convert(self, sd: Dict[str, torch.Tensor], model: nn.Module) -> Conversion:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, sd: Mapping[str, torch.Tensor], num_mel_bins: int = 128) -> Optional[Tuple[str, Dict[str, Any]]]:
        return None

    def label(self, sd: Mapping[str, torch.Tensor]) -> str:
        return self.name


FilterFn = Callable[[Dict[str, torch.Tensor], nn.Module], Tuple[Dict[str, torch.Tensor], List[str], List[str]]]


class _FunctionFormat(CheckpointFormat):
    """A format given as two functions (``register_format``)."""

    def __init__(self, detect: Callable[[Mapping[str, torch.Tensor]], bool], filter_fn: FilterFn) -> None:
        self._detect, self._filter = detect, filter_fn

    def detect(self, sd):
        return bool(self._detect(sd))

    def convert(self, sd, model):
        return Conversion(*self._filter(sd, model))


def register_format(name: str, detect: Callable[[Mapping[str, torch.Tensor]], bool], filter_fn: FilterFn) -> None:
    """Add a checkpoint format given as functions: ``detect(sd)`` by marker keys,
    ``filter_fn(sd, model) -> (mapped, ignored, fresh)`` (see ``CheckpointFormat``)."""
    CHECKPOINT_FORMATS.add(name, _FunctionFormat(detect, filter_fn))


def checkpoint_formats() -> List[CheckpointFormat]:
    """The registered formats (plugins included), each an instance with its ``name`` set, in the
    order they are tried: ``priority`` highest first, then registration order."""
    out = []
    for name, entry in CHECKPOINT_FORMATS.items():
        fmt = entry() if isinstance(entry, type) else entry
        if not isinstance(fmt, CheckpointFormat):
            fmt = _Adapted(fmt)
        fmt.name = name
        out.append(fmt)
    return sorted(out, key=lambda f: -int(getattr(f, "priority", 0)))


class _Adapted(CheckpointFormat):
    """An object with ``detect`` and ``convert`` only (duck-typed, not a subclass)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.priority = int(getattr(inner, "priority", 0))

    def detect(self, sd):
        return bool(self._inner.detect(sd))

    def convert(self, sd, model):
        return Conversion(*self._inner.convert(sd, model))

    def describe(self, sd, num_mel_bins=128):
        describe = getattr(self._inner, "describe", None)
        return describe(sd, num_mel_bins) if callable(describe) else None


def find_format(sd: Mapping[str, torch.Tensor]) -> Optional[CheckpointFormat]:
    """The first format (in ``checkpoint_formats`` order) that detects ``sd``, else None."""
    return next((fmt for fmt in checkpoint_formats() if fmt.detect(sd)), None)

"""What a model takes as input, read off the model itself: its audio modality, the input size,
the lengths it accepts, and the audio frontend it was trained with (``frontend_for``). Public
through ``avmae.hub``."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch.nn as nn

__all__ = ["audio_modality", "length_step", "input_size", "frontend_for"]


def audio_modality(model: nn.Module, key: str = "audio"):
    """The model's audio modality (raises if it has none)."""
    mods = getattr(model, "modalities", None)
    if mods is None or key not in mods:
        raise ValueError(f"{type(model).__name__} has no {key!r} modality (has {list(mods or [])})")
    return mods[key]


def length_step(model: nn.Module) -> Optional[int]:
    """Frames an input length must be a multiple of when ``model`` takes audio inputs of other
    lengths than its own (an AudioMAE-style single-modality encoder: its patch size; see
    ``avmae.modalities.audio``); None when it takes only its own (AST, audio-visual models) or its
    short inputs are padded to its own length by rule (``model.pad_to_target``: EAT). A
    pretraining model's decoder still needs its own length; its encoder does not."""
    mods = getattr(model, "modalities", None)
    if mods is None or list(mods) != ["audio"] or not hasattr(mods["audio"], "accepts_length"):
        return None
    if getattr(model, "pad_to_target", False):  # its inputs are padded to its length (EAT), not cut to theirs
        return None
    return int(mods["audio"].patch_size)


def input_size(model: nn.Module) -> Tuple[int, int]:
    """(target_length, num_mel_bins) the model takes."""
    mods = getattr(model, "modalities", None)
    if mods is not None:
        if "audio" not in mods:
            raise ValueError(f"{type(model).__name__} has no audio modality (has {list(mods)})")
        _, t, f = mods["audio"].input_shape
        return int(t), int(f)
    for owner in (model, getattr(model, "encoder", None)):
        t, f = getattr(owner, "target_length", None), getattr(owner, "num_mel_bins", None)
        if t and f:
            return int(t), int(f)
    raise ValueError(f"cannot tell the input size of {type(model).__name__}; pass a frontend with target_length")


def frontend_for(
    model: nn.Module, config: Optional[Mapping[str, Any]] = None, *, norm: Optional[str] = None, **overrides: Any
):
    """The ``AudioFrontend`` a model was trained with.

    Input size from the model (its audio modality); sample rate and normalisation from the run
    config's ``data`` section (``mean``/``std``, else the stats named by ``norm``), else AudioSet's.
    ``norm=`` names other stats (a key of ``avmae.data.NORM_STATS``); ``overrides`` (``mean=``,
    ``std=``, ``sample_rate=``, ``target_length=``) win over everything. ``data.fbank_style``
    picks another fbank (``"beats"``) and ``data.pad_to_length: false`` keeps each clip's own
    frames (``target_length=None``), as a foreign checkpoint's description may say.
    """
    from .data import NORM_STATS, AudioFrontend

    target_length, num_mel_bins = input_size(model)
    if config is None:
        config = getattr(model, "avmae_config", None)  # set by from_pretrained
    data = (config or {}).get("data") if isinstance((config or {}).get("data"), Mapping) else {}
    mean, std = NORM_STATS["audioset"]
    if norm is not None:
        if norm not in NORM_STATS:
            raise KeyError(f"unknown normalisation stats {norm!r}; known: {sorted(NORM_STATS)}")
        mean, std = NORM_STATS[norm]
    elif data.get("mean") is not None and data.get("std") is not None:
        mean, std = float(data["mean"]), float(data["std"])
    elif data.get("norm") in NORM_STATS:
        mean, std = NORM_STATS[data["norm"]]
    kw: Dict[str, Any] = dict(
        sample_rate=int(data.get("sample_rate", 16000)),
        num_mel_bins=int(num_mel_bins),
        target_length=int(target_length),
        mean=mean,
        std=std,
    )
    if data.get("fbank_style"):  # another fbank than AudioMAE's (BEATs')
        kw["style"] = str(data["fbank_style"])
    if data.get("pad_to_length") is False:  # the model takes each clip's own frames (BEATs)
        kw["target_length"] = None
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return AudioFrontend(**kw)


# ------------------------------------------------------------------------------ export

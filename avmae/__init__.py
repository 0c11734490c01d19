"""avmae: masked-autoencoder self-supervised learning on audio and audio-visual data.

The extension surface: one decorator per registry (``avmae.registry``), each usable bare or with
a name, each also reachable by an entry point of its group (``avmae.<group>``) from an installed
package:

==============================  ============================================================
``register_model``              a factory ``**params -> nn.Module`` (``create_model(name)``)
``register_modality``           an ``avmae.modalities.Modality`` subclass
``register_decoder``            an ``avmae.decoders.Decoder`` subclass
``register_masker``             an ``avmae.masking.Masker`` subclass (``masking.maskers``)
``register_objective``          an ``avmae.objectives.Objective`` subclass (``objectives``)
``register_task``               an ``avmae.train.Task`` subclass (``task: <name>``)
``register_dataset``            an ``avmae.train.DatasetBuilder`` (``dataset: <name>``)
``register_checkpoint_format``  an ``avmae.checkpoint.CheckpointFormat`` (a layout the loaders read)
==============================  ============================================================
"""

from __future__ import annotations

from typing import Any, List

from . import _openmp  # noqa: F401  (first: OpenMP's wait policy, read when torch loads it)

# isort: split
import torch.nn as nn

from . import decoders as _decoders  # noqa: F401  (registers built-in decoders)
from . import formats as _formats  # noqa: F401  (registers the released layouts of other code: EAT, BEATs)
from . import modalities as _modalities  # noqa: F401  (registers built-in modalities)
from . import models as _models  # noqa: F401  (registers presets)
from .checkpoint import load_checkpoint, save_checkpoint
from .registry import (
    DECODERS,
    MODALITIES,
    MODELS,
    PluginError,
    Registry,
    RegistryError,
    register_checkpoint_format,
    register_dataset,
    register_decoder,
    register_masker,
    register_modality,
    register_model,
    register_objective,
    register_task,
)
from .structures import MAEOutput

__version__ = "0.1.0"

__all__ = [
    "create_model",
    "list_models",
    "list_decoders",
    "list_modalities",
    "get_decoder",
    "get_modality",
    "register_model",
    "register_decoder",
    "register_modality",
    "register_masker",
    "register_objective",
    "register_task",
    "register_dataset",
    "register_checkpoint_format",
    "load_checkpoint",
    "save_checkpoint",
    "MAEOutput",
    "Registry",
    "RegistryError",
    "PluginError",
]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model by name, e.g. ``create_model("audiomae_vit_base", decoder="global")``.

    The call is recorded on the model as ``model.avmae_spec = {"name": ..., "params": ...}``;
    ``save_checkpoint`` stores it with the weights, so ``avmae.hub.load_pretrained`` rebuilds the
    same model (plugins included) from the file alone."""
    model = MODELS.get(name)(**overrides)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model factory {name!r} ({MODELS.source(name)}) returned {type(model).__name__}, not an nn.Module"
        )
    model.avmae_spec = {"name": name, "params": dict(overrides)}
    return model


def list_models(pattern: str = "") -> List[str]:
    """Sorted registered model names, optionally filtered by an fnmatch pattern."""
    return MODELS.names(pattern)


def list_decoders(pattern: str = "") -> List[str]:
    return DECODERS.names(pattern)


def list_modalities(pattern: str = "") -> List[str]:
    return MODALITIES.names(pattern)


def get_decoder(name: str):
    return DECODERS.get(name)


def get_modality(name: str):
    return MODALITIES.get(name)

"""The public place for loading and sharing models.

Shareable model folders in the Hugging Face layout live here: ``save_pretrained(model, dir,
config=, metrics=)`` writes ``config.json``, ``model.safetensors`` and a ``README.md`` model card;
``from_pretrained(dir)`` loads them.

Re-exported from the modules that hold them:

- ``avmae.pretrained``: ``load_pretrained(path) -> (model, report)`` rebuilds a model from a
  checkpoint alone (this project's, or a foreign one through the registered checkpoint formats),
  ``describe_checkpoint``, ``checkpoint_config``, ``register_spec_detector``.
- ``avmae.model_inputs``: ``frontend_for`` (the audio frontend a checkpoint was trained with),
  ``input_size``, ``length_step``, ``audio_modality``.
- ``avmae.timm_export``: ``to_timm`` (an AudioMAE-style encoder as a plain timm
  ``VisionTransformer`` state dict), ``timm_kwargs``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

from .checkpoint import CheckpointError
from .files import to_json, write_json
from .model_inputs import audio_modality, frontend_for, input_size, length_step
from .pretrained import (
    SPEC_DETECTORS,
    PretrainedReport,
    checkpoint_config,
    describe_checkpoint,
    load_pretrained,
    register_spec_detector,
)
from .run_folder import CONFIG_FILE, HF_TORCH_WEIGHTS, PRETRAINED_CONFIG, WEIGHTS_FILE, resolve_weights
from .timm_export import timm_kwargs, to_timm

_logger = logging.getLogger(__name__)

__all__ = [
    "PretrainedReport",
    "load_pretrained",
    "resolve_weights",
    "describe_checkpoint",
    "checkpoint_config",
    "register_spec_detector",
    "SPEC_DETECTORS",
    "frontend_for",
    "audio_modality",
    "input_size",
    "length_step",
    "timm_kwargs",
    "to_timm",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "save_pretrained",
    "from_pretrained",
    "model_card",
]

PathLike = Union[str, os.PathLike]

MODEL_CARD = "README.md"


def _plain_config(config: Any) -> Optional[Dict[str, Any]]:
    """A run config (``avmae.config.Config`` or a mapping) as a plain dict."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        return json.loads(to_json(dict(config), default=str))
    from .config import Config, to_dict

    if isinstance(config, Config):
        return to_dict(config)
    raise TypeError(f"config must be an avmae Config or a mapping, got {type(config).__name__}")


def save_pretrained(
    model: nn.Module,
    directory: PathLike,
    *,
    config: Any = None,
    metrics: Optional[Mapping[str, Any]] = None,
    model_name: Optional[str] = None,
    model_params: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a shareable model folder (the Hugging Face layout) -> the folder::

        <directory>/config.json          model name and factory params, input frontend, metrics
        <directory>/model.safetensors    the weights (``avmae.load_checkpoint`` reads them alone too)
        <directory>/README.md            a model card: how to load it, the input, metrics, training config

    ``model_name`` / ``model_params``: the ``create_model`` call (default: ``model.avmae_spec``,
    which ``avmae.create_model`` records). ``config``: the run config it was trained with (its
    ``data`` section gives the frontend's statistics; AudioSet's otherwise). ``metrics``: plain
    numbers for the card, e.g. ``{"eval/acc": 0.93}``.
    """
    from . import __version__
    from .checkpoint import save_checkpoint

    spec = getattr(model, "avmae_spec", None) or {}
    name = model_name or spec.get("name")
    if not name:
        raise ValueError(
            "save_pretrained: the model was not built by avmae.create_model; pass model_name= and model_params="
        )
    params = dict(
        model_params if model_params is not None else (spec.get("params") or {}) if spec.get("name") == name else {}
    )
    cfg = _plain_config(config)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out / WEIGHTS_FILE, model_name=name, config=cfg)
    info: Dict[str, Any] = {"avmae_version": __version__, "model_name": name, "model_params": params}
    try:
        fe = frontend_for(model, cfg)
        info["frontend"] = {
            "sample_rate": fe.sample_rate,
            "num_mel_bins": fe.num_mel_bins,
            "target_length": fe.target_length,
            "mean": fe.mean,
            "std": fe.std,
        }
    except ValueError:  # no audio input
        pass
    info["metrics"] = dict(metrics or {})
    if cfg is not None:
        info["training_config"] = cfg
    write_json(out / PRETRAINED_CONFIG, info, default=str)
    (out / MODEL_CARD).write_text(model_card(info), encoding="utf-8")
    _logger.info("wrote %s (%s)", out, name)
    return out


def model_card(info: Mapping[str, Any]) -> str:
    """The README.md of a ``save_pretrained`` folder, from its ``config.json`` contents."""
    import yaml

    fe = info.get("frontend") or {}
    lines = [
        "---",
        "library_name: avmae",
        "tags: [audio, masked-autoencoder, avmae]",
        "---",
        f"# {info['model_name']}",
        "",
        f"An avmae model (`{info['model_name']}`), saved with avmae {info.get('avmae_version', '')}.",
        "",
        "```python",
        "from avmae.hub import from_pretrained, frontend_for",
        'model = from_pretrained("path/to/this/folder")      # nn.Module in eval mode',
        "fbank = frontend_for(model)(waveform)                # waveform [1, N] -> [1, T, F], as in training",
        "```",
        "",
    ]
    if fe:
        lines += [
            "## Input",
            "",
            (
                f"Log-mel fbank (Kaldi, {fe.get('num_mel_bins')} mel bins, 10 ms frames) of {fe.get('sample_rate')} Hz"
                " mono audio,"
            ),
            (
                f"{fe.get('target_length')} frames, normalised as (x - mean) / (2 * std) with mean"
                f" {fe.get('mean'):.6g}, std {fe.get('std'):.6g}."
            ),
            "",
        ]
    metrics = info.get("metrics") or {}
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines.append("")
    lines += [
        "## Model",
        "",
        "```yaml",
        yaml.safe_dump(
            {"name": info["model_name"], "params": info.get("model_params") or {}}, sort_keys=False
        ).rstrip(),
        "```",
        "",
    ]
    if info.get("training_config"):
        lines += [
            "## Training config",
            "",
            "```yaml",
            yaml.safe_dump(info["training_config"], sort_keys=False).rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def from_pretrained(
    directory: PathLike, *, map_location: Union[str, torch.device, None] = None, **overrides: Any
) -> nn.Module:
    """Load a ``save_pretrained`` folder -> the model in eval mode, weights loaded strictly.

    ``model.avmae_config`` holds the training config (at least its frontend's ``data`` section),
    so ``frontend_for(model)`` gives the frontend it was trained with. ``overrides`` go to
    ``create_model`` (e.g. ``target_length=``, as ``load_pretrained``)."""
    folder = Path(directory)
    cfg_path = folder / PRETRAINED_CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{folder}: no {PRETRAINED_CONFIG}; a folder written by avmae.hub.save_pretrained holds one (for other"
            " files use load_pretrained)"
        )
    try:
        info = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or not info.get("model_name"):
        if (folder / WEIGHTS_FILE).is_file() or (folder / HF_TORCH_WEIGHTS).is_file():
            # another project's folder (an HF port): its weights describe it
            return load_pretrained(folder, map_location=map_location, **overrides)[0]
        raise CheckpointError(f"{cfg_path}: names no model_name")
    if not isinstance(info["model_name"], str):
        raise CheckpointError(f"{cfg_path}: model_name must be a string, got {info['model_name']!r}")
    if not isinstance(info.get("model_params") or {}, dict):
        raise CheckpointError(f"{cfg_path}: model_params must be a mapping, got {info['model_params']!r}")
    weights = folder / WEIGHTS_FILE
    described = describe_checkpoint(weights)
    if (
        described.source == "metadata"
        and described.model_name == info["model_name"]
        and described.model_params == info.get("model_params")
    ):
        model, _ = load_pretrained(weights, map_location=map_location, **overrides)  # the file describes itself
    else:
        params = {**dict(info.get("model_params") or {}), **overrides}
        try:  # the params of config.json are checked against the weights before the model is built
            model, _ = load_pretrained(weights, model_name=info["model_name"], map_location=map_location, **params)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (model_name and model_params from {cfg_path})") from None
    cfg = dict(info.get("training_config") or {})
    data = dict(cfg.get("data") or {})
    for key in ("sample_rate", "mean", "std"):
        if key in (info.get("frontend") or {}):
            data[key] = info["frontend"][key]
    cfg["data"] = data
    model.avmae_config = cfg
    return model

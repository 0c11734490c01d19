"""Rebuild a model from a checkpoint alone: ``load_pretrained(path) -> (model, report)``.

Where the model description comes from, in order:

1. this project's safetensors metadata: ``model`` (registered name) and ``model_params`` (JSON),
   the ``avmae.create_model`` call that built the saved model (``save_checkpoint`` stores
   ``model.avmae_spec``), so any registered model, plugins included, is rebuilt exactly as it was
   built, whatever task trained it.
2. files without ``model_params``: the name, and ``model.params`` plus the input size of a run
   config (metadata ``config``, or a ``config.yaml`` beside the weights); a bare
   ``{"model": {"name": ..., "params": {...}}}`` works too.
3. the tensors of a foreign file: the ``describe`` of the registered checkpoint formats
   (``avmae.checkpoint.CheckpointFormat``, tried by priority; ``register_spec_detector`` adds a
   describe-only one), e.g. AudioMAE's layouts (official ``.pth``, timm-format encoder,
   ``avmae.models.audiomae_format``): the size is read from the shapes (embedding width, depth,
   input length from ``pos_embed``), the decoder from the block keys (``attn.tau`` marks the
   shifted-window decoder of the released pretraining file; the demo notebook of the official
   repository built the global decoder instead and showed noise), the class count from the head.
4. ``model_name=``, for anything else.

``path`` may be a weights file, a checkpoint folder (``.../step_0001000/``) or a run folder (its
newest checkpoint). ``**overrides`` go to ``create_model`` and win over what the file says, e.g.
``target_length=128`` to build a 1024-frame model for 1.28 s inputs (its positional table is cut to
the first rows, the positions the saved model saw there; see ``avmae.modalities.audio``). An
AudioMAE-style model also runs on inputs of other lengths as it is built.

``describe_checkpoint`` says what ``load_pretrained`` would build without building it. All of this
is importable from ``avmae.hub`` too, the public place.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .checkpoint import (
    _HEAD_PREFIXES,
    CHECKPOINT_FORMATS,
    CheckpointError,
    CheckpointFormat,
    LoadReport,
    checkpoint_formats,
    find_format,
    load_checkpoint,
    read_state_dict,
)
from .run_folder import CONFIG_FILE, PRETRAINED_CONFIG, resolve_weights
from .weights_fit import build_on_meta, check_fits, describe_call, stand_ins

_logger = logging.getLogger(__name__)

__all__ = [
    "PretrainedReport",
    "load_pretrained",
    "describe_checkpoint",
    "checkpoint_config",
    "register_spec_detector",
    "SPEC_DETECTORS",
]

PathLike = Union[str, os.PathLike]


@dataclass
class PretrainedReport(LoadReport):
    """``LoadReport`` plus how the model was built.

    model_name / model_params: the ``create_model`` call; config: the run config found with the
    weights (``None`` for foreign files); source: "metadata", "config.yaml" or "detected".
    """

    model_name: str = ""
    model_params: Dict[str, Any] = field(default_factory=dict)
    config: Optional[Dict[str, Any]] = None
    source: str = ""

    def summary(self) -> str:
        return (
            f"{self.model_name}({_fmt_params(self.model_params)}), described by its {self.source}\n" + super().summary()
        )


def _fmt_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(params.items()))


# ------------------------------------------------------------------------------ locating files


def _read_config(weights: Path, meta: Mapping[str, str]) -> Tuple[Optional[Dict[str, Any]], str]:
    if meta.get("config"):
        try:
            cfg = json.loads(meta["config"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{weights}: metadata 'config' is not valid JSON ({exc})") from None
        if isinstance(cfg, dict):
            return cfg, "metadata"
    side = weights.parent / CONFIG_FILE
    if side.is_file():
        import yaml

        cfg = yaml.safe_load(side.read_text(encoding="utf-8"))
        if isinstance(cfg, dict):
            return cfg, CONFIG_FILE
    return None, ""


def checkpoint_config(path: PathLike) -> Optional[Dict[str, Any]]:
    """The run config stored with a checkpoint (safetensors metadata, or a ``config.yaml`` beside
    the weights), read without loading any tensor; None when there is none (foreign files)."""
    weights = resolve_weights(path)
    meta: Dict[str, str] = {}
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except Exception as exc:
            raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc
    return _read_config(weights, meta)[0]


# ------------------------------------------------------------------------------ model spec


def _spec_from_config(
    cfg: Mapping[str, Any], meta: Mapping[str, str], sd: Mapping[str, torch.Tensor]
) -> Tuple[str, Dict[str, Any]]:
    """(model name, factory params) of a file that names its model but stores no ``model_params``
    (a bare ``{"model": {"name", "params"}}`` config, or a run config): ``model.params``, the input
    size from ``data.*`` (else from the positional table) and the class count from the head."""
    model_cfg = cfg.get("model") if isinstance(cfg.get("model"), Mapping) else {}
    name = meta.get("model") or model_cfg.get("name") or (cfg["model"] if isinstance(cfg.get("model"), str) else None)
    if not name:
        raise CheckpointError("the checkpoint's config names no model (model.name)")
    if not isinstance(model_cfg.get("params") or {}, Mapping):
        raise CheckpointError(f"the checkpoint's config: model.params must be a mapping, got {model_cfg['params']!r}")
    params: Dict[str, Any] = dict(model_cfg.get("params") or {})
    data = cfg.get("data") if isinstance(cfg.get("data"), Mapping) else None
    for k in ("target_length", "num_mel_bins"):
        if data is not None and k in data:
            params.setdefault(k, data[k])
    pos = sd.get("modalities.audio.pos_embed")
    if pos is not None and "target_length" not in params:
        per_row = int(params.get("num_mel_bins", 128)) // 16
        if pos.shape[1] % per_row == 0:
            params["target_length"] = int(pos.shape[1]) // per_row * 16
    classes = _head_classes(sd)
    if classes is not None and "num_classes" not in params and not any(k.startswith("decoder.") for k in sd):
        params["num_classes"] = classes
    return str(name), params


def _head_classes(sd: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Rows of the last 2-D weight of the classifier head (``head.weight``, ``head.<i>.weight``, or
    CAV-MAE's ``mlp_head.<i>.weight``)."""
    found = [
        (k.count("."), k)
        for k, v in sd.items()
        if k.startswith(_HEAD_PREFIXES) and k.endswith(".weight") and v.dim() == 2
    ]
    if not found:
        return None
    return int(sd[max(found, key=lambda t: (t[0], t[1]))[1]].shape[0])


# the spec detectors are the checkpoint formats' ``describe`` (``avmae.checkpoint.CheckpointFormat``)
SpecDetector = Callable[[Mapping[str, torch.Tensor]], Optional[Tuple[str, Dict[str, Any]]]]
SPEC_DETECTORS = CHECKPOINT_FORMATS


class _SpecOnly(CheckpointFormat):
    """A format that only describes (``register_spec_detector``): it converts nothing, so the
    loaders convert the file through the format that detects it."""

    def __init__(self, describe: SpecDetector) -> None:
        self._describe = describe

    def detect(self, sd):
        return False

    def convert(self, sd, model):  # pragma: no cover - never detected
        raise CheckpointError(f"the format {self.name!r} only describes models")

    def describe(self, sd, num_mel_bins=128):
        return self._describe(sd)


def register_spec_detector(name: str, detect: SpecDetector) -> None:
    """Teach ``load_pretrained`` to rebuild the model of a foreign file that carries no model name
    (e.g. a released checkpoint of another architecture): ``detect(sd)`` returns
    ``(registered model name, factory params)`` for files it recognises, else None. A format that
    also converts keys is one ``avmae.checkpoint.CheckpointFormat`` with a ``describe`` method
    (whose ``describe`` may take ``meta=``, the file's metadata, and return a third item: the
    config its inputs follow, see ``_describe_format``)."""
    CHECKPOINT_FORMATS.add(name, _SpecOnly(detect))


def describe_checkpoint(path: PathLike, *, num_mel_bins: int = 128) -> PretrainedReport:
    """What ``load_pretrained`` would build, without building it (nothing is loaded)."""
    weights = resolve_weights(path)
    sd, meta = read_state_dict(weights)
    return _describe(weights, sd, meta, num_mel_bins)


def _describe(weights: Path, sd, meta, num_mel_bins: int) -> PretrainedReport:
    cfg, source = _read_config(weights, meta)
    if meta.get("model") and meta.get("model_params") is not None:
        try:
            params = json.loads(meta["model_params"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{weights}: metadata 'model_params' is not valid JSON ({exc})") from None
        if not isinstance(params, dict):
            raise CheckpointError(f"{weights}: metadata 'model_params' is not a mapping of factory params")
        return PretrainedReport(
            path=str(weights),
            format="avmae",
            model_name=meta["model"],
            model_params=params,
            config=cfg,
            source="metadata",
        )
    if cfg is not None or meta.get("model"):
        source = source or "metadata"
        try:
            name, params = _spec_from_config(cfg or {}, meta, sd)
        except CheckpointError as exc:
            raise CheckpointError(f"{weights}: {exc}") from None
        fmt = "avmae"
    else:
        probe = sd if not all(k.startswith("module.") for k in sd) else {k[7:]: v for k, v in sd.items()}
        source = "detected"
        side = weights.parent / PRETRAINED_CONFIG
        if side.is_file() and "folder_config" not in meta:  # another project's folder (an HF port)
            meta = {**meta, "folder_config": side.read_text(encoding="utf-8", errors="replace")}
        for found in checkpoint_formats():
            spec = _describe_format(found, probe, num_mel_bins, meta)
            if spec is not None:
                name, params = spec[0], spec[1]
                if len(spec) > 2 and spec[2] is not None:
                    cfg = spec[2]  # the input statistics of a foreign file (``frontend_for``)
                fmt = found.label(probe) if found.detect(probe) else found.name
                break
        else:
            found = find_format(probe)
            if found is not None and found.name == "avmae":
                raise CheckpointError(
                    f"{weights}: this project's weights without a model name in the metadata or a {CONFIG_FILE} beside"
                    " them; pass model_name= (and its params)"
                )
            what = (
                f"the {found.name!r} layout does not say which model it holds"
                if found is not None
                else f"unrecognised checkpoint layout (first keys: {list(probe)[:5]})"
            )
            raise CheckpointError(f"{weights}: {what}; pass model_name= to say which model it is for")
    return PretrainedReport(
        path=str(weights), format=fmt, model_name=name, model_params=params, config=cfg, source=source
    )


def _describe_format(fmt: CheckpointFormat, sd, num_mel_bins: int, meta: Mapping[str, str]):
    """``fmt.describe(sd, num_mel_bins)``; a format whose ``describe`` takes ``meta`` also gets the
    file's metadata (``read_state_dict``'s: a fairseq file's config as JSON under ``fairseq_cfg``,
    an HF-port folder's ``config.json`` under ``folder_config``) and may return
    ``(name, params, config)``, the config holding the input statistics (``{"data": {...}}``)."""
    import inspect

    try:
        takes_meta = "meta" in inspect.signature(fmt.describe).parameters
    except (TypeError, ValueError):
        takes_meta = False
    return fmt.describe(sd, num_mel_bins, meta=meta) if takes_meta else fmt.describe(sd, num_mel_bins)


# ------------------------------------------------------------------------------ loading

# PretrainedReport.source -> where the params of the model came from (for error messages)
_PARAMS_FROM = {
    "metadata": "the file's metadata 'model_params'",
    "config.yaml": f"the {CONFIG_FILE} beside it",
    "detected": "its tensors",
}


def load_pretrained(
    path: PathLike,
    *,
    model_name: Optional[str] = None,
    strict: bool = True,
    map_location: Union[str, torch.device, None] = None,
    teacher: bool = False,
    **overrides: Any,
) -> Tuple[nn.Module, PretrainedReport]:
    """Build the model a checkpoint describes and load its weights. -> (model in eval mode, report).

    Args:
        path: weights file (``.safetensors``, official ``.pth``), checkpoint folder or run folder.
        model_name: build this registered model instead of the one the file names (its params
            then come from ``overrides`` alone).
        strict: fail on keys that do not fit. An encoder-only file loaded into a pretraining
            model leaves its decoder untrained: allowed, and listed in ``report.missing``.
        map_location: device to move the model to.
        teacher: load the EMA teacher a pretraining file holds (EAT / data2vec ``_ema``) instead of
            the student (which feature extraction and fine-tuning use by default).
        **overrides: ``create_model`` params that win over the file's. ``target_length=`` other
            than the saved model's builds the model for that input length with the positions the
            saved one was trained with (``pos_base_length``, for the AudioMAE presets; the saved
            table is cut or continued, see ``avmae.modalities.audio``).

    The params (the file's, or given) are checked against the weights' shapes before the model
    is built (``avmae.weights_fit``): a tensor of another shape, or more than
    ``MAX_UNBACKED_ELEMENTS`` (2**28) elements no weights stand behind, is a ``CheckpointError``
    and nothing is allocated.
    """
    import avmae

    weights = resolve_weights(path)
    sd, meta = read_state_dict(weights)
    if teacher:
        from .fairseq_reader import take_teacher

        try:
            sd = take_teacher(sd)
        except CheckpointError as exc:
            raise CheckpointError(f"{weights}: {exc}") from None
    if model_name is not None:
        cfg, source = _read_config(weights, meta)
        info = PretrainedReport(
            path=str(weights), format="", model_name=model_name, model_params={}, config=cfg, source="argument"
        )
    else:
        info = _describe(weights, sd, meta, int(overrides.get("num_mel_bins", 128)))
    params = {**info.model_params, **overrides}
    shapes = stand_ins(sd)

    def build(**extra: Any) -> nn.Module:
        # params read from a file are checked against the weights' shapes on the meta device
        # before anything is allocated (avmae.weights_fit)
        call = {**params, **extra}
        where = _PARAMS_FROM.get(info.source, "")
        meta = build_on_meta(weights, info.model_name, call, where=where, type_errors_of=tuple(extra))
        check_fits(weights, meta, shapes, call=describe_call(info.model_name, call), where=where)
        try:
            return avmae.create_model(info.model_name, **params, **extra)
        except TypeError as exc:
            if extra and all(k in str(exc) for k in extra):
                raise  # the factory does not take the extra params
            raise CheckpointError(
                f"{weights}: cannot build {info.model_name}({_fmt_params({**params, **extra})}): {exc}"
            ) from exc
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{weights}: cannot build {info.model_name}({_fmt_params({**params, **extra})}): {exc}"
            ) from exc

    model = None
    saved_length = info.model_params.get("target_length")
    if saved_length and params.get("target_length") != saved_length and "pos_base_length" not in params:
        # another input length: keep the positions the saved model was trained with (the fixed
        # table's first rows, or its formula continued), for models whose factory takes it
        try:
            model = build(pos_base_length=int(saved_length))
            params["pos_base_length"] = int(saved_length)
        except TypeError:
            pass
    if model is None:
        model = build()
    encoder_only = info.source == "detected" and info.format == "timm-vit" and hasattr(model, "decoder")
    report = load_checkpoint(model, weights, strict=strict and not encoder_only, state_dict=sd)
    if encoder_only:
        bad = [k for k in report.missing if not k.startswith("decoder.")]
        if strict and (bad or report.unexpected):
            raise CheckpointError(
                f"{weights} does not fit {info.model_name}: missing {bad[:8]}, unexpected {report.unexpected[:8]}"
            )
        # left fresh by design: the file has no decoder
        report.reinitialized += [k for k in report.missing if k.startswith("decoder.")]
        report.missing = bad
    out = PretrainedReport(
        **{
            **asdict(report),
            "model_name": info.model_name,
            "model_params": params,
            "config": info.config,
            "source": info.source,
        }
    )
    model.eval()
    if map_location is not None:
        model.to(map_location)
    if info.source == "detected" and info.config is not None:
        model.avmae_config = info.config  # the input statistics of a foreign file, for frontend_for
    _logger.info("built %s(%s) as described by its %s", info.model_name, _fmt_params(params), info.source)
    return model, out


# ------------------------------------------------------------------------------ inputs

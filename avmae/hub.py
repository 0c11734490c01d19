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

Also here: ``frontend_for`` (the audio frontend a checkpoint was trained with), ``to_timm`` (an
AudioMAE-style encoder as a plain timm ``VisionTransformer`` state dict), and shareable model folders
in the Hugging Face layout: ``save_pretrained(model, dir, config=, metrics=)`` writes ``config.json``,
``model.safetensors`` and a ``README.md`` model card; ``from_pretrained(dir)`` loads them.
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
from .files import to_json, write_json
from .run_folder import CONFIG_FILE, HF_TORCH_WEIGHTS, WEIGHTS_FILE, resolve_weights
from .weights_fit import build_on_meta, check_fits, describe_call, stand_ins

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
        from .formats.fairseq import take_teacher

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


def timm_kwargs(model: nn.Module) -> Dict[str, Any]:
    """``timm.models.vision_transformer.VisionTransformer`` arguments that rebuild ``model``'s encoder.

    A classifier maps to ``global_pool='avg', fc_norm=True`` (its mean pool and ``fc_norm``; no final
    norm) with its head; a pretraining model to ``global_pool='avg', fc_norm=False`` (final norm on
    every token, then the mean over the patch tokens) without a head. Either way timm's pre-logits
    features equal this project's pooled features.
    """
    from .models.classifier import EncoderClassifier
    from .models.mae import MaskedAutoencoder

    if type(model) not in (MaskedAutoencoder, EncoderClassifier):
        raise ValueError(
            f"{type(model).__name__} is not an AudioMAE-style ViT (MaskedAutoencoder or EncoderClassifier)"
        )
    if getattr(model, "pre_norm", None) is not None or type(model.blocks[0]).__name__ == "PostNormBlock":
        raise ValueError("post-LN blocks with a pre-norm (EAT) have no timm VisionTransformer equivalent")
    mod = audio_modality(model)
    if getattr(mod, "layout", "tf") != "tf":
        raise ValueError("only the time-major ('tf', AudioMAE) audio layout maps onto timm's ViT patch order")
    _, T, F = mod.input_shape
    blk = model.blocks[0]
    D = int(getattr(model, "embed_dim", mod.patch_embed.proj.out_channels))
    is_cls = not hasattr(model, "decoder")
    kw: Dict[str, Any] = dict(
        img_size=(int(T), int(F)),
        patch_size=int(mod.patch_size),
        in_chans=1,
        embed_dim=D,
        depth=len(model.blocks),
        num_heads=int(blk.attn.num_heads),
        mlp_ratio=blk.mlp.fc1.out_features / D,
        qkv_bias=blk.attn.qkv.bias is not None,
        class_token=bool(getattr(model, "has_cls", True)),
    )
    if is_cls:
        pool = getattr(model, "global_pool", "avg")
        kw.update(
            global_pool="token" if pool == "cls" else "avg",
            fc_norm=True,
            num_classes=int(getattr(model, "num_classes", 0) or 0),
        )
    else:
        if len(model.modalities) != 1:
            raise ValueError(f"a timm ViT holds a single-modality encoder; this model has {list(model.modalities)}")
        kw.update(global_pool="avg", fc_norm=False, num_classes=0)
    return kw


def to_timm(model: nn.Module) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """-> (state dict for timm's ``VisionTransformer(**kwargs)``, kwargs). The decoder is dropped."""
    from .checkpoint import to_audiomae_official

    kw = timm_kwargs(model)
    sd = to_audiomae_official(model)
    drop = ("decoder_", "mask_token")
    sd = {k: v for k, v in sd.items() if not k.startswith(drop)}
    if kw["num_classes"] == 0:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    return sd, kw


# ------------------------------------------------------------------------------ shareable folders

PRETRAINED_CONFIG = "config.json"
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

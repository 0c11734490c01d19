"""Run configuration: typed dataclass defaults, YAML deltas, ``key=value`` overrides.

    Config (defaults below)  <-  configs/*.yaml (only what an experiment changes)  <-  key=value

``load_config(["configs/demo_audio.yaml"], ["optim.blr=1e-3", "train.batch_size=4"])`` merges the
three layers with OmegaConf's structured configs, so an unknown key or a value of the wrong type is
an error that names the key; ``validate`` then rejects impossible values (a mask ratio of 1, an
unregistered masker, ...) before any work starts, again naming the key. What only the model can
judge (a ``target_length`` its patches do not tile) fails when the model is built, before any
data work for pretraining, naming the config key that set the param (``DATA_KEYS_IN_MODEL``).

A YAML delta is a nested mapping (``optim: {blr: 1e-3}``); flat dotted keys (``optim.blr: 1e-3``)
are accepted too. ``model`` is the plugin-style section: ``name`` picks a registered model and
``params`` is passed to its factory, which validates it. ``data.target_length`` and
``data.num_mel_bins`` are the single source of truth for the input size: the trainer injects them
into the model's params, and setting them in ``model.params`` is an error.

The schema lives in ``avmae.config_schema``, the checks in ``avmae.config_checks``; this module
loads, merges and writes configs, and every public name of the three is importable from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config_checks import require_training_data, validate
from .config_error import ConfigError
from .config_schema import (
    DATA_KEYS_IN_MODEL,
    DEMO_DATA,
    AugmentConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    EvalConfig,
    LoggingConfig,
    MaskingConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    param_source,
)
from .registry import CONFIG_FOLDERS

__all__ = [
    "list_configs",
    "resolve_config_path",
    "CONFIG_DIR",
    "Config",
    "ModelConfig",
    "DataConfig",
    "AugmentConfig",
    "MaskingConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "EvalConfig",
    "LoggingConfig",
    "CheckpointConfig",
    "ConfigError",
    "load_config",
    "merge_overrides",
    "validate",
    "to_dict",
    "to_yaml",
    "save_config",
    "DATA_KEYS_IN_MODEL",
    "param_source",
    "DEMO_DATA",
    "require_training_data",
]

PathLike = Union[str, os.PathLike]

# the shipped configs: package data (avmae/configs/; a clone's configs/ links to it), so that a
# config resolves by name (``audiomae/pretrain_as2m``) from any folder, installed or not
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


# ------------------------------------------------------------------------------------ merging


def _first_line(exc: OmegaConfBaseException) -> str:
    msg = getattr(exc, "msg", None) or str(exc)
    return msg.strip().splitlines()[0]


def _leaves(d: Mapping[str, Any], prefix: str = "") -> Iterable[Tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from _leaves(v, key + ".")
        else:
            yield key, v


def _nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """{"a.b": 1, "c": {"d": 2}} -> {"a": {"b": 1}, "c": {"d": 2}} (dotted keys expanded)."""
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, Mapping):
            value = _nest(value)
        node = out
        parts = str(key).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(str(key), f"conflicts with a value given for {p!r}")
        last = parts[-1]
        if isinstance(node.get(last), dict) and isinstance(value, dict):
            node[last] = {**node[last], **value}
        else:
            node[last] = value
    return out


def _merge(base: DictConfig, delta: Mapping[str, Any], source: str) -> DictConfig:
    """Merge ``delta`` into the typed ``base``; errors name the key and the source."""
    try:
        return OmegaConf.merge(base, delta)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        if not key:  # e.g. a tuple of the wrong length: find the leaf that fails
            for leaf, value in _leaves(delta):
                try:
                    OmegaConf.merge(base, _nest({leaf: value}))
                except OmegaConfBaseException:
                    key = leaf
                    break
        raise ConfigError(key or "<config>", f"{_first_line(exc)} (from {source})") from None


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            "--config", f"{path}: no such file, nor a shipped config of that name (list them: avmae configs)"
        ) from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError("--config", f"{path} must hold a mapping of keys, got {type(doc).__name__}")
    if "defaults" in doc:
        raise ConfigError(
            "defaults",
            f"{path}: configs are flat deltas over the dataclass defaults; 'defaults:' lists are not supported",
        )
    return _nest(doc)


def _parse_dotlist(overrides: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key=value (e.g. optim.blr=1e-3)")
        key, _, _ = item.partition("=")
        if not key.strip():
            raise ConfigError(item, "an override needs a key before '='")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(key, f"cannot parse override {item!r}: {_first_line(exc)}") from None
        out = _deep_update(out, parsed)
    return out


def _deep_update(a: Dict[str, Any], b: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_update(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


def resolve_config_path(path: PathLike) -> Path:
    """A config file: ``path`` as given when it exists, else a shipped config by name
    (``audiomae/pretrain_as2m``, with or without ``.yaml``, also as ``configs/audiomae/...``,
    the path in a clone), else a plugin's (``eat/demo``: the folder its ``avmae.configs`` entry
    point names). An unknown name is returned as given (reading it names the file)."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    parts = p.parts[1:] if p.parts[:1] == ("configs",) else p.parts
    if not parts:
        return p
    rel = Path(*parts)
    folders = [CONFIG_DIR / rel]
    if len(parts) > 1 and parts[0] in CONFIG_FOLDERS:
        folders.append(Path(CONFIG_FOLDERS.get(parts[0])).joinpath(*parts[1:]))
    for candidate in folders:
        for file in (candidate, candidate.with_name(candidate.name + ".yaml")):
            if file.is_file():
                return file
    return p


def list_configs() -> List[str]:
    """The configs by the name ``--config`` takes (``audiomae/pretrain_as2m``), sorted: the shipped
    ones, then the plugins' (``eat/demo``)."""
    names = [f.relative_to(CONFIG_DIR).with_suffix("").as_posix() for f in CONFIG_DIR.rglob("*.yaml")]
    for prefix, folder in CONFIG_FOLDERS.items():
        names += [f"{prefix}/{f.relative_to(folder).with_suffix('').as_posix()}" for f in Path(folder).rglob("*.yaml")]
    return sorted(set(names))


def merge_overrides(
    config_files: Sequence[PathLike] = (),
    overrides: Sequence[str] = (),
    base: Optional[Union[Config, Mapping[str, Any]]] = None,
) -> DictConfig:
    """Typed DictConfig: dataclass defaults (or ``base``) <- YAML files in order <- dotlist."""
    cfg = OmegaConf.structured(Config)
    if base is not None:
        cfg = _merge(cfg, to_dict(base) if isinstance(base, Config) else dict(base), "base config")
    for f in config_files:
        path = resolve_config_path(f)
        cfg = _merge(cfg, _read_yaml(path), str(path))
    if overrides:
        cfg = _merge(cfg, _parse_dotlist(overrides), "command line")
    return cfg


def load_config(
    config_files: Sequence[PathLike] = (),
    overrides: Sequence[str] = (),
    *,
    base: Optional[Union[Config, Mapping[str, Any]]] = None,
    check: bool = True,
) -> Config:
    """Merge defaults, YAML deltas and ``key=value`` overrides into a validated ``Config``."""
    cfg = OmegaConf.to_object(merge_overrides(config_files, overrides, base))
    assert isinstance(cfg, Config)
    # YAML 1.1 reads a bare `no` as false, which the str field stores as "False"
    if cfg.train.mixed_precision in ("False", "false"):
        cfg.train.mixed_precision = "no"
    # YAML / overrides read true/false as booleans, which the str field stores as "True"/"False"
    if cfg.optim.fused in ("True", "False"):
        cfg.optim.fused = cfg.optim.fused.lower()
    if check:
        validate(cfg)
    return cfg


def to_dict(cfg: Config) -> Dict[str, Any]:
    """Plain nested dict (tuples become lists), suitable for JSON/YAML."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)


def save_config(cfg: Config, path: PathLike) -> Path:
    """Write ``cfg`` as YAML (atomically); ``load_config([path])`` gives it back."""
    from .files import atomic_write

    return atomic_write(path, to_yaml(cfg))


def diff(a: Config, b: Config) -> List[str]:
    """Dotted keys whose values differ between two configs."""
    la, lb = dict(_leaves(to_dict(a))), dict(_leaves(to_dict(b)))
    return sorted(k for k in set(la) | set(lb) if la.get(k) != lb.get(k))

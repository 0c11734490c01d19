"""Options of registry entries: a dataclass an entry declares, merged and checked like a config section.

A dataset builder, a task, a masker or an objective may declare ``options``, a dataclass whose
fields are the params it reads, with their types and defaults::

    @dataclass
    class GainOptions:
        gain_db: float = 0.0          # data.params.gain_db=3 on the command line

    @avmae.register_dataset("gained_audio")
    class GainedAudio(avmae.train.DatasetBuilder):
        options = GainOptions
        def build(self, cfg, split):
            gain_db = self.options_of(cfg).gain_db
            ...

Where each entry's params sit in the run config:

=================  =====================================  ================================
entry              params                                 extra checks (``ConfigError``)
=================  =====================================  ================================
dataset builder    ``data.params``                        ``builder.validate(cfg)``
task               ``task_params``                        ``Task.validate(cfg)``
masker             ``masking.maskers.<modality>``'s spec   (the constructor, when built)
objective          ``objectives[i]``'s spec (``weight``    (the constructor, when built)
                   aside)
=================  =====================================  ================================

``check_entries`` (the last step of ``avmae.config.validate``) merges them: the params over the
dataclass's defaults, typed as its fields say (``"3"`` -> ``3.0`` for a float), an unknown key
refused by name with the valid ones listed; the merged values replace ``data.params`` and
``task_params``, so the saved config shows every option a run used. An entry without ``options``
takes no params in ``data.params`` / ``task_params``; maskers and objectives without ``options``
are checked by their constructors, as before.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config_error import ConfigError
from .registry import DATASETS, MASKERS, OBJECTIVES, TASKS

Config = Any  # an avmae.config.Config (not imported: avmae.config imports this module)

__all__ = ["merge_options", "options_dict", "check_entries", "dataset_name"]


def merge_options(options: type, params: Mapping[str, Any], key: str, owner: str) -> Any:
    """``params`` over the defaults of the dataclass ``options`` -> an instance of it.

    ``key``: where the params sit (``data.params``), for the error; ``owner``: whose options they
    are (``dataset 'gained_audio'``). An unknown key or a value of the wrong type is a
    ``ConfigError`` naming ``<key>.<name>``."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"{owner}: options must be a dataclass, got {options!r}")
    valid = [f.name for f in dataclasses.fields(options)]
    for name in params:
        if name not in valid:
            raise ConfigError(f"{key}.{name}", f"not an option of {owner}; its options: {', '.join(valid) or '(none)'}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(options), dict(params))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        bad = getattr(exc, "full_key", None) or getattr(exc, "key", None) or ""
        msg = (getattr(exc, "msg", None) or str(exc)).strip().splitlines()[0]
        raise ConfigError(f"{key}.{bad}" if bad else key, f"{msg} (an option of {owner})") from None


def options_dict(instance: Any) -> Dict[str, Any]:
    """A merged options dataclass as a plain dict (what the saved config holds)."""
    return OmegaConf.to_container(OmegaConf.structured(instance), resolve=True)  # type: ignore[return-value]


def dataset_name(cfg: Config) -> str:
    """The dataset builder a run uses: ``dataset``, else ``modality`` (its former name)."""
    return cfg.dataset or cfg.modality


def _spec_options(key: str, spec: Any, registry, allowed_extra=()) -> None:
    """The params of a masker / objective spec against the entry's ``options``, when it has some."""
    name, params = registry.parse(spec)
    options = getattr(registry.get(name), "options", None)
    if options is not None:
        merge_options(
            options, {k: v for k, v in params.items() if k not in allowed_extra}, key, f"{registry.kind} {name!r}"
        )


def check_entries(cfg: Config) -> Config:
    """The checks that ask the registries: the named task and dataset builder exist; their options
    (``task_params``, ``data.params``) are merged into ``cfg``, typed; maskers' and objectives'
    options are checked; then the builder's ``validate(cfg)`` and ``Task.validate(cfg)``. Also
    makes ``dataset`` and ``modality`` agree (``dataset`` wins; ``modality`` alone still works)."""
    if cfg.dataset is not None and cfg.modality not in (cfg.dataset, "audio"):
        raise ConfigError(
            "dataset",
            f"names the dataset builder ({cfg.dataset!r}) and modality, its former name, another ({cfg.modality!r});"
            " give one of them",
        )
    name = dataset_name(cfg)
    key = "dataset" if cfg.dataset is not None else "modality"  # the key the config used
    cfg.dataset = cfg.modality = name

    if cfg.task not in TASKS:
        raise ConfigError("task", f"unknown task {cfg.task!r}; registered: {', '.join(TASKS.names())}")
    if name not in DATASETS:
        raise ConfigError(key, f"unknown dataset builder {name!r}; registered: {', '.join(DATASETS.names())}")

    task = TASKS.get(cfg.task)
    options = getattr(task, "options", None)
    if options is not None:
        cfg.task_params = options_dict(merge_options(options, cfg.task_params, "task_params", f"task {cfg.task!r}"))
    elif cfg.task_params:
        raise ConfigError(f"task_params.{next(iter(cfg.task_params))}", f"task {cfg.task!r} takes no task_params")

    builder = DATASETS.instance(name)
    options = getattr(builder, "options", None)
    if options is not None:
        cfg.data.params = options_dict(merge_options(options, cfg.data.params, "data.params", f"dataset {name!r}"))
    elif cfg.data.params:
        raise ConfigError(f"data.params.{next(iter(cfg.data.params))}", f"dataset {name!r} takes no data.params")

    for modality, spec in cfg.masking.maskers.items():
        _spec_options(f"masking.maskers.{modality}", spec, MASKERS)
    for i, spec in enumerate(cfg.objectives):
        _spec_options(f"objectives[{i}]", spec, OBJECTIVES, allowed_extra=("weight",))

    if callable(getattr(builder, "validate", None)):
        builder.validate(cfg)
    if callable(getattr(task, "validate", None)):
        task.validate(cfg)
    return cfg

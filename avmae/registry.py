"""Name -> class/factory registries: the extension surface of avmae.

=====================  =====================  ==================================================
registry               entry-point group      what an entry decides
=====================  =====================  ==================================================
``MODELS``             ``avmae.models``       how the parts are assembled (a factory)
``MODALITIES``         ``avmae.modalities``   the input side of a branch (grid, patchify, embed)
``DECODERS``           ``avmae.decoders``     how masked tokens are predicted
``MASKERS``            ``avmae.maskers``      which tokens are hidden (``avmae.masking.Masker``)
``OBJECTIVES``         ``avmae.objectives``   what a pretraining step optimises (``avmae.objectives``)
``TASKS``              ``avmae.tasks``        what a run does (``avmae.train.Task``: pretrain, finetune)
``DATASETS``           ``avmae.datasets``     how items reach the loader (``dataset:``, formerly ``modality:``)
``CHECKPOINT_FORMATS`` ``avmae.checkpoint_    a checkpoint layout the loaders read: detect, convert
                       formats``              keys, describe the model (``avmae.checkpoint.CheckpointFormat``)
``CONFIG_FOLDERS``     ``avmae.configs``      a plugin's YAML configs, by name: ``<entry>/<file>``
=====================  =====================  ==================================================

Every registry has a decorator exported from ``avmae``: ``register_model``, ``register_modality``,
``register_decoder``, ``register_masker``, ``register_objective``, ``register_task``,
``register_dataset`` (and ``register_checkpoint_format``), usable bare or with a name::

    @avmae.register_masker("stripes")
    class StripeMasker(avmae.masking.Masker): ...

Built-ins register by decorator when their module is imported (tasks and datasets with
``avmae.train``). Third-party packages add entries through the entry-point groups; those are
discovered once, lazily, on the first lookup or listing. Set ``AVMAE_DISABLE_PLUGINS=1`` to turn
discovery off.

``Registry.build(spec, **common)`` is the one way an entry is built from a config: ``spec`` is a
registered name, ``{"name": ..., <param>: ..., "params": {...}}`` or an already built object;
``common`` are the arguments the caller gives every entry (a decoder's ``encoder_dim``, ...).
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import os
from importlib import metadata
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

_logger = logging.getLogger(__name__)

PLUGINS_ENV = "AVMAE_DISABLE_PLUGINS"

__all__ = [
    "Registry",
    "RegistryError",
    "PluginError",
    "MODELS",
    "DECODERS",
    "MODALITIES",
    "MASKERS",
    "OBJECTIVES",
    "TASKS",
    "DATASETS",
    "CHECKPOINT_FORMATS",
    "CONFIG_FOLDERS",
    "register_model",
    "register_decoder",
    "register_modality",
    "register_masker",
    "register_objective",
    "register_task",
    "register_dataset",
    "register_checkpoint_format",
]


class RegistryError(KeyError):
    """Unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class PluginError(RuntimeError):
    """A plugin entry point could not be loaded or has the wrong type."""


def _plugins_disabled() -> bool:
    return os.environ.get(PLUGINS_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class Registry:
    """A typed name -> object map with lazy entry-point discovery.

    Args:
        kind: what the registry holds, used in messages ("model", "decoder", ...).
        group: the entry-point group scanned for plugins.
        check: validates a registered object; returns an error string or None.
        product: the type ``build`` must return (an instance of it given as a spec is returned
            as is). The module defining the base class sets it (``MASKERS.product = Masker``),
            so that this module imports nothing of avmae.
        builtins: the module whose import registers the built-in entries, imported (by name) on
            the first lookup or listing, as plugins are discovered (tasks and dataset builders
            live in ``avmae.train``, which the rest of the package does not import).
    """

    def __init__(
        self,
        kind: str,
        group: str,
        check: Optional[Callable[[Any], Optional[str]]] = None,
        product: Optional[type] = None,
        builtins: Optional[str] = None,
    ) -> None:
        self.kind = kind
        self.group = group
        self.product = product
        self.builtins = builtins
        self._check = check
        self._entries: Dict[str, Any] = {}
        self._sources: Dict[str, str] = {}
        self._plugins_loaded = False

    # ------------------------------------------------------------------ registration
    def register(self, name: Optional[str] = None, *, source: str = "builtin") -> Callable[[Any], Any]:
        """Decorator: ``@REG.register("name")`` or ``@REG.register()`` (uses ``__name__``)."""

        def deco(obj: Any) -> Any:
            self.add(name or obj.__name__, obj, source=source)
            return obj

        return deco

    def add(self, name: str, obj: Any, *, source: str = "builtin") -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered (by {self._sources[name]}); pick another name"
            )
        if self._check is not None:
            err = self._check(obj)
            if err:
                raise TypeError(f"cannot register {self.kind} {name!r} from {source}: {err}")
        self._entries[name] = obj
        self._sources[name] = source

    def remove(self, name: str) -> None:
        """Drop an entry (used by tests and by plugins that replace their own entries)."""
        self._entries.pop(name, None)
        self._sources.pop(name, None)

    # ------------------------------------------------------------------ plugins
    def load_plugins(self, force: bool = False) -> None:
        """Discover entry points of ``self.group`` once. Errors name the plugin."""
        if self._plugins_loaded and not force:
            return
        self._plugins_loaded = True
        if self.builtins:
            import importlib

            importlib.import_module(self.builtins)
        if _plugins_disabled():
            _logger.debug("plugin discovery for %s is off (%s)", self.group, PLUGINS_ENV)
            return
        for ep in _entry_points(self.group):
            if ep.name in self._entries:
                if self._sources.get(ep.name) == f"plugin {ep.value}":
                    continue
                raise PluginError(
                    f"plugin {ep.name!r} ({ep.value}) in group {self.group!r} clashes with the "
                    f"{self.kind} of the same name registered by {self._sources[ep.name]}"
                )
            try:
                obj = ep.load()
            except Exception as exc:  # any import failure of a third-party package
                raise PluginError(
                    f"failed to load plugin {ep.name!r} ({ep.value}) from group {self.group!r}: "
                    f"{type(exc).__name__}: {exc}. Set {PLUGINS_ENV}=1 to disable plugins."
                ) from exc
            try:
                self.add(ep.name, obj, source=f"plugin {ep.value}")
            except (TypeError, RegistryError) as exc:
                raise PluginError(f"plugin {ep.name!r} ({ep.value}): {exc}") from exc
            _logger.info("registered %s %r from plugin %s", self.kind, ep.name, ep.value)

    # ------------------------------------------------------------------ lookup
    def get(self, name: str) -> Any:
        if name not in self._entries:
            self.load_plugins()
        if name not in self._entries:
            valid = ", ".join(self.names()) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}")
        return self._entries[name]

    def instance(self, name: str) -> Any:
        """The entry ``name``, instantiated without arguments when it is a class (a dataset
        builder, a checkpoint format); other entries (a function, an instance) as registered."""
        entry = self.get(name)
        return entry() if inspect.isclass(entry) else entry

    def items(self) -> List[Tuple[str, Any]]:
        """(name, entry) pairs in registration order (built-ins first, then plugins)."""
        self.load_plugins()
        return list(self._entries.items())

    def names(self, pattern: str = "") -> List[str]:
        self.load_plugins()
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, pattern)]
        return names

    def source(self, name: str) -> str:
        self.get(name)
        return self._sources[name]

    def __contains__(self, name: str) -> bool:
        self.load_plugins()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    # ------------------------------------------------------------------ building
    def parse(self, spec: Any) -> Tuple[str, Dict[str, Any]]:
        """``"name"`` or ``{"name": ..., <param>: ..., "params": {...}}`` -> (name, params).

        Params may sit beside ``name`` or in a ``params`` block (both are merged, the block
        last); the name is not checked here (``build`` and ``get`` do)."""
        if isinstance(spec, str):
            return spec, {}
        if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
            params = {k: v for k, v in spec.items() if k not in ("name", "params")}
            params.update(dict(spec.get("params") or {}))
            return spec["name"], params
        raise ValueError(f"a {self.kind} is a registered name or {{name: ..., <params>}}, got {spec!r}")

    def build(self, spec: Any, params: Optional[Mapping[str, Any]] = None, **common: Any) -> Any:
        """Build an entry from a spec -> the built object.

        Args:
            spec: a registered name, ``{"name": ..., <params>}`` (see ``parse``), or an instance
                of ``product`` (returned as is).
            params: more params, merged over the spec's own.
            **common: arguments the caller gives every entry of this registry (a decoder's
                ``encoder_dim``); a spec may not set them.

        A constructor rejecting its params (``TypeError``) is a ``ValueError`` naming the entry
        and the params; a product of the wrong type is a ``TypeError`` naming the entry's source.
        """
        if self.product is not None and isinstance(spec, self.product):
            return spec
        name, own = self.parse(spec)
        own.update(dict(params or {}))
        clash = sorted(set(own) & set(common))
        if clash:
            raise ValueError(
                f"{self.kind} {name!r}: {', '.join(clash)} set by the caller, not by the {self.kind}'s params"
            )
        factory = self.get(name)
        try:
            obj = factory(**common, **own)
        except TypeError as exc:
            raise ValueError(f"{self.kind} {name!r} rejected its params {own}: {exc}") from None
        if self.product is not None and not isinstance(obj, self.product):
            raise TypeError(
                f"{self.kind} {name!r} ({self.source(name)}) built a {type(obj).__name__}, not a"
                f" {self.product.__module__}.{self.product.__qualname__}"
            )
        return obj


def _entry_points(group: str):
    eps = metadata.entry_points()
    if hasattr(eps, "select"):
        selected = eps.select(group=group)
    else:  # pragma: no cover - very old importlib.metadata
        selected = eps.get(group, [])
    # a distribution may be visible twice (e.g. site-packages and an editable path); load once
    seen, out = set(), []
    for ep in selected:
        if ep.name not in seen:
            seen.add(ep.name)
            out.append(ep)
    return out


def _check_callable(obj: Any) -> Optional[str]:
    return None if callable(obj) else f"expected a class or factory function, got {type(obj).__name__}"


def _check_module_class(base_name: str) -> Callable[[Any], Optional[str]]:
    def check(obj: Any) -> Optional[str]:
        import torch.nn as nn

        if inspect.isclass(obj):
            return None if issubclass(obj, nn.Module) else f"{obj.__name__} is not an nn.Module subclass"
        if callable(obj):
            return None  # a factory; its product is checked when built
        return f"expected an nn.Module subclass ({base_name}) or a factory, got {type(obj).__name__}"

    return check


def _check_class_with(*methods: str) -> Callable[[Any], Optional[str]]:
    """A class defining ``methods`` (a task, a masker)."""

    def check(obj: Any) -> Optional[str]:
        if not inspect.isclass(obj):
            return f"expected a class, got {type(obj).__name__}"
        lacking = [m for m in methods if not callable(getattr(obj, m, None))]
        return f"{obj.__name__} lacks {', '.join(lacking)}" if lacking else None

    return check


def _check_has(*methods: str) -> Callable[[Any], Optional[str]]:
    """A class or an instance with callable ``methods`` (a checkpoint format)."""

    def check(obj: Any) -> Optional[str]:
        lacking = [m for m in methods if not callable(getattr(obj, m, None))]
        return f"{getattr(obj, '__name__', type(obj).__name__)} lacks {', '.join(lacking)}" if lacking else None

    return check


MODELS = Registry("model", "avmae.models", check=_check_callable)
DECODERS = Registry("decoder", "avmae.decoders", check=_check_module_class("Decoder"))
MODALITIES = Registry("modality", "avmae.modalities", check=_check_module_class("Modality"))
MASKERS = Registry("masker", "avmae.maskers", check=_check_class_with("noise"))
OBJECTIVES = Registry("objective", "avmae.objectives", check=_check_module_class("Objective"))
TASKS = Registry(
    "task", "avmae.tasks", check=_check_class_with("build_model", "compute_loss", "evaluate"), builtins="avmae.train"
)
DATASETS = Registry("dataset", "avmae.datasets", check=_check_callable, builtins="avmae.train")
CHECKPOINT_FORMATS = Registry("checkpoint format", "avmae.checkpoint_formats", check=_check_has("detect", "convert"))


def _check_folder(obj: Any) -> Optional[str]:
    return None if isinstance(obj, (str, os.PathLike)) else f"expected a folder path, got {type(obj).__name__}"


# a plugin's configs: the entry ``mine = "my_pkg:CONFIG_DIR"`` makes --config mine/x read <CONFIG_DIR>/x.yaml
CONFIG_FOLDERS = Registry("config folder", "avmae.configs", check=_check_folder)


def _decorator(reg: Registry, name: Any):
    # usable bare (``@register_decoder``) or with a name (``@register_decoder("swin")``)
    if callable(name) and not isinstance(name, str):
        return reg.register()(name)
    return reg.register(name)


def register_model(name: Any = None):
    """Register a model factory (``**kwargs -> nn.Module``) under ``name`` (default: its ``__name__``)."""
    return _decorator(MODELS, name)


def register_decoder(name: Any = None):
    """Register a decoder class (an ``avmae.decoders.Decoder`` subclass)."""
    return _decorator(DECODERS, name)


def register_modality(name: Any = None):
    """Register a modality class (an ``avmae.modalities.Modality`` subclass)."""
    return _decorator(MODALITIES, name)


def register_masker(name: Any = None):
    """Register a masker class (an ``avmae.masking.Masker`` subclass: ``noise(...)``)."""
    return _decorator(MASKERS, name)


def register_objective(name: Any = None):
    """Register an objective class (an ``avmae.objectives.Objective`` subclass)."""
    return _decorator(OBJECTIVES, name)


def register_task(name: Any = None):
    """Register a task class (an ``avmae.train.Task`` subclass), selected by ``task: <name>``."""

    def deco(cls: Any) -> Any:
        if inspect.isclass(cls):
            cls.name = name if isinstance(name, str) else cls.__name__
        return _decorator(TASKS, name)(cls)

    if callable(name) and not isinstance(name, str):
        cls, name = name, None
        return deco(cls)
    return deco


def register_dataset(name: Any = None):
    """Register a dataset builder (an ``avmae.train.DatasetBuilder`` subclass: ``build(cfg, split)``,
    ``check``, ``validate``, ``options``), selected by ``dataset: <name>`` (``modality:`` too). A
    plain function ``builder(cfg, split) -> Dataset | None`` still works."""
    return _decorator(DATASETS, name)


def register_checkpoint_format(name: Any = None):
    """Register a checkpoint layout (an ``avmae.checkpoint.CheckpointFormat`` subclass or
    instance: ``detect``, ``convert``, optionally ``describe``; see its docstring)."""
    return _decorator(CHECKPOINT_FORMATS, name)

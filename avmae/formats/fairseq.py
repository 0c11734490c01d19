"""Reading fairseq checkpoints without fairseq, and without unpickling code.

A fairseq ``.pt`` file is a pickled dict: ``model`` (the state dict; data2vec-style models add
``_ema``, the EMA teacher's parameters as a nested dict), ``cfg`` (the config: an omegaconf
``DictConfig`` or plain containers, possibly holding enums) or, in older files, ``args`` (an
``argparse.Namespace``), and trainer fields (``optimizer_history``, ``extra_state``, ...).

``torch.load(weights_only=True)`` refuses the omegaconf and enum classes, and loading them for
real would need fairseq (which does not import on current Pythons) and would run their code. So
these files are read by a restricted unpickler: an allow-list maps

- tensors, storages, dtypes, ``OrderedDict``: torch's own ``weights_only`` allow-list (its
  rebuild functions);
- omegaconf containers and nodes, ``argparse.Namespace``, enums and config dataclasses of
  fairseq / EAT / data2vec modules, ``typing.Any``: inert stand-ins that only record the state
  pickle hands them and become plain dicts, lists and strings afterwards (an enum becomes its name);

and refuses every other global (``os.system``, ``builtins.eval``, ...) with a ``CheckpointError``
naming the file and the global, before anything runs. Nothing is imported while reading.

``read_fairseq(path) -> (flat state dict, plain cfg)``: the ``_ema`` dict is flattened to
``_ema.<name>`` entries so a format filter can take or drop the teacher.
"""

from __future__ import annotations

import enum
import logging
import os
import pickle
import re
import types
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import torch

from ..checkpoint_error import CheckpointError

_logger = logging.getLogger(__name__)

__all__ = [
    "read_fairseq",
    "restricted_load",
    "is_fairseq_container",
    "is_config_global",
    "fairseq_state",
    "to_plain",
    "EMA_PREFIX",
    "take_teacher",
]

EMA_PREFIX = "_ema."

# modules whose classes fairseq files reference by name (config dataclasses, enums): they become
# inert stand-ins, never imported
_CONFIG_MODULES = re.compile(r"^(fairseq|fairseq_cli|examples|models|tasks|EAT|eat|data2vec|SSLAM|sslam)(\.|$)")
_PLAIN_BUILTINS = {"dict": dict, "list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
_PLAIN_BUILTINS.update({"int": int, "long": int, "float": float, "str": str, "bool": bool, "bytes": bytes})


def _empty_dict(*_args: Any) -> dict:
    return {}


class _Inert:
    """Stand-in for a pickled config object: records constructor args and state, runs nothing."""

    _avmae_name = "object"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._state: Any = dict(kwargs) if kwargs else None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS on a dict subclass
        if not isinstance(self._state, dict):
            self._state = {}
        self._state[key] = value

    def append(self, value: Any) -> None:  # APPENDS on a list subclass
        self._args = self._args + (value,)

    def extend(self, values: Any) -> None:
        self._args = self._args + tuple(values)


def _inert_class(module: str, name: str) -> type:
    return type(name, (_Inert,), {"_avmae_name": f"{module}.{name}", "__module__": "avmae.formats.fairseq"})


_ENUM_BASES = ("Enum", "ChoiceEnum", "StrEnum", "IntEnum")


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """The stand-ins of a restricted load (and omegaconf / Namespace objects) -> plain values:
    dicts, lists, strings, numbers; an enum -> its name; tensors stay tensors."""
    if _depth > 100:
        raise CheckpointError("config nested more than 100 levels deep")
    if isinstance(obj, _Inert):
        name = obj._avmae_name
        state = obj._state
        if name.startswith("omegaconf."):
            if isinstance(state, Mapping) and "_content" in state:
                content = state["_content"]
                if isinstance(content, Mapping):
                    return {str(k): to_plain(v, _depth + 1) for k, v in content.items()}
                if isinstance(content, (list, tuple)):
                    return [to_plain(v, _depth + 1) for v in content]
                return to_plain(content, _depth + 1)
            if isinstance(state, Mapping) and "_val" in state:
                return to_plain(state["_val"], _depth + 1)
            return None if state is None else to_plain(state, _depth + 1)
        if name == "argparse.Namespace":
            return {str(k): to_plain(v, _depth + 1) for k, v in (state or {}).items()}
        if name == "typing.Any":
            return "Any"
        if state is None and len(obj._args) == 1 and not isinstance(obj._args[0], _Inert):
            # an enum pickled as ``Class(value)``: its value (fairseq's enums name themselves)
            return to_plain(obj._args[0], _depth + 1)
        if isinstance(state, Mapping):
            return {str(k): to_plain(v, _depth + 1) for k, v in state.items()}
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], Mapping):  # (dict, slots)
            return {str(k): to_plain(v, _depth + 1) for k, v in {**(state[0] or {}), **state[1]}.items()}
        return [to_plain(a, _depth + 1) for a in obj._args] if obj._args else None
    if isinstance(obj, Mapping):
        return {(k if isinstance(k, (str, int)) else str(k)): to_plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(v, _depth + 1) for v in obj]
    try:  # real omegaconf / Namespace objects (from a plain torch.load of a trusted file)
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return to_plain(OmegaConf.to_container(obj, resolve=False, enum_to_str=True), _depth + 1)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(obj, types.SimpleNamespace) or type(obj).__name__ == "Namespace":
        return to_plain(vars(obj), _depth + 1)
    if isinstance(obj, enum.Enum):
        return obj.name
    return obj


def is_config_global(full: str) -> bool:
    """Whether ``module.Name`` is a config class a fairseq file may reference (read as an inert
    stand-in): omegaconf's containers and nodes, ``argparse.Namespace``, ``typing.Any``, enum
    bases, and CapWords classes (config dataclasses, enums) of fairseq / EAT / data2vec modules."""
    module, _, name = full.rpartition(".")
    if module.startswith("omegaconf.") or full in ("argparse.Namespace", "typing.Any"):
        return True
    if module == "enum" and name in _ENUM_BASES:
        return True
    return bool(_CONFIG_MODULES.match(module) and re.fullmatch(r"[A-Z][A-Za-z0-9_]*", name))


def _restricted_module(path: Path) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose Unpickler resolves only allow-listed globals."""
    import torch._weights_only_unpickler as wou

    tensor_globals = dict(wou._get_allowed_globals())

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            full = f"{module}.{name}"
            if full in tensor_globals:
                return tensor_globals[full]
            if module == "collections" and name == "OrderedDict":
                return tensor_globals["collections.OrderedDict"]
            if module == "collections" and name == "defaultdict":
                return _empty_dict  # omegaconf's resolver cache: its default factory is not kept
            if module in ("builtins", "__builtin__") and name in _PLAIN_BUILTINS:
                return _PLAIN_BUILTINS[name]
            if module == "copyreg" and name == "_reconstructor":
                return _reconstructor
            if is_config_global(full):
                return _inert_class(module, name)
            raise CheckpointError(
                f"{path}: refusing to unpickle it: it asks to import {full}, which is not a plain value of a"
                " fairseq checkpoint; nothing was run. Convert it in a trusted environment."
            )

    mod = types.ModuleType("avmae_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]

    def load(f, **kw):  # the legacy (non-zip) torch format calls pickle_module.load
        return RestrictedUnpickler(f, **kw).load()

    mod.load = load  # type: ignore[attr-defined]
    mod.__dict__["Pickler"] = pickle.Pickler
    return mod


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, _Inert):
        obj = cls()
        obj._state = state
        return obj
    if cls in (dict, list, tuple, set) and base is object:
        return cls()
    raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r} is not allowed")


def restricted_load(path: Union[str, os.PathLike]) -> Any:
    """``torch.load`` of ``path`` through the allow-list above (tensors on the CPU)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_module(path))
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable fairseq checkpoint ({type(exc).__name__}: {first})") from None


def is_fairseq_container(obj: Any) -> bool:
    """A fairseq checkpoint dict: ``model`` (a mapping) with ``cfg`` or ``args``."""
    return isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and ("cfg" in obj or "args" in obj)


def fairseq_state(obj: Mapping[str, Any], path: Union[str, os.PathLike] = "<checkpoint>") -> Tuple[Dict, Dict]:
    """A loaded fairseq dict -> (flat state dict with ``_ema.<name>`` entries, plain cfg)."""
    model = obj["model"]
    sd: Dict[str, torch.Tensor] = {}
    for k, v in model.items():
        if isinstance(v, torch.Tensor):
            sd[str(k)] = v
        elif k == "_ema" and isinstance(v, Mapping):
            for ek, ev in v.items():
                if isinstance(ev, torch.Tensor):
                    sd[EMA_PREFIX + str(ek)] = ev
        else:
            raise CheckpointError(f"{path}: model entry {k!r} is a {type(v).__name__}, not a tensor")
    cfg = to_plain(obj.get("cfg")) if obj.get("cfg") is not None else None
    if not isinstance(cfg, dict):
        cfg = {}
    if not cfg and obj.get("args") is not None:
        args = to_plain(obj["args"])
        if isinstance(args, dict):  # a pre-hydra file: one flat namespace for model and task
            cfg = {"model": args, "task": args}
    return sd, cfg


def read_fairseq(path: Union[str, os.PathLike]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a fairseq checkpoint -> (flat state dict, plain cfg); see the module doc."""
    obj = restricted_load(path)
    if not is_fairseq_container(obj):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' with 'cfg' or 'args')")
    sd, cfg = fairseq_state(obj, path)
    _logger.info("%s: fairseq checkpoint, %d tensors", path, len(sd))
    return sd, cfg


def take_teacher(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A flat state dict with the EMA teacher's weights (``_ema.<name>``) in place of the
    student's wherever the teacher has them; keys the teacher lacks stay the student's, and the
    ``_ema.*`` entries themselves go."""
    ema = {k[len(EMA_PREFIX) :]: v for k, v in sd.items() if k.startswith(EMA_PREFIX)}
    if not ema:
        raise CheckpointError("the file holds no EMA teacher (_ema); only EAT / data2vec pretraining files do")
    student = {k: v for k, v in sd.items() if not k.startswith(EMA_PREFIX)}
    kept = [k for k in student if k not in ema]
    if kept:
        _logger.info("teacher: %d tensors are the student's (not in _ema), e.g. %s", len(kept), kept[:3])
    return {k: ema.get(k, v) for k, v in student.items()}

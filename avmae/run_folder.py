"""The run folder: its layout, its checkpoints, and where the weights of a run are.

One owner for what the trainer writes and what ``avmae.hub`` / the tools read back::

    <run>/
      config.yaml            the resolved run config
      run.json               the derived run plan
      metrics.jsonl          one JSON record per log step
      skipped.tsv            unreadable clips (path<TAB>reason), merged from skipped/
      checkpoints/step_0000120/
        model.safetensors    the exported weights (``avmae.load_checkpoint`` reads them)
        trainer_state.json   progress (step, epoch, counts)
        config.yaml          the config of the run that wrote it
        optimizer.bin, random_states_<rank>.pkl, ...   accelerate's state

``list_checkpoints`` / ``find_latest_checkpoint`` list complete checkpoint folders (a folder is
written under a temporary name and renamed when complete); ``resolve_weights`` turns a weights
file, a checkpoint folder or a run folder into the weights file to load; ``check_pickled_states``
refuses a checkpoint whose pickled states hold more than tensors and plain values.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, List, Optional, Union

import torch

from .checkpoint import CheckpointError

__all__ = [
    "CHECKPOINT_DIR",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "METRICS_FILE",
    "RUN_INFO_FILE",
    "SKIP_DIR",
    "SKIPPED_FILE",
    "checkpoint_dir",
    "list_checkpoints",
    "find_latest_checkpoint",
    "resolve_weights",
    "check_pickled_states",
]

PathLike = Union[str, os.PathLike]

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RUN_INFO_FILE = "run.json"
SKIP_DIR = "skipped"  # the datasets' per-process skip logs, one folder per split
SKIPPED_FILE = "skipped.tsv"  # all skipped clips of the run: path<TAB>reason

_STEP = re.compile(r"^step_(\d+)$")
# what a complete checkpoint folder holds whatever wrote it (accelerate adds its own files)
_REQUIRED = (STATE_FILE, WEIGHTS_FILE)


def checkpoint_dir(run_dir: PathLike, step: int) -> Path:
    """``<run>/checkpoints/step_XXXXXXX`` of optimizer step ``step``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}"


def _step_folders(root: Path) -> List[tuple]:
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def list_checkpoints(run_dir: PathLike) -> List[Path]:
    """Complete checkpoint folders of a run (holding its state and its weights), oldest first."""
    return [p for _, p in _step_folders(Path(run_dir) / CHECKPOINT_DIR) if all((p / f).is_file() for f in _REQUIRED)]


def find_latest_checkpoint(run_dir: PathLike) -> Optional[Path]:
    """The newest complete checkpoint folder of a run, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def resolve_weights(path: PathLike) -> Path:
    """The weights file of a weights file, a checkpoint folder, or a run folder (the newest of its
    checkpoints that holds weights; also a bare folder of ``step_*`` checkpoints)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file or folder")
    if (p / WEIGHTS_FILE).is_file():
        return p / WEIGHTS_FILE
    root = p / CHECKPOINT_DIR if (p / CHECKPOINT_DIR).is_dir() else p
    with_weights = [d for _, d in _step_folders(root) if (d / WEIGHTS_FILE).is_file()]
    latest = with_weights[-1] if with_weights else None
    if latest is None:
        raise CheckpointError(f"{p}: a folder with neither {WEIGHTS_FILE} nor {CHECKPOINT_DIR}/step_*/{WEIGHTS_FILE}")
    return latest / WEIGHTS_FILE


def _state_safe_globals() -> List[Any]:
    """What accelerate's pickled states need beyond tensors: numpy arrays (RNG states)."""
    try:
        from accelerate.utils.other import TORCH_SAFE_GLOBALS

        return list(TORCH_SAFE_GLOBALS)
    except ImportError:
        import codecs

        import numpy as np

        core = getattr(np, "_core", None) or np.core
        return [core.multiarray._reconstruct, np.ndarray, np.dtype, codecs.encode]


def check_pickled_states(ckpt: PathLike) -> None:
    """Read every pickled file of a checkpoint folder (``*.bin``, ``*.pkl``, ``*.pt``, ``*.pth``)
    with ``weights_only=True`` (tensors, plain values and numpy arrays only); raise
    ``CheckpointError`` naming the file when one holds anything else. Tensors are memory-mapped,
    not read."""
    safe = _state_safe_globals()
    for f in sorted(Path(ckpt).iterdir()):
        if f.suffix not in (".bin", ".pkl", ".pt", ".pth") or not f.is_file():
            continue
        try:
            with torch.serialization.safe_globals(safe):
                try:
                    torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap" not in str(exc):
                        raise
                    torch.load(f, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
        except pickle.UnpicklingError as exc:
            lines = str(exc).strip().splitlines()
            detail = next((line.strip() for line in lines if "GLOBAL" in line), None)
            if detail is None:  # not a pickle of known objects: corrupt
                what = next((line.strip() for line in lines if line.startswith("Unsupported")), "not a torch pickle")
                raise CheckpointError(f"{f}: unreadable ({what})") from None
            raise CheckpointError(
                f"{f}: refusing to resume from it: it holds more than tensors and plain values ({detail}). "
                "Only resume from checkpoints you trust."
            ) from None
        except Exception as exc:
            raise CheckpointError(f"{f}: unreadable ({type(exc).__name__}: {exc})") from exc

"""The run folder: its layout, its checkpoints, and where the weights of a run are.

One owner for what the trainer writes and what ``avmae.hub`` / the tools read back::

    <run>/
      config.yaml            the resolved run config
      run.json               the derived run plan
      metrics.jsonl          one JSON record per log step
      skipped.tsv            unreadable clips (path<TAB>reason), merged from skipped/
      run.lock               held by the trainer writing the folder (host, pid, start time)
      checkpoints/step_0000120/
        model.safetensors    the exported weights (``avmae.load_checkpoint`` reads them)
        trainer_state.json   progress (step, epoch, counts)
        config.yaml          the config of the run that wrote it
        optimizer.bin, random_states_<rank>.pkl, ...   accelerate's state
        manifest.json        size and sha256 of every other file, written last

A checkpoint folder is written under a temporary name (``.tmp-step_*``), its manifest last, every
file and the folder flushed to disk (fsync), and only then renamed to ``step_*``; a folder leaving
the list is first renamed to ``.trash-step_*``, then deleted. So a ``step_*`` folder is complete
unless the disk lost data, which its manifest reveals.

``list_checkpoints`` / ``find_latest_checkpoint`` list complete checkpoint folders: a manifest,
and every file it lists present with its recorded size (``checkpoint_problem`` says what is
wrong with a folder; ``deep=True`` also compares the hashes). ``write_manifest`` writes the
manifest of a folder. ``resolve_weights`` turns a weights file, a checkpoint folder or a run folder
into the weights file to load; ``check_pickled_states`` refuses a checkpoint whose pickled states
hold more than tensors and plain values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from .checkpoint import CheckpointError, fsync_dir, unpickling_reason
from .files import to_json

_logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_DIR",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "METRICS_FILE",
    "RUN_INFO_FILE",
    "SKIP_DIR",
    "SKIPPED_FILE",
    "MANIFEST_FILE",
    "LOCK_FILE",
    "checkpoint_dir",
    "step_folders",
    "checkpoint_problem",
    "write_manifest",
    "file_sha256",
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
HF_TORCH_WEIGHTS = "pytorch_model.bin"  # the weights of a Hugging Face folder without safetensors
MANIFEST_FILE = "manifest.json"  # in a checkpoint folder: {"files": {name: {"size", "sha256"}}}
LOCK_FILE = "run.lock"

_STEP = re.compile(r"^step_(\d+)$")
# what a complete checkpoint folder holds whatever wrote it (accelerate adds its own files)
_REQUIRED = (STATE_FILE, WEIGHTS_FILE)
_CHUNK = 1 << 22


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


def step_folders(run_dir: PathLike) -> List[Path]:
    """Every ``checkpoints/step_*`` folder of a run, complete or not, oldest first."""
    return [p for _, p in _step_folders(Path(run_dir) / CHECKPOINT_DIR)]


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: PathLike) -> Dict[str, Any]:
    """Write ``folder/manifest.json``: size and sha256 of every other file in ``folder`` (flat).
    Every file, the manifest and the folder are flushed to disk (fsync) before it returns, so a
    rename of the folder afterwards publishes only data that is on the disk. -> the manifest."""
    folder = Path(folder)
    files: Dict[str, Dict[str, Any]] = {}
    for f in sorted(folder.iterdir()):
        if f.name == MANIFEST_FILE or not f.is_file():
            continue
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
            os.fsync(fh.fileno())  # files written by other processes too (same host or shared filesystem)
        files[f.name] = {"size": f.stat().st_size, "sha256": h.hexdigest()}
    manifest = {"format": 1, "files": files}
    with open(folder / MANIFEST_FILE, "w", encoding="utf-8") as fh:
        fh.write(to_json(manifest, indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(folder)
    return manifest


def checkpoint_problem(folder: PathLike, *, deep: bool = False) -> Optional[str]:
    """What makes checkpoint ``folder`` incomplete or damaged, or None when it is complete: its
    manifest, and every file the manifest lists with the recorded size (``deep``: and sha256)."""
    folder = Path(folder)
    try:
        raw = (folder / MANIFEST_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (an interrupted save, or written before checkpoints had manifests)"
    except OSError as exc:
        return f"{MANIFEST_FILE} unreadable ({exc.strerror or exc})"
    try:
        files = json.loads(raw)["files"]
        entries = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{MANIFEST_FILE} damaged ({type(exc).__name__})"
    for name in _REQUIRED:
        if name not in entries:
            return f"{MANIFEST_FILE} lists no {name}"
    for name, (size, digest) in entries.items():
        try:
            found = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if found != size:
            return f"{name} has {found} bytes, {size} were written (truncated or damaged)"
        if deep and file_sha256(folder / name) != digest:
            return f"{name} does not match the sha256 recorded when it was written (damaged)"
    return None


def list_checkpoints(run_dir: PathLike) -> List[Path]:
    """Complete checkpoint folders of a run, oldest first: a manifest, and every file it lists
    present with its recorded size (``checkpoint_problem``)."""
    return [p for p in step_folders(run_dir) if checkpoint_problem(p) is None]


def find_latest_checkpoint(run_dir: PathLike) -> Optional[Path]:
    """The newest complete checkpoint folder of a run, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def resolve_weights(path: PathLike) -> Path:
    """The weights file of a weights file, a checkpoint folder, or a run folder (also a bare
    folder of ``step_*`` checkpoints): the newest complete checkpoint's; a newer damaged one is
    named in a warning. A folder of checkpoints written before manifests existed gives its newest
    weights file."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file or folder")
    if (p / WEIGHTS_FILE).is_file():
        problem = checkpoint_problem(p) if (p / MANIFEST_FILE).exists() else None
        if problem is not None:
            raise CheckpointError(f"{p}: damaged checkpoint: {problem}; use another checkpoint of the run")
        return p / WEIGHTS_FILE
    if (p / HF_TORCH_WEIGHTS).is_file():  # a Hugging Face folder saved without safetensors (an HF port)
        return p / HF_TORCH_WEIGHTS
    root = p / CHECKPOINT_DIR if (p / CHECKPOINT_DIR).is_dir() else p
    folders = [d for _, d in _step_folders(root)]
    damaged = []
    for d in reversed(folders):
        problem = checkpoint_problem(d)
        if problem is None:
            for bad, why in damaged:
                _logger.warning("skipping checkpoint %s (%s); using the previous complete one, %s", bad, why, d.name)
            return d / WEIGHTS_FILE
        damaged.append((d, problem))
    legacy = [d for d in folders if (d / WEIGHTS_FILE).is_file()]
    if legacy and not any(
        (d / MANIFEST_FILE).exists() for d in folders
    ):  # written before manifests existed: nothing to verify
        return legacy[-1] / WEIGHTS_FILE
    if damaged:
        raise CheckpointError(
            f"{p}: no complete checkpoint (" + "; ".join(f"{d.name}: {why}" for d, why in damaged) + ")"
        )
    raise CheckpointError(f"{p}: a folder with neither {WEIGHTS_FILE} nor {CHECKPOINT_DIR}/step_*/{WEIGHTS_FILE}")


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
            detail, code = unpickling_reason(exc)
            if not code:  # not a pickle of known objects: corrupt
                raise CheckpointError(f"{f}: unreadable ({detail})") from None
            raise CheckpointError(
                f"{f}: refusing to resume from it: it holds more than tensors and plain values ({detail}). "
                "Only resume from checkpoints you trust."
            ) from None
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(f"{f}: unreadable ({type(exc).__name__}: {first})") from exc

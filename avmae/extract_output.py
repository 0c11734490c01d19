"""What ``avmae.extract`` gives for each file (``ClipFeatures``) and how it is written: one
``.npy`` per file (``write_npy``), or all files stacked into one archive (``stack_results``,
``write_archive``). Public through ``avmae.extract``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .files import give_umask_mode, to_json

__all__ = ["ClipFeatures", "write_npy", "stack_results", "write_archive"]

PathLike = Union[str, os.PathLike]

# keys whose values are per window (stacked over windows in archives)
_PER_WINDOW = ("window_embedding", "window_contextual", "window_frames", "patches", "contextual_patches")


@dataclass
class ClipFeatures:
    """One file's result: ``arrays`` (float32 numpy, see the module doc) or the ``error`` that skipped it."""

    path: str
    index: int
    arrays: Optional[Dict[str, np.ndarray]] = None
    error: Optional[str] = None
    num_windows: int = 0


def write_npy(result: ClipFeatures, out_dir: PathLike, name: str) -> List[Path]:
    """``out_dir/<name>.npy`` (the embedding) and ``out_dir/<name>.<key>.npy`` for the other arrays."""
    assert result.arrays is not None, "only extracted files are written"
    written = []
    for key, value in result.arrays.items():
        p = Path(out_dir) / (f"{name}.npy" if key == "embedding" else f"{name}.{key}.npy")
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, value if key == "window_frames" else value.astype(np.float32, copy=False))
        written.append(p)
    return written


def stack_results(results: Sequence[ClipFeatures]) -> Dict[str, np.ndarray]:
    """Extracted files -> archive arrays: per file ``[N, ...]`` (``embedding``, ``contextual``),
    per window ``[sum n_i, ...]`` with ``window_offsets [N + 1]`` (file i owns rows
    ``offsets[i]:offsets[i+1]``), and ``num_windows [N]``."""
    done = [r for r in results if r.arrays is not None]
    if not done:
        return {}
    counts = np.array([r.num_windows for r in done], dtype=np.int64)
    out: Dict[str, np.ndarray] = {
        "num_windows": counts,
        "window_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    }
    for key in done[0].arrays:
        parts = [r.arrays[key] for r in done]
        joined = (np.concatenate if key in _PER_WINDOW else np.stack)(parts)
        out[key] = joined if key == "window_frames" else joined.astype(np.float32, copy=False)
    return out


def write_archive(
    results: Sequence[ClipFeatures],
    path: PathLike,
    *,
    names: Optional[Sequence[str]] = None,
    meta: Optional[Mapping[str, Any]] = None,
) -> Path:
    """One ``.npz`` or ``.safetensors`` file (by suffix) for all files.

    npz: the arrays of ``stack_results`` plus ``files`` (str, the extracted paths in row order),
    ``names``, ``skipped`` and ``skipped_reasons`` (str), and ``meta`` (a JSON string).
    safetensors: the arrays as tensors; files, names, skipped and meta as JSON in the metadata.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = [r for r in results if r.arrays is not None]
    skipped = [r for r in results if r.arrays is None]
    by_index = {r.index: n for r, n in zip(results, names)} if names is not None else {}
    files = [r.path for r in done]
    row_names = [by_index.get(r.index, Path(r.path).stem) for r in done]
    arrays = stack_results(results)
    info = {
        "files": files,
        "names": row_names,
        "skipped": [r.path for r in skipped],
        "skipped_reasons": [r.error or "" for r in skipped],
        "meta": dict(meta or {}),
    }
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()},
            str(path),
            metadata={k: to_json(v) for k, v in info.items()},
        )
        give_umask_mode(path)
    elif path.suffix == ".npz":
        np.savez(
            path,
            **arrays,
            files=np.array(files, dtype=str),
            names=np.array(row_names, dtype=str),
            skipped=np.array(info["skipped"], dtype=str),
            skipped_reasons=np.array(info["skipped_reasons"], dtype=str),
            meta=np.array(to_json(info["meta"])),
        )
    else:
        raise ValueError(f"{path}: an archive must end in .npz or .safetensors")
    return path

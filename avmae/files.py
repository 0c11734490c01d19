"""Writing files safely: one way to replace a file atomically, one JSON encoding.

``atomic_write(path, data)`` writes ``str`` (UTF-8) or ``bytes`` to a temporary file in the same
folder, flushes and fsyncs it, gives it the mode the process umask gives a new file, and renames it
over ``path`` (``os.replace``). A reader sees the old file or the new one, never a part. Each call
has its own temporary name, so several processes may write the same path at once: the last rename
wins and every version is complete. ``atomic_path(path)`` is the same as a context manager yielding
the temporary path, for writers that want a file name (safetensors, PIL, tarfile); on an exception
the temporary file is removed and ``path`` is left as it was.

JSON: ``to_json(obj)`` / ``write_json(path, obj)`` are the encoder every JSON file of the project
goes through. Its policy for numbers JSON cannot hold: **NaN and +-inf are written as ``null``**
(strict JSON that every parser reads; a reader takes ``null`` for "no finite value"). Tensors and
numpy scalars become Python numbers, tuples lists, mapping keys strings; anything else not JSON is
refused (TypeError) unless ``default`` says how to write it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

__all__ = ["atomic_write", "atomic_path", "to_json", "write_json", "json_plain", "fsync_dir", "give_umask_mode"]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, for all threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_mode(path: PathLike) -> None:
    """Set a file's mode to what the process umask gives a new file (temporary files and the
    safetensors writer create theirs 0600, unreadable for the colleagues of a shared cluster)."""
    os.chmod(path, 0o666 & ~_umask())


def fsync_dir(path: PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; when the block ends without an exception the
    file written there is fsynced and renamed over ``path`` (the folder is created first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        give_umask_mode(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write(path: PathLike, data: Union[str, bytes], *, encoding: str = "utf-8") -> Path:
    """Replace ``path`` by ``data`` (text in ``encoding``, or bytes) atomically; returns ``path``."""
    path = Path(path)
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
    return path


def json_plain(obj: Any) -> Any:
    """``obj`` with the project's JSON policy applied: non-finite floats -> None, tensors and numpy
    arrays -> (lists of) Python numbers, tuples -> lists, mapping keys -> strings."""
    if hasattr(obj, "tolist"):  # tensors, numpy arrays and scalars
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_plain(v) for v in obj]
    return obj


def to_json(obj: Any, *, indent: Optional[int] = None, default: Optional[Callable[[Any], Any]] = None, **kw) -> str:
    """``obj`` as strict JSON text under the project's policy (see the module docstring)."""
    return json.dumps(json_plain(obj), indent=indent, default=default, allow_nan=False, **kw)


def write_json(path: PathLike, obj: Any, *, indent: Optional[int] = 1, **kw) -> Path:
    """Write ``obj`` as JSON (``to_json``) to ``path`` atomically; returns ``path``."""
    return atomic_write(path, to_json(obj, indent=indent, **kw))

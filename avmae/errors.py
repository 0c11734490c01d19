"""One line for each error a user can act on, and the tools' use of it.

``explain(exc) -> (line, exit status)`` or None for an error that is not the user's to fix (a bug:
it keeps its traceback). The line names the file, the reason and what to do:

- ``ConfigError`` (status 2), ``ManifestError`` (2): ``config error: <key>: ...``, ``data error: ...``;
- ``MediaError`` (1): ``data error: <file>: <reason>``, plus the tool's hint (the trainer's names
  ``data.on_error=skip``);
- ``CheckpointError`` (1): ``checkpoint error: <file>: <reason>; <what to do>``;
- ``RunLockError`` (1): the run folder and the trainer holding it;
- ``NonFiniteLossError``, ``TooManySkippedError`` (1): ``training stopped: ...``;
- ``OSError`` naming a file (1): ``error: <file>: <reason>: <what to do>`` (not writable, a part
  of the path is a file, disk full, ...).

An exception raised in a DataLoader worker reaches the main process with the worker's traceback in
its message; its last line is the original message, and only that is shown.

``tool_main(prog, hints=...)`` wraps a tool's ``main(argv) -> int``: an explained error is printed
as one line on stderr and its status returned. ``writable_output(path)`` checks an output path
before any work (an hour of extraction must not end in a write error).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Type

__all__ = ["explain", "one_line", "tool_logging", "tool_main", "writable_output", "TERMINATED", "SKIP_BAD_CLIPS"]

TERMINATED = 143  # a training tool's exit status when SIGTERM stopped it after saving a checkpoint (128 + SIGTERM)
# the training tools' hint for an unreadable clip under data.on_error=raise
SKIP_BAD_CLIPS = "set data.on_error=skip to skip unreadable clips (they are then listed in <run>/skipped.tsv)"

# what the training tools keep quiet: accelerate's per-checkpoint and start-up chatter
ACCELERATE_CHATTER = ("accelerate.checkpointing", "accelerate.accelerator")


def tool_logging(quiet: Tuple[str, ...] = ACCELERATE_CHATTER, *, all_ranks: bool = False) -> bool:
    """A tool's logging: INFO with timestamps (WARNING on processes other than rank 0 of a launched
    job, unless ``all_ranks``), the ``quiet`` loggers at WARNING. -> whether this is rank 0."""
    import logging

    main_rank = int(os.environ.get("RANK", "0")) == 0  # set by torchrun / accelerate launch
    logging.basicConfig(
        level=logging.INFO if main_rank or all_ranks else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    return main_rank


_OS_HINTS: Dict[int, str] = {
    errno.EACCES: "permission denied: choose a location you can write to (or read), or fix its permissions",
    errno.EPERM: "operation not permitted: choose another location, or fix its permissions",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.EEXIST: "it exists and is not a folder: choose another path",
    errno.EISDIR: "it is a folder: give a file name",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOSPC: "no space left on the device: free some space or choose another location",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another location",
    errno.EROFS: "read-only filesystem: choose another location",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def one_line(text: str) -> str:
    """The message of ``text`` on one line. A DataLoader worker's re-raised exception carries the
    worker's traceback ("Caught X in DataLoader worker process N. Original Traceback ..."): its
    last line holds the original message, without the ``module.Class: `` prefix."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if len(lines) > 1 and "Original Traceback" in text:
        last = lines[-1]
        head, sep, rest = last.partition(": ")
        return rest if sep and " " not in head else last
    return " ".join(lines)


def _classes() -> Dict[str, Type[BaseException]]:
    """The project's user-facing error classes, imported when an error is explained."""
    found: Dict[str, Type[BaseException]] = {}
    from .checkpoint import CheckpointError
    from .config import ConfigError

    found.update(CheckpointError=CheckpointError, ConfigError=ConfigError)
    try:
        from .data import ManifestError, MediaError, TooManySkippedError

        found.update(ManifestError=ManifestError, MediaError=MediaError, TooManySkippedError=TooManySkippedError)
    except ImportError:  # pragma: no cover - the data extras missing
        pass
    try:
        from .train.guard import NonFiniteLossError
        from .train.run_lock import RunLockError

        found.update(NonFiniteLossError=NonFiniteLossError, RunLockError=RunLockError)
    except ImportError:  # pragma: no cover
        pass
    return found


def explain(exc: BaseException, hints: Optional[Mapping[type, str]] = None) -> Optional[Tuple[str, int]]:
    """(one line, exit status) for an error the user can act on, else None. ``hints``: text added
    after the message of an error of that class (e.g. what setting skips it)."""
    c = _classes()
    msg = one_line(str(exc))
    hint = next((h for t, h in (hints or {}).items() if isinstance(exc, t)), None)
    if hint:
        msg = f"{msg}; {hint}"

    def isa(*names: str) -> bool:
        return any(n in c and isinstance(exc, c[n]) for n in names)

    if isa("ConfigError"):
        return f"config error: {msg}", 2
    if isa("ManifestError"):
        return f"data error: {msg}", 2
    if isa("MediaError"):
        return f"data error: {msg}", 1
    if isa("CheckpointError"):
        return f"checkpoint error: {msg}", 1
    if isa("RunLockError"):
        return f"run folder in use: {msg}", 1
    if isa("NonFiniteLossError", "TooManySkippedError"):
        return f"training stopped: {msg}", 1
    if isinstance(exc, OSError) and exc.filename is not None:
        what = _OS_HINTS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return f"error: {where}: {what}" + (f"; {hint}" if hint else ""), 1
    return None


def tool_main(prog: str = "", hints: Optional[Mapping[type, str]] = None) -> Callable:
    """Decorator for a tool's ``main(argv) -> int``: errors ``explain`` knows become one line on
    stderr (``<prog>: <line>``) and the exit status; others propagate with their traceback."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: Optional[List[str]] = None) -> int:
            try:
                return main(argv)
            except Exception as exc:
                found = explain(exc, hints)
                if found is None:
                    raise
                line, status = found
                print(f"{prog}: {line}" if prog else line, file=sys.stderr)
                return status

        return run

    return wrap


def writable_output(path: os.PathLike[str] | str, *, folder: bool = False) -> Path:
    """Make sure ``path`` (a file; with ``folder``, a folder) can be written, before any work:
    creates the folder (or the file's folder) and raises the ``OSError`` that writing would raise
    (``explain`` makes it one line). -> the path."""
    p = Path(path).expanduser()
    target = p if folder else (p.parent if str(p.parent) else Path("."))
    target.mkdir(parents=True, exist_ok=True)
    if not folder and p.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(p))
    if not os.access(target, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))
    return p

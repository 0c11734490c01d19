"""One trainer per run folder: ``RunLock`` holds ``<run>/run.lock`` while a run trains.

The lock file names its holder (host, pid, start time, command line). It is held with a POSIX
record lock (``fcntl.lockf``): the kernel releases it when the holder exits however it exits
(SIGKILL included), and forked children (DataLoader workers) do not inherit it, so a run killed
hard never blocks the next one. Whoever acquires a lock file that still names an earlier holder
took over a stale lock (that process is gone) and says so in a warning.

Where the filesystem has no record locks (some network filesystems), the file alone decides: a
holder on this host whose pid is gone is stale and taken over; a holder on another host is
assumed alive (delete the file by hand once that run is over).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Set

from ..files import to_json
from ..run_folder import LOCK_FILE

_logger = logging.getLogger(__name__)

__all__ = ["RunLock", "RunLockError"]

# run folders locked by this process (record locks do not exclude their own process)
_HELD: Set[str] = set()


class RunLockError(RuntimeError):
    """The run folder is in use by another trainer. The message names the holder."""


def _describe(holder: Dict[str, Any]) -> str:
    if not holder:
        return "a trainer that did not name itself"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}"


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_holder(fd: int) -> Dict[str, Any]:
    try:
        raw = os.pread(fd, 1 << 16, 0)
        holder = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {"host": "?", "pid": "?"}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """``RunLock(run_dir).acquire()`` ... ``release()`` (or ``with RunLock(run_dir):``).

    ``acquire`` raises ``RunLockError`` naming the holder when another live process holds the
    folder; it takes over a stale lock with a warning.
    """

    def __init__(self, run_dir: os.PathLike | str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: Optional[int] = None
        self._key = ""

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _me(self) -> bytes:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": round(time.time(), 3), "argv": sys.argv}
        return to_json(me).encode("utf-8")

    def _busy(self, holder: Dict[str, Any]) -> RunLockError:
        return RunLockError(
            f"{self.run_dir} is in use by another trainer ({_describe(holder)}; lock file {self.path}): "
            "wait for that run to end or stop it, or choose another --output-dir"
        )

    def acquire(self) -> None:
        key = self._key = str(self.path.resolve())
        if key in _HELD:
            raise RunLockError(f"{self.run_dir} is in use by another trainer of this process (lock file {self.path})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                import fcntl

                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):  # held by a live process
                holder = _read_holder(fd)
                os.close(fd)
                raise self._busy(holder) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                self._acquire_by_file()
                _HELD.add(key)
                return
            except ImportError:  # no fcntl (Windows): the file alone decides
                os.close(fd)
                self._acquire_by_file()
                _HELD.add(key)
                return
            try:  # a releasing holder deletes the file: the one locked must still be the one at the path
                current = os.stat(self.path)
            except FileNotFoundError:
                os.close(fd)
                continue
            if current.st_ino != os.fstat(fd).st_ino:
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous:
                _logger.warning(
                    "took over the stale lock of a trainer that is gone (%s): %s", _describe(previous), self.path
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._me(), 0)
            os.fsync(fd)
            self._fd = fd
            _HELD.add(key)
            return
        raise RunLockError(
            f"{self.path}: could not take the run lock (it kept changing); is another trainer starting on"
            f" {self.run_dir}?"
        )

    def _acquire_by_file(self) -> None:
        """Exclusive creation of the lock file, for filesystems without record locks."""
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                with open(self.path, "rb") as f:
                    holder = _read_holder(f.fileno())
                if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
                    _logger.warning(
                        "took over the stale lock of a trainer that is gone (%s): %s", _describe(holder), self.path
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._busy(holder) from None
            os.write(fd, self._me())
            os.fsync(fd)
            self._fd = fd
            return
        raise RunLockError(f"{self.path}: could not take the run lock")

    def release(self) -> None:
        """Delete the lock file and let go of it (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)  # drops the record lock
            _HELD.discard(self._key)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

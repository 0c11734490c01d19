"""The trainer's DataLoaders, their workers, the stop request (SIGTERM), and processes that die
with their parent.

Workers are seeded (``avmae.data.seed_worker``) and ignore SIGTERM: a preempted job's SIGTERM
often reaches every process of the group, and a worker killed by it made the main process fail
(DataLoader's SIGCHLD check) in the middle of the final checkpoint. The main process saves, then
stops its workers (``stop_workers``).

Workers are forked (the platform default on Linux), not spawned: with ``forkserver`` or
``spawn`` each worker imports torch and avmae again, and the first batch of the AV test dataset
with 2 workers came after 28-35 s instead of 0.3-0.5 s (2-core Xeon, shared). Forking is safe
because nothing the data code runs leaves a thread behind in the parent: decoders run in the
calling thread and frames are converted by a scaler made per call (``avmae.data.video._to_rgb``
says what hung when PyAV's per-thread scaler was inherited); torch's own intra-op pool is set
to one thread in every worker.

``die_with_parent`` (Linux): the kernel kills the calling process when its parent dies. A
DataLoader worker calls it (its parent is the training process), and so does each training
process started by a launcher (torchrun, ``accelerate launch``, ``python -m avmae.launch``): a
launcher killed with SIGKILL leaves no worker behind. A training process started from a shell is
left alone (``nohup`` keeps working).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_logger = logging.getLogger(__name__)

__all__ = ["build_loader", "stop_workers", "StopRequest", "die_with_parent", "die_with_launcher"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: Optional[int] = None) -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).
    ``parent``: the parent's pid as seen earlier; if it is already gone, exit now. -> whether set.

    The signal follows the parent *thread*: call it in processes started from a thread that
    lives as long as they should (the launcher's main thread, the training loop's thread)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def _parent_is_accelerate_launch() -> bool:
    """Whether the parent process is ``accelerate launch`` (its one-process launcher runs the
    script as a plain child, without torchrun's agent)."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return "launch" in args and any(os.path.basename(a).startswith("accelerate") for a in args[:2])


def die_with_launcher() -> bool:
    """``die_with_parent`` in a training process started by a launcher: torchrun's elastic agent
    (which ``python -m avmae.launch`` and a multi-process ``accelerate launch`` run too; it sets
    ``TORCHELASTIC_RUN_ID``) or a one-process ``accelerate launch``; else nothing."""
    if not (
        os.environ.get("TORCHELASTIC_RUN_ID")
        or (os.environ.get("ACCELERATE_USE_CPU") is not None and _parent_is_accelerate_launch())
    ):
        return False
    return die_with_parent()


def _init_worker(worker_id: int, parent: Optional[int] = None) -> None:
    """DataLoader ``worker_init_fn``: gone with the training process (pid ``parent``),
    ``seed_worker``, one intra-op thread, SIGTERM ignored."""
    from ..data import seed_worker
    from .threads import worker_threads

    die_with_parent(parent)
    seed_worker(worker_id)
    worker_threads()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int,
    seed: int,
    pin_memory: bool,
    sampler: Optional[Sampler] = None,
) -> DataLoader:
    """A loader of ``dataset``: in ``sampler``'s order with whole batches (training), else in
    order with every item (evaluation); persistent, seeded workers."""
    g = torch.Generator()
    g.manual_seed(seed)  # worker seeds; keeps the global RNG untouched
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=sampler is not None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=functools.partial(_init_worker, parent=os.getpid()),
        generator=g,
    )


def stop_workers(*loaders: Optional[DataLoader]) -> None:
    """Shut the persistent DataLoader workers down now. Left to interpreter exit, they would
    outlive ``fit`` (notebooks) and, as they ignore SIGTERM, hang the exit of a preempted run."""
    for loader in loaders:
        it = getattr(loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            try:
                it._shutdown_workers()
            except Exception as exc:  # never mask the run's own outcome
                _logger.debug("stopping DataLoader workers: %s", exc)
            loader._iterator = None


class StopRequest:
    """SIGTERM as a flag: ``with StopRequest() as stop:`` ... ``stop.signal`` names the signal once
    received (the run then saves a checkpoint at the end of the step and returns). Outside the main
    thread no handler can be installed and the flag stays unset."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self._previous = None

    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():

            def handler(signum, frame):
                self.signal = signal.Signals(signum).name
                _logger.warning("%s received: saving a checkpoint at the end of this step", self.signal)

            self._previous = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

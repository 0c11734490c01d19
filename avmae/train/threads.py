"""CPU thread settings of a training process, chosen once at the trainer's setup and logged.

- intra-op threads (``torch.set_num_threads``): ``train.threads``; ``auto`` = ``OMP_NUM_THREADS``
  when set, else the cores this process may use (its CPU affinity, ``os.sched_getaffinity``,
  capped by a cgroup CPU quota), not the machine's core count;
- OpenMP wait policy: ``PASSIVE`` unless chosen otherwise, set before torch loads its OpenMP
  runtime (``avmae/_openmp.py``: the runtime reads it only then), so that idle pool threads sleep
  instead of spinning on cores another process needs; reported here;
- DataLoader workers: one intra-op thread each (torch's worker loop sets it; ``worker_threads``
  is called again from the trainer's ``worker_init_fn`` so the rule does not rest on a default).

Measured in BENCHMARKS.md ("Shared machine"): with torch's defaults the demo step with 2 threads
beside one busy process took several times its time alone; with these settings it slows about in
proportion to the share of the cores it gets.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from .. import _openmp
from ..config import ConfigError

_logger = logging.getLogger(__name__)

__all__ = ["ThreadSettings", "usable_cpus", "configure_threads", "worker_threads"]


def _cgroup_cpu_limit() -> Optional[int]:
    """CPUs allowed by a cgroup v2 quota (``cpu.max``: "quota period"), rounded up; None if none."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_cpu_limit()
    return max(1, min(n, limit) if limit else n)


@dataclass
class ThreadSettings:
    intra_op: int
    usable_cpus: int
    source: str
    wait_policy: str  # what the OpenMP runtime of this process read (or "unknown")

    def describe(self) -> str:
        return (
            f"{self.intra_op} intra-op thread(s) ({self.source}; {self.usable_cpus} usable core(s)), "
            f"OpenMP wait policy {self.wait_policy}, 1 thread per data-loading worker"
        )


def _parse(threads: Union[str, int, None]) -> Optional[int]:
    if threads is None or str(threads).strip().lower() == "auto":
        return None
    try:
        n = int(threads)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError("train.threads", f"must be 'auto' or a number of threads >= 1, got {threads!r}")
    return n


def configure_threads(
    threads: Union[str, int, None] = "auto", *, device: Optional[torch.device] = None
) -> ThreadSettings:
    """Set this process's intra-op threads (see the module doc) -> what was set, logged.

    ``threads``: ``train.threads`` ("auto" or a count). On a GPU the CPU threads matter little;
    the same rule applies."""
    n = _parse(threads)
    usable = usable_cpus()
    if n is not None:
        source = "train.threads"
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        n, source = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        n, source = usable, "auto: the cores this process may use"
    if n > usable:
        _logger.warning("%d intra-op threads on %d usable core(s): threads will wait for each other", n, usable)
    torch.set_num_threads(n)
    policy = _openmp.policy_at_load
    if policy is None:
        policy = (
            "unknown (torch was imported before avmae;"
            f" {_openmp.WAIT_POLICY}={os.environ.get(_openmp.WAIT_POLICY, 'unset')} for child processes)"
        )
    settings = ThreadSettings(n, usable, source, policy)
    _logger.info("threads: %s", settings.describe())
    if policy == "unset" and n > 1:
        _logger.info(
            "OpenMP threads spin while idle (OMP_WAIT_POLICY unset): a run beside another busy process may slow down"
            " many times"
        )
    return settings


def worker_threads() -> None:
    """In a DataLoader worker: one intra-op thread (the workers are the parallelism)."""
    torch.set_num_threads(1)

"""OpenMP's wait policy, set before torch loads its OpenMP runtime (``avmae/__init__`` imports this first).

The runtime reads ``OMP_WAIT_POLICY`` once, when it is loaded (``import torch``), so the trainer's
setup (``avmae.train.threads``) is too late to choose it. By default GNU OpenMP lets an idle
thread spin for a while before it sleeps; when another busy process shares the cores, the
spinning thread takes the core that the pool's last thread needs, and every parallel region waits
for a scheduler time slice (measured in BENCHMARKS.md: the demo step 2 threads beside one busy
process took 7x its time alone; with ``PASSIVE`` about its share). So avmae makes ``PASSIVE`` the
default, where nothing chose otherwise:

- ``OMP_WAIT_POLICY`` already set (``ACTIVE`` / ``PASSIVE``): kept;
- ``AVMAE_OMP_WAIT_POLICY=keep``: the variable stays unset (the OpenMP runtime's own default);
- torch imported before avmae: too late for this process; ``avmae.train.threads`` says so in the
  run's log. Child processes (DataLoader workers, launched ranks) inherit the variable.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "OMP_WAIT_POLICY"
OPT_OUT = "AVMAE_OMP_WAIT_POLICY"


def set_default_wait_policy(environ=os.environ, torch_loaded=None):
    """``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` unless chosen otherwise (see above) -> what the
    OpenMP runtime of this process reads: the variable's value ("unset" if none), or None when
    torch (with its runtime) was loaded already (``torch_loaded``; default: ``torch`` imported)."""
    if torch_loaded is None:
        torch_loaded = "torch" in sys.modules
    if environ.get(OPT_OUT, "").lower() != "keep":
        environ.setdefault(WAIT_POLICY, "PASSIVE")
    return None if torch_loaded else environ.get(WAIT_POLICY, "unset")


policy_at_load = set_default_wait_policy()

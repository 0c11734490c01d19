"""Two CPU training processes under ``python -m avmae.launch`` (torchrun): SIGTERM to the job ends
it as a pre-emption (the workers save, the launcher exits 143 with one line, no traceback), and a
launcher killed outright takes its training processes and their DataLoader workers with it."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from cli_runs import child, clips, finish, run_yaml, wait_for  # noqa: F401 - fixtures

from avmae.run_folder import checkpoint_problem, find_latest_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's"),
]

LAUNCH = [sys.executable, "-m", "avmae.launch", "--standalone", "--nproc_per_node", "2"]
LONGER = ["schedule.epochs=6"]  # two processes share the 6 clips: one step per epoch


def _stat(pid):
    """(parent pid, state letter) of a process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0]


def _descendants(root):
    by_parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                by_parent.setdefault(st[0], []).append(int(entry))
    found, todo = [], [root]
    while todo:
        kids = by_parent.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _alive(pid):
    st = _stat(pid)
    return st is not None and st[1] != "Z"  # a zombie is dead, waiting for its (new) parent to reap it


def test_sigterm_to_the_job_saves_and_exits_143(run_yaml, tmp_path):
    out = tmp_path / "run"
    proc = child(out, "--pause-at", "2", config=run_yaml, overrides=LONGER, launcher=LAUNCH)
    wait_for(out / "paused", proc)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler pre-empting the job: every process of it
    rc, log = finish(proc)
    assert rc == 143, log[-4000:]
    assert "Traceback" not in log and "SignalException" not in log, log[-4000:]
    assert len([line for line in log.splitlines() if line.startswith("avmae.launch:")]) == 1, log[-4000:]
    assert "interrupted:  resume with" in log, log[-4000:]  # the workers stopped early, saved
    latest = find_latest_checkpoint(out)  # the stop is agreed at the step after the signal, or at once
    assert (
        latest is not None
        and latest.name in ("step_0000002", "step_0000003")
        and checkpoint_problem(latest, deep=True) is None
    ), log[-4000:]
    assert {p.name for p in latest.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}


def test_workers_die_with_a_killed_launcher(run_yaml, tmp_path):
    out = tmp_path / "run"
    proc = child(out, "--pause-at", "2", config=run_yaml, overrides=[*LONGER, "data.num_workers=1"], launcher=LAUNCH)
    wait_for(out / "paused", proc)
    below = _descendants(proc.pid)
    trainers = [p for p in below if "crash_child" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert len(trainers) >= 4, below  # 2 training processes and a DataLoader worker of each
    os.kill(proc.pid, signal.SIGKILL)  # the launcher only, the leader of the job's process group
    proc.wait()
    deadline = time.monotonic() + 15
    while [p for p in below if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in below if _alive(p)]
    if left:
        for p in left:
            os.kill(p, signal.SIGKILL)
    assert not left, f"still running after the launcher was killed: {left}"

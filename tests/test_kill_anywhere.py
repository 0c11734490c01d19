"""Kill anywhere: tools/train.py, run as a real process (forked from a server that imported
everything once, ``crash_child.py --serve``: each life costs its run, not the imports),
is SIGKILLed at random points (during
start-up, between steps, inside a checkpoint write, between its files and its manifest, after the
rename, in the middle of rotating an old checkpoint out), and every time resumed with
``--resume``. After each kill every ``step_*`` folder is complete (its manifest matches, hashes
included): nothing half-written or half-deleted is ever listed. The run ends with the weights and
optimizer state of the run that was never stopped (bit-identical on CPU), and its metrics hold
every step once."""

import json
import os
import random
import signal
import time

import pytest
import torch
from cli_runs import assert_same_weights, clips, finish, fork_server, run_yaml  # noqa: F401 - fixtures

from avmae.run_folder import checkpoint_problem, find_latest_checkpoint, list_checkpoints, step_folders

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# the reference run, with a checkpoint every step (rotation from step 3 with keep_last=2); four
# epochs (12 steps) leave room for every life below even when a life gets further than planned
# (on a fast machine a run forked from the server makes several steps in the start-up window)
EPOCHS, STEPS_PER_EPOCH = 4, 3
STEPS = EPOCHS * STEPS_PER_EPOCH
EVERY_STEP = ["checkpoint.every_n_steps=1", f"schedule.epochs={EPOCHS}"]
# os.fsync calls during the save of one step: the weights file and its folder (2), the files of
# the checkpoint (5), the manifest, the folder, the parent after the rename, and from step 3 on
# the parent after the rotated folder became .trash-*
FSYNCS = 10


def _latest_step(out):
    latest = find_latest_checkpoint(out)
    return 0 if latest is None else int(latest.name.split("_")[1])


def _logged_steps(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip() and "train/loss" in line]


def _kill_after(proc, out, step, delay):
    """SIGKILL ``delay`` s after ``metrics.jsonl`` shows ``step`` (or at once if it exits)."""
    deadline = time.monotonic() + 240
    while max(_logged_steps(out), default=0) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def _assert_only_complete_folders(out, where):
    for folder in step_folders(out):
        assert checkpoint_problem(folder, deep=True) is None, (
            f"after {where}: {folder.name}: {checkpoint_problem(folder, deep=True)}"
        )
    assert list_checkpoints(out) == step_folders(out)


def test_sigkill_anywhere_then_resume_ends_bit_identical(run_yaml, fork_server, tmp_path):
    from avmae.config import load_config
    from avmae.train import Trainer

    reference = tmp_path / "reference"
    Trainer(load_config([run_yaml], [f"output_dir={reference}", *EVERY_STEP])).fit()

    rng = random.Random(15)
    out = tmp_path / "run"
    # what each life of the run is killed by; the step is always one the run has not saved yet
    plan = ["start-up", "fsync", "rotation", "fsync", "between steps", "fsync"]
    log = []
    for i, kind in enumerate(plan):
        step = _latest_step(out) + 1
        assert step <= STEPS - 1, "the run got too far for the plan:\n" + "\n".join(log)
        first = not (out / "config.yaml").exists()
        hooks, launch = [], {"config": run_yaml} if first else {"resume": True}
        if kind == "fsync":
            k = rng.randint(1, FSYNCS + (step >= 3))
            hooks = ["--die-at-fsync", f"{step}:{k}"]
            kind = f"fsync {k} of step {step}"
        elif kind == "rotation":
            step = max(step, 3)
            hooks = ["--die-in-rotation", str(step)]
            kind = f"rotation at step {step}"
        proc = fork_server.child(out, *hooks, overrides=EVERY_STEP, **launch)
        if kind == "start-up":
            time.sleep(rng.uniform(0.0, 0.3))
            os.killpg(proc.pid, signal.SIGKILL)
        elif kind == "between steps":
            _kill_after(proc, out, step, rng.uniform(0.0, 0.05))
        rc, output = finish(proc)
        log.append(f"{kind}: exit {rc}, newest checkpoint step {_latest_step(out)}")
        assert rc == -signal.SIGKILL, f"life {i} ({kind}) ended with {rc}:\n{output[-3000:]}"
        _assert_only_complete_folders(out, kind)

    rc, output = finish(fork_server.child(out, overrides=EVERY_STEP, resume=True))
    assert rc == 0, "\n".join(log) + "\n" + output[-3000:]
    _assert_only_complete_folders(out, "the last life")
    assert [f.name for f in step_folders(out)] == [f"step_{STEPS - 1:07d}", f"step_{STEPS:07d}"]
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert_same_weights(reference, out)
    opt_a = torch.load(find_latest_checkpoint(reference) / "optimizer.bin", weights_only=True)
    opt_b = torch.load(find_latest_checkpoint(out) / "optimizer.bin", weights_only=True)
    for i, st in opt_a["state"].items():
        assert torch.equal(st["exp_avg"], opt_b["state"][i]["exp_avg"]) and torch.equal(
            st["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"]
        )
    assert _logged_steps(out) == list(range(1, STEPS + 1)), "\n".join(log)
    print("\n".join(log))  # what killed each life (pytest -s)

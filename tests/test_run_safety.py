"""What killing, sharing and corrupting a run folder must not break, through tools/train.py:
verified checkpoints (a half-deleted, truncated or emptied one is never used; resume falls back
to the previous complete one and says so), one step per metrics record after any kill, one
trainer per run folder (a run lock naming its holder; a stale one is taken over), ``--resume``
needs ``--output-dir``, a NaN run's summary says so, exported weights get the umask's mode."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from cli_runs import (  # noqa: F401 (fixtures named as test arguments)
    assert_same_weights,
    child,
    clips,
    finish,
    run_yaml,
    train_cli,
    uninterrupted,
    wait_for,
)

import avmae
from avmae.checkpoint import CheckpointError
from avmae.config import load_config
from avmae.hub import load_pretrained
from avmae.run_folder import (
    LOCK_FILE,
    checkpoint_problem,
    find_latest_checkpoint,
    list_checkpoints,
    resolve_weights,
    step_folders,
    write_manifest,
)
from avmae.train import Trainer
from avmae.train.run_lock import RunLock, RunLockError

pytestmark = pytest.mark.usefixtures("one_thread")


def names(paths):
    return [p.name for p in paths]


def metric_steps(run_dir):
    return [
        json.loads(line)["step"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in line
    ]


def error_lines(stderr, prefix):
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


# ------------------------------------------------------------------------------ verified checkpoints
def test_a_checkpoint_counts_only_when_its_manifest_matches(uninterrupted, tmp_path):
    run = shutil.copytree(uninterrupted, tmp_path / "run")
    old, new = list_checkpoints(run)
    assert names([old, new]) == ["step_0000004", "step_0000006"]
    assert checkpoint_problem(new, deep=True) is None
    # a half-deleted folder (as a kill during a plain rmtree left it): state and weights still there
    (old / "optimizer.bin").unlink()
    assert "optimizer.bin is missing" in checkpoint_problem(old)
    assert names(list_checkpoints(run)) == ["step_0000006"]
    # a flipped byte keeps the size: only the deep check (resume) sees it
    blob = bytearray((new / "optimizer.bin").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (new / "optimizer.bin").write_bytes(bytes(blob))
    assert checkpoint_problem(new) is None
    assert "optimizer.bin does not match" in checkpoint_problem(new, deep=True)
    # an emptied file
    (new / "trainer_state.json").write_text("")
    assert "trainer_state.json has 0 bytes" in checkpoint_problem(new)
    assert list_checkpoints(run) == []


def test_damaged_newest_checkpoint_resume_falls_back_with_one_warning(run_yaml, uninterrupted, tmp_path):
    """Through the CLI: the newest checkpoint's weights truncated (a power loss before this
    release's fsync). The resume names it and the reason once, moves it aside, continues from
    step 4 and ends with the weights of the uninterrupted run."""
    run = shutil.copytree(uninterrupted, tmp_path / "run")
    weights_file = run / "checkpoints" / "step_0000006" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    proc = train_cli("--output-dir", run, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "is damaged" in line]
    assert len(warnings) == 1 and "step_0000006" in warnings[0] and "model.safetensors has 1000 bytes" in warnings[0], (
        proc.stderr[-3000:]
    )
    assert "resumed from" in proc.stderr and "step_0000004" in proc.stderr
    assert (run / "checkpoints" / "damaged-step_0000006").is_dir()  # kept to look at, never listed
    assert names(step_folders(run)) == ["step_0000004", "step_0000006"]
    assert_same_weights(uninterrupted, run)
    assert metric_steps(run) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("damage", ["empty state", "flipped byte"])
def test_every_damage_is_caught_before_loading(run_yaml, uninterrupted, tmp_path, caplog, damage):
    run = shutil.copytree(uninterrupted, tmp_path / "run")
    newest = run / "checkpoints" / "step_0000006"
    if damage == "empty state":
        (newest / "trainer_state.json").write_text("")
    else:
        blob = bytearray((newest / "random_states_0.pkl").read_bytes())
        blob[-20] ^= 0x01
        (newest / "random_states_0.pkl").write_bytes(bytes(blob))
    result = Trainer(load_config([run_yaml], [f"output_dir={run}", "resume=true"])).fit()
    assert result.start_step == 4 and result.steps == 6
    warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warned) == 1 and "step_0000006" in warned[0]
    assert_same_weights(uninterrupted, run)


def test_no_complete_checkpoint_is_an_error_not_a_fresh_start(run_yaml, uninterrupted, tmp_path):
    run = shutil.copytree(uninterrupted, tmp_path / "run")
    for folder in step_folders(run):
        (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        CheckpointError,
        match="no complete checkpoint.*step_0000004.*step_0000006|no complete checkpoint.*step_0000006.*step_0000004",
    ):
        Trainer(load_config([run_yaml], [f"output_dir={run}", "resume=true"])).fit()
    assert names(step_folders(run)) == ["step_0000004", "step_0000006"]  # nothing moved, nothing deleted


def test_loading_weights_skips_a_damaged_newest_checkpoint_and_names_a_damaged_folder(uninterrupted, tmp_path, caplog):
    run = shutil.copytree(uninterrupted, tmp_path / "run")
    newest = run / "checkpoints" / "step_0000006"
    (newest / "model.safetensors").write_bytes((newest / "model.safetensors").read_bytes()[:500])
    assert resolve_weights(run) == run / "checkpoints" / "step_0000004" / "model.safetensors"
    assert any("step_0000006" in r.getMessage() and "500 bytes" in r.getMessage() for r in caplog.records)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(newest)
    msg = str(info.value)
    assert str(newest) in msg and "500 bytes" in msg and "\n" not in msg
    with pytest.raises(CheckpointError) as info:  # the file itself: the reader's reason, on one line, with what to do
        load_pretrained(newest / "model.safetensors")
    msg = str(info.value)
    assert "model.safetensors" in msg and "truncated" in msg and "\n" not in msg


def test_init_from_a_damaged_checkpoint_is_one_line_naming_it(run_yaml, uninterrupted, tmp_path):
    from avmae.config import ConfigError

    run = shutil.copytree(uninterrupted, tmp_path / "src")
    newest = run / "checkpoints" / "step_0000006"
    (newest / "model.safetensors").write_bytes((newest / "model.safetensors").read_bytes()[:500])
    for init, error in ((newest, ConfigError), (newest / "model.safetensors", CheckpointError)):
        cfg = load_config([run_yaml], [f"output_dir={tmp_path / 'new'}", f"checkpoint.init_from={init}"])
        with pytest.raises(error) as info:
            Trainer(cfg).fit()
        msg = str(info.value)
        assert str(newest) in msg and ("500 bytes" in msg or "truncated" in msg) and "\n" not in msg, msg
    # the run folder: its newest complete checkpoint, step 4 (the damaged one is named in a warning)
    result = Trainer(
        load_config(
            [run_yaml], [f"output_dir={tmp_path / 'ok'}", f"checkpoint.init_from={run}", "schedule.max_steps=1"]
        )
    ).fit()
    assert result.steps == 1


# ------------------------------------------------------------------------------ metrics after a kill
def test_metrics_hold_each_step_once_after_a_kill_before_the_first_checkpoint(run_yaml, uninterrupted, tmp_path):
    out = tmp_path / "run"
    proc = child(
        out, "--pause-at", "3", config=run_yaml, overrides=["checkpoint.every_n_steps=0"]
    )  # no checkpoint before the end
    wait_for(out / "paused", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    assert metric_steps(out) == [1, 2, 3] and list_checkpoints(out) == []
    rc, log = finish(child(out, resume=True))
    assert rc == 0, log[-3000:]
    assert metric_steps(out) == [1, 2, 3, 4, 5, 6]
    assert_same_weights(uninterrupted, out)
    assert "took over the stale lock" in log  # the killed run's lock


# ------------------------------------------------------------------------------ one trainer per folder
def test_a_second_trainer_on_a_running_folder_stops_at_once_naming_the_holder(run_yaml, tmp_path):
    out = tmp_path / "run"
    first = child(out, "--pause-at", "2", config=run_yaml)
    wait_for(out / "paused", first)
    holder = json.loads((out / LOCK_FILE).read_text())
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
    second = train_cli("--output-dir", out, "--resume")
    assert second.returncode == 1, second.stderr[-3000:]
    lines = error_lines(second.stderr, "run folder in use:")
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and str(out) in lines[0], second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    assert metric_steps(out) == [1, 2]  # the second trainer wrote nothing
    os.killpg(first.pid, signal.SIGTERM)  # the first one saves and stops; its lock goes with it
    rc, log = finish(first)
    assert rc == 143, log[-3000:]
    assert not (out / LOCK_FILE).exists()


def test_run_lock_in_one_process_and_a_stale_one(tmp_path, caplog):
    with RunLock(tmp_path):
        with pytest.raises(RunLockError, match="in use"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path) as again:  # released: free again
        assert again.held
    assert not (tmp_path / LOCK_FILE).exists()
    # the lock file of a trainer of this host that is gone (killed: nobody holds the file's lock)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "started": 0}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert any(
        "took over the stale lock" in r.getMessage() and f"pid {gone.pid}" in r.getMessage() for r in caplog.records
    )


# ------------------------------------------------------------------------------ the command line
def test_resume_without_output_dir_is_an_error_naming_the_newest_run_of_the_config(run_yaml, uninterrupted, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(uninterrupted, runs / "audio-pretrain-20240101-000000")
    proc = train_cli("--config", run_yaml, "--resume", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = error_lines(proc.stderr, "config error:")
    assert len(lines) == 1 and "--resume: needs --output-dir" in lines[0], proc.stderr[-3000:]
    assert "--output-dir runs/audio-pretrain-20240101-000000" in lines[0]
    assert "Traceback" not in proc.stderr
    assert len(list(runs.iterdir())) == 1  # no new run folder


def test_summary_of_a_run_whose_loss_turned_nan_says_so(run_yaml, tmp_path):
    proc = train_cli(
        "--config",
        run_yaml,
        "--output-dir",
        tmp_path / "run",
        "optim.lr=1e6",
        "train.max_nonfinite=1000",
        "checkpoint.every_n_steps=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss = next(line for line in proc.stdout.splitlines() if line.startswith("train loss:"))
    assert loss.rstrip().endswith("nan (step 6)  (not finite)"), loss
    skipped = next(line for line in proc.stdout.splitlines() if line.startswith("skipped:"))
    n = int(skipped.split()[1])
    assert 1 <= n <= 6 and "of 6 steps" in skipped
    ckpt = find_latest_checkpoint(tmp_path / "run")
    # the exported weights get the mode of every other file of the run (the process umask)
    assert (ckpt / "model.safetensors").stat().st_mode & 0o777 == (ckpt / "config.yaml").stat().st_mode & 0o777


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_weights_follow_the_umask(tmp_path, umask):
    before = os.umask(umask)
    try:
        path = avmae.save_checkpoint(
            avmae.create_model("audiomae_tiny", target_length=32, num_mel_bins=32), tmp_path / "w.safetensors"
        )
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not (tmp_path / "w.safetensors.tmp").exists()


def test_write_manifest_lists_every_file_with_size_and_hash(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "model.safetensors").write_bytes(b"w")
    (tmp_path / "trainer_state.json").write_text('{"step": 1}')
    manifest = write_manifest(tmp_path)
    assert sorted(manifest["files"]) == ["a.bin", "model.safetensors", "trainer_state.json"]
    assert manifest["files"]["a.bin"]["size"] == 10
    assert checkpoint_problem(tmp_path, deep=True) is None
    (tmp_path / "a.bin").write_bytes(b"y" * 10)
    assert "a.bin does not match" in checkpoint_problem(tmp_path, deep=True)

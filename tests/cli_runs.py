"""Shared pieces of the tests that run tools/train.py as a real process (crash safety, kill
anywhere, run folder safety, launchers): the tiny run, its reference, and child processes.

Fixtures here are imported by the test modules that use them (``from cli_runs import ...``).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from avmae.config import load_config
from avmae.data import ensure_demo_audio
from avmae.run_folder import find_latest_checkpoint

REPO = Path(__file__).resolve().parent.parent

# 6 clips, batch 2: 3 steps per epoch, 6 steps in two epochs; a checkpoint every 2 steps
RUN_YAML = """\
model:
  name: audiomae_tiny
  params: {{decoder: global, drop_path: 0.1}}
data:
  train_manifest: {clips}/train.json
  target_length: 32
  num_mel_bins: 32
  num_workers: 0
  cache: true
train: {{batch_size: 2, cpu: true, mixed_precision: "no", threads: 1}}  # one thread: the same arithmetic
optim: {{lr: 2.0e-3}}
schedule: {{epochs: 2, warmup_epochs: 0}}
eval: {{every_n_epochs: -1}}
logging: {{every_n_steps: 1, progress: false, tensorboard: false}}
checkpoint: {{every_n_epochs: 0, every_n_steps: 2, keep_last: 2}}
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return ensure_demo_audio(
        tmp_path_factory.mktemp("clips") / "demo", num_train_per_class=1, num_eval_per_class=1, seconds=0.5
    )


@pytest.fixture(scope="module")
def run_yaml(clips, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(RUN_YAML.format(clips=clips))
    return path


@pytest.fixture(scope="module")
def uninterrupted(run_yaml, tmp_path_factory):
    """The reference: the same run, never stopped, in this process (one torch thread, as the
    child processes)."""
    from avmae.train import Trainer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("full") / "run"
        result = Trainer(load_config([run_yaml], [f"output_dir={out}"])).fit()
    finally:
        torch.set_num_threads(before)
    assert result.steps == 6 and not result.interrupted
    return out


def weights(run_dir):
    return load_file(str(find_latest_checkpoint(run_dir) / "model.safetensors"))


def assert_same_weights(a_run, b_run):
    a, b = weights(a_run), weights(b_run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def child_env():
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def child(out, *hooks, resume=False, config=None, overrides=(), launcher=()):
    """tools/train.py (via crash_child.py) in its own process group, as a job on a cluster.
    ``launcher``: a command to run it under (e.g. ``python -m avmae.launch --nproc_per_node 2``)."""
    cmd = [
        *(launcher or [sys.executable]),
        str(REPO / "tests" / "crash_child.py"),
        *hooks,
        "--",
        "--output-dir",
        str(out),
    ]
    cmd += ["--resume"] if resume else ["--config", str(config)]
    return subprocess.Popen(
        cmd + list(overrides),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


class ForkedChild:
    """A run started by ``ForkServer``: ``pid`` (also its process group), ``poll()``,
    ``returncode``, ``communicate(timeout)`` and ``stdout.read()``, as a ``Popen``'s."""

    def __init__(self, pid, log):
        self.pid, self.log, self.returncode = pid, Path(log), None
        self.stdout = self

    def read(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def poll(self):
        rc = Path(f"{self.log}.rc")
        if self.returncode is None and rc.exists():
            self.returncode = int(rc.read_text())
        return self.returncode

    def communicate(self, timeout=None):
        deadline = time.monotonic() + (timeout or 1e9)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)
        return self.read(), None


class ForkServer:
    """``tests/crash_child.py --serve``: tools/train.py runs forked from one process that imported
    everything once (a child costs its run, not an interpreter start and the imports)."""

    def __init__(self, logs):
        self.logs, self.n = Path(logs), 0
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "crash_child.py"), "--serve"],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def child(self, out, *hooks, resume=False, config=None, overrides=()):
        """As ``child`` (same arguments), forked."""
        argv = [
            *hooks,
            "--",
            "--output-dir",
            str(out),
            *(["--resume"] if resume else ["--config", str(config)]),
            *overrides,
        ]
        self.n += 1
        log = self.logs / f"child{self.n}.log"
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return ForkedChild(int(self.proc.stdout.readline()), log)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("forked"))
    yield server
    server.close()


def train_cli(*args, cwd=None, timeout=300):
    """``python tools/train.py ARGS`` to the end -> CompletedProcess (stdout, stderr apart)."""
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), *map(str, args)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def wait_for(path, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"child exited with {proc.returncode} before {path.name}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {path.name} after {timeout} s")
        time.sleep(0.05)


def finish(proc, timeout=240):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"child did not finish:\n{out[-3000:]}")
    return proc.returncode, out

"""Crash safety and numerics of training runs: tools/train.py killed with SIGKILL in the middle of
a checkpoint save, or stopped by SIGTERM, resumes to the weights of an uninterrupted run
(bit-identical on CPU); a resume never unpickles code; non-finite gradients skip the step."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from avmae.checkpoint import CheckpointError
from avmae.config import ConfigError, load_config
from avmae.data import ensure_demo_audio
from avmae.train import NonFiniteLossError, PretrainTask, Trainer, find_latest_checkpoint, list_checkpoints
from avmae.train.optim import fused_adamw_devices

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
train: {{batch_size: 2, cpu: true, mixed_precision: "no"}}
optim: {{lr: 2.0e-3}}
schedule: {{epochs: 2, warmup_epochs: 0}}
eval: {{every_n_epochs: -1}}
logging: {{every_n_steps: 1, progress: false, tensorboard: false}}
checkpoint: {{every_n_epochs: 0, every_n_steps: 2, keep_last: 2}}
"""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child processes: the same arithmetic
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return ensure_demo_audio(tmp_path_factory.mktemp("clips") / "demo", num_train_per_class=1, num_eval_per_class=1, seconds=0.5)


@pytest.fixture(scope="module")
def run_yaml(clips, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(RUN_YAML.format(clips=clips))
    return path


@pytest.fixture(scope="module")
def uninterrupted(run_yaml, tmp_path_factory):
    """The reference: the same run, never stopped, in this process."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("full") / "run"
    result = Trainer(load_config([run_yaml], [f"output_dir={out}"])).fit()
    assert result.steps == 6 and not result.interrupted
    return out


def weights(run_dir):
    return load_file(str(find_latest_checkpoint(run_dir) / "model.safetensors"))


def child(out, *hooks, resume=False, config=None, overrides=()):
    """tools/train.py (via crash_child.py) in its own process group, as a job on a cluster."""
    cmd = [sys.executable, str(REPO / "tests" / "crash_child.py"), *hooks, "--", "--output-dir", str(out)]
    cmd += ["--resume"] if resume else ["--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd + list(overrides), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(path, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"child exited with {proc.returncode} before {path.name}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {path.name} after {timeout} s")
        time.sleep(0.05)


def finish(proc, timeout=240):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"child did not finish:\n{out[-3000:]}")
    return proc.returncode, out


def test_sigterm_then_sigkill_mid_save_then_resume_is_bit_identical(run_yaml, uninterrupted, tmp_path):
    out = tmp_path / "run"
    ckpts = lambda: [c.name for c in list_checkpoints(out)]  # noqa: E731

    # 1. SIGTERM after step 3 (between the periodic checkpoints) to the whole process group, the
    # DataLoader workers included, as a preempted job gets it: a final checkpoint, exit 143.
    # Two workers here, none in the reference run: the batches do not depend on them.
    proc = child(out, "--pause-at", "3", config=run_yaml, overrides=["data.num_workers=2"])
    wait_for(out / "paused", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, log = finish(proc)
    assert rc == 143, log[-3000:]
    assert "resume with" in log and "Traceback" not in log
    assert ckpts() == ["step_0000002", "step_0000003"]

    # 2. resume, SIGKILL while the checkpoint of step 4 is written but not yet renamed into place
    proc = child(out, "--hang-in-save", "4", resume=True)
    wait_for(out / "saving", proc)
    partial = out / "checkpoints" / ".tmp-step_0000004"
    assert (partial / "model.safetensors").is_file() and (partial / "trainer_state.json").is_file()
    os.killpg(proc.pid, signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    assert ckpts() == ["step_0000002", "step_0000003"]  # the half-written one is never listed
    assert find_latest_checkpoint(out).name == "step_0000003"

    # 3. resume from the newest complete checkpoint (step 3) to the end
    rc, log = finish(child(out, resume=True))
    assert rc == 0, log[-3000:]
    assert "resumed from" in log and "step_0000003" in log
    assert not partial.exists()  # the crash's leftover was cleared
    assert ckpts() == ["step_0000004", "step_0000006"]  # keep_last=2

    a, b = weights(uninterrupted), weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    opt_a = torch.load(find_latest_checkpoint(uninterrupted) / "optimizer.bin", weights_only=True)
    opt_b = torch.load(find_latest_checkpoint(out) / "optimizer.bin", weights_only=True)
    for i, st in opt_a["state"].items():
        assert torch.equal(st["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"])


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_RESUME",))


@pytest.mark.parametrize("victim", ["random_states_0.pkl", "optimizer.bin"])
def test_resume_refuses_pickled_code(run_yaml, uninterrupted, tmp_path, monkeypatch, victim):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    torch.save({"state": {}, "x": _Payload()}, find_latest_checkpoint(out) / victim)
    trainer = Trainer(load_config([run_yaml], [f"output_dir={out}", "resume=true", "schedule.epochs=3"]))
    with pytest.raises(CheckpointError, match=f"{victim}.*refusing"):
        trainer.fit()
    assert not (tmp_path / "PWNED_BY_RESUME").exists()


class BadGradTask(PretrainTask):
    """Pretraining whose loss stays finite while its gradients are NaN on chosen forward calls."""

    def __init__(self, cfg, bad_calls):
        super().__init__(cfg)
        self.bad_calls, self.calls = set(bad_calls), 0

    def compute_loss(self, model, inputs, batch):
        loss, parts = super().compute_loss(model, inputs, batch)
        self.calls += 1
        if self.calls in self.bad_calls:
            p = next(model.parameters())
            loss = loss + 0.0 * torch.sqrt(p - p.detach()).sum()  # value 0, gradient 0 * inf = NaN
        return loss, parts


@pytest.mark.parametrize("fused", [pytest.param("true", marks=pytest.mark.skipif("cpu" not in fused_adamw_devices(), reason="no fused AdamW for the CPU")), "false"])
def test_nonfinite_gradient_skips_the_step_and_a_run_of_them_stops(run_yaml, tmp_path, fused):
    # fused: skipped on the device (found_inf), the count read at the last step only
    cfg = load_config([run_yaml], [f"output_dir={tmp_path / 'one'}", "schedule.max_steps=3", "checkpoint.every_n_steps=0", "logging.every_n_steps=3", f"optim.fused={fused}"])
    result = Trainer(cfg, task=BadGradTask(cfg, bad_calls={2})).fit()
    assert result.steps == 3 and result.skipped_steps == 1
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "one").values())

    cfg = load_config([run_yaml], [f"output_dir={tmp_path / 'many'}", "train.max_nonfinite=2", "checkpoint.every_n_steps=1", f"optim.fused={fused}"])
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(cfg, task=BadGradTask(cfg, bad_calls=range(2, 100))).fit()
    msg = str(info.value)
    assert "gradient" in msg and "step 3" in msg and "step_0000002" in msg


def test_bf16_runs_without_a_loss_scaler_and_fp16_needs_a_gpu(run_yaml, tmp_path):
    trainer = Trainer(load_config([run_yaml], [f"output_dir={tmp_path / 'bf16'}", "train.mixed_precision=bf16"]))
    assert trainer.mixed_precision == "bf16" and trainer.accelerator.scaler is None
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        Trainer(load_config([run_yaml], [f"output_dir={tmp_path / 'fp16'}", "train.mixed_precision=fp16"]))

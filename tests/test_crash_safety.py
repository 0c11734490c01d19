"""Crash safety and numerics of training runs: tools/train.py killed with SIGKILL in the middle of
a checkpoint save, or stopped by SIGTERM, resumes to the weights of an uninterrupted run
(bit-identical on CPU); a resume never unpickles code; non-finite gradients skip the step."""

import os
import shutil
import signal

import pytest
import torch
from cli_runs import (  # noqa: F401 (fixtures named as test arguments)
    assert_same_weights,
    child,
    clips,
    finish,
    run_yaml,
    uninterrupted,
    wait_for,
    weights,
)

from avmae.checkpoint import CheckpointError
from avmae.config import ConfigError, load_config
from avmae.run_folder import write_manifest
from avmae.train import NonFiniteLossError, PretrainTask, Trainer, find_latest_checkpoint, list_checkpoints
from avmae.train.optim import fused_adamw_devices


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the child processes: the same arithmetic
    yield
    torch.set_num_threads(before)


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

    assert_same_weights(uninterrupted, out)
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
    newest = find_latest_checkpoint(out)
    torch.save({"state": {}, "x": _Payload()}, newest / victim)
    write_manifest(newest)  # a checkpoint made so: complete, verified, and still refused
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


@pytest.mark.parametrize(
    "fused",
    [
        pytest.param(
            "true", marks=pytest.mark.skipif("cpu" not in fused_adamw_devices(), reason="no fused AdamW for the CPU")
        ),
        "false",
    ],
)
def test_nonfinite_gradient_skips_the_step_and_a_run_of_them_stops(run_yaml, tmp_path, fused):
    # fused: skipped on the device (found_inf), the count read at the last step only
    cfg = load_config(
        [run_yaml],
        [
            f"output_dir={tmp_path / 'one'}",
            "schedule.max_steps=3",
            "checkpoint.every_n_steps=0",
            "logging.every_n_steps=3",
            f"optim.fused={fused}",
        ],
    )
    result = Trainer(cfg, task=BadGradTask(cfg, bad_calls={2})).fit()
    assert result.steps == 3 and result.skipped_steps == 1
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "one").values())

    cfg = load_config(
        [run_yaml],
        [
            f"output_dir={tmp_path / 'many'}",
            "train.max_nonfinite=2",
            "checkpoint.every_n_steps=1",
            f"optim.fused={fused}",
        ],
    )
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(cfg, task=BadGradTask(cfg, bad_calls=range(2, 100))).fit()
    msg = str(info.value)
    assert "gradient" in msg and "step 3" in msg and "step_0000002" in msg


def test_bf16_runs_without_a_loss_scaler_and_fp16_needs_a_gpu(run_yaml, tmp_path):
    trainer = Trainer(load_config([run_yaml], [f"output_dir={tmp_path / 'bf16'}", "train.mixed_precision=bf16"]))
    assert trainer.mixed_precision == "bf16" and trainer.accelerator.scaler is None
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        Trainer(load_config([run_yaml], [f"output_dir={tmp_path / 'fp16'}", "train.mixed_precision=fp16"]))

"""The trainer on the tiny model and a few generated clips: loss falls, outputs are written,
exact resume, SIGTERM, checkpoint rotation, non-finite steps, fine-tuning, two processes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import avmae
from avmae.config import ConfigError, load_config
from avmae.data import ensure_demo_audio
from avmae.train import (
    DATASETS,
    EpochSampler,
    NonFiniteLossError,
    PretrainTask,
    Trainer,
    list_checkpoints,
    register_dataset,
)
from avmae.train.logging_utils import read_metrics
from avmae.train.optim import fused_adamw_devices

REPO = Path(__file__).resolve().parent.parent
needs_fused_cpu = pytest.mark.skipif(
    "cpu" not in fused_adamw_devices(), reason=f"torch {torch.__version__} has no fused AdamW for the CPU"
)
# fused AdamW skips a non-finite step on the device (found_inf); the default one after reading the flags
BOTH_ADAMWS = pytest.mark.parametrize("fused", [pytest.param("true", marks=needs_fused_cpu), "false"])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """12 training and 6 eval clips of the demo classes, as FLAC files with a manifest."""
    return ensure_demo_audio(tmp_path_factory.mktemp("clips") / "demo", num_train_per_class=2, num_eval_per_class=1)


def tiny_config(clips, out, *extra):
    return load_config(
        [],
        [
            "model.name=audiomae_tiny",
            f"data.train_manifest={clips / 'train.json'}",
            f"data.eval_manifest={clips / 'eval.json'}",
            f"data.label_csv={clips / 'class_labels_indices.csv'}",
            "data.target_length=64",
            "data.num_mel_bins=64",
            "data.num_workers=0",
            "data.cache=true",
            "train.batch_size=2",
            "train.cpu=true",
            "train.mixed_precision=bf16",
            "optim.lr=2e-3",
            "schedule.epochs=1",
            "schedule.warmup_epochs=0",
            "logging.every_n_steps=1",
            "logging.progress=false",
            "checkpoint.every_n_epochs=0",
            f"output_dir={out}",
            *extra,
        ],
    )


def weights(run_dir):
    return load_file(str(list_checkpoints(run_dir)[-1] / "model.safetensors"))


def test_short_run_lowers_loss_and_writes_outputs(clips, tmp_path):
    out = tmp_path / "run"
    result = Trainer(tiny_config(clips, out, "schedule.max_steps=10", "checkpoint.every_n_steps=5")).fit()
    assert result.steps == 10 and not result.interrupted
    assert result.last_loss < result.first_loss
    assert result.eval and all(torch.isfinite(torch.tensor(v)) for v in result.eval.values())

    assert (out / "config.yaml").is_file() and (out / "run.json").is_file()
    assert any((out / "tensorboard").iterdir())
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, 11))
    assert {"train/lr", "train/grad_norm", "train/samples_per_s", "train/skipped_steps", "train/mae_audio"} <= set(
        train[0]
    )
    assert any("eval/loss" in r for r in records)

    ckpts = list_checkpoints(out)
    assert [c.name for c in ckpts] == ["step_0000005", "step_0000010"]
    last = ckpts[-1]
    for name in ("model.safetensors", "config.yaml", "trainer_state.json", "optimizer.bin", "random_states_0.pkl"):
        assert (last / name).is_file(), name
    # the exported weights load into a fresh model, and the saved config reproduces the run's
    saved = load_config([last / "config.yaml"])
    assert saved.data.target_length == 64 and saved.model.name == "audiomae_tiny"
    model = avmae.create_model("audiomae_tiny", target_length=64, num_mel_bins=64)
    report = avmae.load_checkpoint(model, last / "model.safetensors")
    assert report.format == "avmae" and not report.missing
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 10

    # an output dir with checkpoints is not silently reused
    with pytest.raises(ConfigError, match="resume"):
        Trainer(tiny_config(clips, out, "schedule.max_steps=10")).fit()


class StopAt(Trainer):
    """Sends itself SIGTERM after a given step, as a cluster preempting the job would."""

    stop_step = None

    def after_step(self, step):
        if step == self.stop_step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_exact_resume_after_sigterm_is_bit_identical(clips, tmp_path):
    # 12 items / (2 x 2 accumulation) = 3 steps per epoch; 8 steps cross two epoch boundaries;
    # drop path and random masking exercise the RNG state
    extra = (
        "schedule.epochs=3",
        "schedule.max_steps=8",
        "train.grad_accum=2",
        "model.params.drop_path=0.1",
        "eval.every_n_epochs=1",
    )

    full = Trainer(
        tiny_config(clips, tmp_path / "full", *extra, "checkpoint.every_n_steps=1", "checkpoint.keep_last=2")
    ).fit()
    assert full.steps == 8
    # keep-last-2 rotation
    assert [c.name for c in list_checkpoints(tmp_path / "full")] == ["step_0000007", "step_0000008"]

    StopAt.stop_step = 4
    part = StopAt(tiny_config(clips, tmp_path / "part", *extra)).fit()
    assert part.interrupted and part.steps == 4
    assert [c.name for c in list_checkpoints(tmp_path / "part")] == ["step_0000004"]
    assert signal.getsignal(signal.SIGTERM) is not None  # handler restored

    resumed = Trainer(tiny_config(clips, tmp_path / "part", *extra, "resume=true")).fit()
    assert resumed.steps == 8 and not resumed.interrupted

    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the optimizer state continued exactly too
    opt_a = torch.load(list_checkpoints(tmp_path / "full")[-1] / "optimizer.bin", weights_only=True)
    opt_b = torch.load(list_checkpoints(tmp_path / "part")[-1] / "optimizer.bin", weights_only=True)
    for i, st in opt_a["state"].items():
        assert torch.equal(st["exp_avg"], opt_b["state"][i]["exp_avg"])
    # the metrics of both runs agree step for step (repeated steps were dropped on resume)
    la = [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path / "full" / "metrics.jsonl", "train/")]
    lb = [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path / "part" / "metrics.jsonl", "train/")]
    assert la == lb


def test_optim_fused_is_honoured_and_a_resume_may_switch_it(clips, tmp_path, monkeypatch):
    import avmae.train.trainer as trainer_module
    from avmae.train.optim import fused_adamw_devices

    built = []

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    real = trainer_module.build_optimizer
    monkeypatch.setattr(trainer_module, "build_optimizer", spy)
    extra = ("schedule.max_steps=4", "eval.every_n_epochs=-1")
    part = StopAt(tiny_config(clips, tmp_path / "run", *extra, "optim.fused=false"))
    part.stop_step = 2
    assert part.fit().steps == 2
    assert not built[-1].defaults["fused"]
    fused = "cpu" in fused_adamw_devices()
    # the checkpoint's optimizer state was written by the default implementation; auto continues fused (where torch can)
    resumed = Trainer(tiny_config(clips, tmp_path / "run", *extra, "optim.fused=auto", "resume=true")).fit()
    assert resumed.steps == 4 and resumed.start_step == 2
    opt = built[-1]
    assert bool(opt.defaults["fused"]) == fused and all(bool(g["fused"]) == fused for g in opt.param_groups)
    assert all(float(s["step"]) == 4 for s in opt.state.values())
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run").values())


class NaNTask(PretrainTask):
    """Pretraining whose loss is NaN on chosen forward calls."""

    def __init__(self, cfg, bad_calls):
        super().__init__(cfg)
        self.bad_calls = set(bad_calls)
        self.calls = 0

    def compute_loss(self, model, inputs, batch):
        loss, parts = super().compute_loss(model, inputs, batch)
        self.calls += 1
        if self.calls in self.bad_calls:
            loss = loss * float("nan")
        return loss, parts


@BOTH_ADAMWS
def test_nonfinite_step_is_skipped_and_counted(clips, tmp_path, fused):
    # logged at steps 1, 3 and 4: the count read at step 3 includes step 2
    cfg = tiny_config(
        clips,
        tmp_path / "nan",
        "schedule.max_steps=4",
        "eval.every_n_epochs=-1",
        "logging.every_n_steps=3",
        f"optim.fused={fused}",
    )
    result = Trainer(cfg, task=NaNTask(cfg, bad_calls={2})).fit()
    assert result.steps == 4 and result.skipped_steps == 1
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "nan").values())
    records = read_metrics(tmp_path / "nan" / "metrics.jsonl", "train/")
    assert [(r["step"], r["train/skipped_steps"]) for r in records] == [(1, 0), (3, 1), (4, 1)]
    assert json.loads((list_checkpoints(tmp_path / "nan")[-1] / "trainer_state.json").read_text())["skipped_steps"] == 1


@BOTH_ADAMWS
@pytest.mark.parametrize("reads", ["every step", "sparse"])
def test_too_many_nonfinite_steps_stop_with_a_clear_error(clips, tmp_path, fused, reads):
    # every step a non-finite loss from step 2: the streak reaches 2 at step 3. "sparse": checkpoints
    # at steps 2 and 4, logs at 1 and 5, so the device-side skip reads the streak at step 4 only,
    # and names the same step and checkpoint (and saves none after the streak)
    when = (
        ["checkpoint.every_n_steps=1"]
        if reads == "every step"
        else ["checkpoint.every_n_steps=2", "logging.every_n_steps=5"]
    )
    cfg = tiny_config(
        clips,
        tmp_path / "nan2",
        "schedule.max_steps=6",
        "train.max_nonfinite=2",
        "eval.every_n_epochs=-1",
        f"optim.fused={fused}",
        *when,
    )
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(cfg, task=NaNTask(cfg, bad_calls=range(2, 100))).fit()
    msg = str(info.value)
    assert msg.startswith("2 consecutive non-finite loss steps, the last at step 3 ")
    assert "step_0000002" in msg and "max_nonfinite" in msg
    assert list_checkpoints(tmp_path / "nan2")[-1].name == "step_0000002"


@needs_fused_cpu
def test_device_side_skip_matches_the_read_path_bit_for_bit_and_resumes_exactly(clips, tmp_path):
    """Fused AdamW skipping a NaN step through found_inf, read only at log steps and checkpoints,
    ends with the weights, optimizer state and counts of the former path (flags read, step not
    taken); a run stopped by SIGTERM after the skipped step resumes to them too."""

    class ReadEveryStep(Trainer):
        device_skip = False

    extra = (
        "optim.fused=true",
        "schedule.epochs=2",
        "schedule.max_steps=8",
        "logging.every_n_steps=3",
        "eval.every_n_epochs=-1",
        "model.params.drop_path=0.1",
    )
    runs = {}
    for name, cls in (("read", ReadEveryStep), ("device", Trainer), ("part", StopAt)):
        cfg = tiny_config(clips, tmp_path / name, *extra)
        trainer = cls(cfg, task=NaNTask(cfg, bad_calls={2}))
        trainer.stop_step = 4
        runs[name] = trainer.fit()
    assert runs["part"].interrupted and runs["part"].steps == 4 and runs["part"].skipped_steps == 1
    cfg = tiny_config(clips, tmp_path / "part", *extra, "resume=true")
    runs["resumed"] = Trainer(cfg, task=NaNTask(cfg, bad_calls=())).fit()
    assert runs["resumed"].start_step == 4

    ref = list_checkpoints(tmp_path / "read")[-1]
    for name in ("device", "part"):
        assert runs[name if name != "part" else "resumed"].steps == 8
        assert (runs["resumed"] if name == "part" else runs[name]).skipped_steps == runs["read"].skipped_steps == 1
        ckpt = list_checkpoints(tmp_path / name)[-1]
        assert ckpt.name == ref.name == "step_0000008"
        a, b = weights(tmp_path / "read"), weights(tmp_path / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        opt_a = torch.load(ref / "optimizer.bin", weights_only=True)["state"]
        opt_b = torch.load(ckpt / "optimizer.bin", weights_only=True)["state"]
        assert opt_a.keys() == opt_b.keys()
        for i in opt_a:
            assert float(opt_a[i]["step"]) == float(opt_b[i]["step"]) == 7  # the skipped step was not counted
            assert torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) and torch.equal(
                opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]
            )
        assert json.loads((ref / "trainer_state.json").read_text()) == json.loads(
            (ckpt / "trainer_state.json").read_text()
        )


@pytest.mark.parametrize("multilabel", [False, True])
def test_finetune_from_pretraining_checkpoint(clips, tmp_path, multilabel):
    pre = Trainer(tiny_config(clips, tmp_path / "pre", "schedule.max_steps=2", "eval.every_n_epochs=-1")).fit()
    cfg = tiny_config(
        clips,
        tmp_path / "ft",
        f"data.multilabel={multilabel}",  # BCE + mAP instead of cross-entropy + accuracy
        "task=finetune",
        "model.name=audiomae_tiny_cls",
        f"checkpoint.init_from={tmp_path / 'pre'}",
        "optim.layer_decay=0.75",
        "masking.mask_t_prob=0.2",
        "masking.mask_f_prob=0.2",
        "schedule.max_steps=3",
    )
    result = Trainer(cfg).fit()
    assert result.steps == 3 and ("mAP" if multilabel else "acc") in result.eval and "loss" in result.eval
    ft = weights(tmp_path / "ft")
    pw = load_file(str(pre.last_checkpoint / "model.safetensors"))
    assert ft["head.weight"].shape[0] == 6  # the six demo classes
    # the encoder came from the pretraining run and kept training
    assert not torch.equal(ft["blocks.0.attn.qkv.weight"], pw["blocks.0.attn.qkv.weight"])


def test_dataset_builders_are_a_registry(tmp_path):
    """A new modality set plugs in by registering a builder; the loop passes only model inputs."""

    class Toy(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {
                "audio": torch.randn(1, 32, 32, generator=g),
                "extra": torch.zeros(3),
                "label": torch.zeros(0),
                "index": i,
            }

    @register_dataset("toy")
    def build(cfg, split):
        return Toy() if split == "train" else None

    try:
        cfg = load_config(
            [],
            [
                "modality=toy",
                "model.name=audiomae_tiny",
                "model.params.decoder=global",
                "data.target_length=32",
                "data.num_mel_bins=32",
                "data.num_workers=0",
                "train.batch_size=4",
                "train.cpu=true",
                "train.mixed_precision=bf16",
                "schedule.max_steps=2",
                "logging.progress=false",
                "logging.tensorboard=false",
                f"output_dir={tmp_path / 'toy'}",
            ],
        )
        assert Trainer(cfg).fit().steps == 2
    finally:
        DATASETS.remove("toy")
    with pytest.raises(ConfigError, match="modality"):
        Trainer(load_config([], ["modality=nothing", f"output_dir={tmp_path / 'x'}"]))


class EpochProbe(torch.utils.data.Dataset):
    """Items carry the epoch the dataset was told, to see that it reaches the workers."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"audio": torch.randn(1, 32, 32, generator=g), "label": torch.zeros(0), "index": i, "epoch": self.epoch}


class RecordEpochs(PretrainTask):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.epochs = []

    def compute_loss(self, model, inputs, batch):
        self.epochs += batch["epoch"].tolist()
        return super().compute_loss(model, inputs, batch)


def test_set_epoch_reaches_persistent_workers(tmp_path):
    cfg = load_config(
        [],
        [
            "model.name=audiomae_tiny",
            "model.params.decoder=global",
            "data.target_length=32",
            "data.num_mel_bins=32",
            "data.num_workers=1",
            "train.batch_size=4",
            "train.cpu=true",
            "train.mixed_precision=bf16",
            "schedule.epochs=2",
            "schedule.warmup_epochs=0",
            "logging.progress=false",
            "logging.tensorboard=false",
            f"output_dir={tmp_path / 'probe'}",
        ],
    )
    task = RecordEpochs(cfg)
    assert Trainer(cfg, task=task, datasets=(EpochProbe(), None)).fit().steps == 4
    assert task.epochs == [0] * 8 + [1] * 8


def test_epoch_sampler_order_depends_on_seed_and_epoch_only():
    s = EpochSampler(10, global_batch=4, seed=3)
    s.set_position(1)
    order = [i for _, i in s]
    assert len(order) == 8 and len(set(order)) == 8  # two whole global batches, no repeats
    again = EpochSampler(10, global_batch=4, seed=3)
    again.set_position(1, start=4)
    assert [i for _, i in again] == order[4:]
    s.set_position(2)
    assert [i for _, i in s] != order


def torchrun_two(script: str, clips, out, *, port: int):
    """``torchrun --nproc_per_node 2 tests/<script> clips out`` on CPU -> the two ranks' JSON reports."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port + os.getpid() % 1000),
        str(REPO / "tests" / script),
        str(clips),
        str(out),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_processes_hold_identical_weights(clips, tmp_path):
    """torchrun with 2 CPU processes (gloo): replicas agree and see disjoint data."""
    out = tmp_path / "dist"
    reports = torchrun_two("dist_train_check.py", clips, out, port=29500)
    assert reports[0]["world"] == reports[1]["world"] == 2
    assert reports[0]["weights_hash"] == reports[1]["weights_hash"]
    assert reports[0]["steps"] == reports[1]["steps"] == 3
    seen0, seen1 = set(reports[0]["indices"]), set(reports[1]["indices"])
    assert seen0 and seen1 and not seen0 & seen1  # each process its own shard
    # the checkpoint written by the main process holds the replicas' weights
    saved = weights(out / "run")
    assert reports[0]["weights_hash"] == hash_state(saved)


@pytest.mark.slow
@needs_fused_cpu
def test_two_processes_agree_on_device_side_skips_and_on_a_stop(clips, tmp_path):
    """A NaN loss on one process skips the step on both; SIGTERM to one process after step 3
    stops both at the first read of the agreed flag after it (reads: every STOP_CHECK_EVERY
    steps, at log steps and epoch ends; here the end of epoch 2, step 6), with identical weights."""
    from avmae.train.trainer import STOP_CHECK_EVERY

    assert STOP_CHECK_EVERY > 6
    out = tmp_path / "dist"
    reports = torchrun_two("dist_nonfinite_check.py", clips, out, port=30500)
    assert reports[0] == reports[1]
    assert reports[0]["steps"] == 6 and reports[0]["interrupted"] and reports[0]["skipped_steps"] == 1
    state = json.loads((list_checkpoints(out / "run")[-1] / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["skipped_steps"] == 1


def hash_state(sd):
    import hashlib

    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def test_cli_runs_from_any_directory(clips, tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    args = [
        sys.executable,
        str(REPO / "tools" / "train.py"),
        "--modality",
        "audio",
        "--output-dir",
        "out",
        "model.name=audiomae_tiny",
        f"data.train_manifest={clips / 'train.json'}",
        "data.target_length=64",
        "data.num_mel_bins=64",
        "train.batch_size=4",
        "train.cpu=true",
        "schedule.max_steps=2",
        "logging.progress=false",
        "eval.every_n_epochs=-1",
    ]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run folder:" in proc.stdout and "train loss:" in proc.stdout
    assert list_checkpoints(tmp_path / "out")[-1].name == "step_0000002"


def test_cli_reports_config_errors_by_key(capsys):
    from avmae.cli import train as cli  # behind tools/train.py

    assert cli.main(["--modality", "audio", "optim.blr=-1"]) == 2
    assert "optim.blr" in capsys.readouterr().err
    assert cli.main(["--print-config", "train.batch_size=3"]) == 0
    assert "batch_size: 3" in capsys.readouterr().out


def test_log_lines_are_written_above_the_progress_bar_not_into_it(clips, tmp_path, capsys):
    """With the bar shown and a console log handler (as tools/train.py sets up), every log line,
    the evaluation's among them, starts a line of its own; the handlers are restored after fit."""
    import logging
    import sys

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # the stream capsys captures
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    before_level, before_handlers = root.level, list(root.handlers)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        Trainer(
            tiny_config(
                clips,
                tmp_path / "run",
                "schedule.max_steps=3",
                "logging.progress=true",
                "logging.tensorboard=false",
                "train.mixed_precision=no",
            )
        ).fit()
        assert root.handlers == before_handlers + [handler]  # the redirection ended with the run
    finally:
        root.removeHandler(handler)
        root.setLevel(before_level)
    err = capsys.readouterr().err
    segments = [s for s in err.replace("\r", "\n").split("\n") if "eval at step 3" in s]
    assert len(segments) == 1 and segments[0].startswith("LOG eval at step 3: loss "), err[-2000:]
    assert "it/s" in err or "s/it" in err  # the bar was shown


class SlowSteps(Trainer):
    """Every optimizer step takes at least ``pause`` seconds more: a busy machine."""

    pause = 0.0

    def on_step_end(self, step):
        if self.pause:
            import time

            time.sleep(self.pause)


def _lrs(run_dir):
    return [r["train/lr"] for r in read_metrics(run_dir / "metrics.jsonl") if "train/lr" in r]


def test_time_budget_shortens_a_run_on_a_slow_machine_and_still_decays_fully(clips, tmp_path):
    # 12 items / batch 2 = 6 steps an epoch of >= 0.9 s: 50 planned epochs cannot fit in 5 s
    out = tmp_path / "slow"
    trainer = SlowSteps(tiny_config(clips, out, "schedule.epochs=50", "schedule.max_seconds=5", "optim.lr=1e-3"))
    trainer.pause = 0.15
    result = trainer.fit()
    epochs = result.steps // 6
    assert 2 <= epochs <= 5 and result.steps % 6 == 0, result.steps
    assert result.plan.total_steps == result.steps and result.plan.epochs == epochs
    lrs = _lrs(out)
    assert len(lrs) == result.steps and lrs[-1] < 0.2 * max(lrs)  # the cosine followed the shorter run
    state = json.loads((list_checkpoints(out)[-1] / "trainer_state.json").read_text())
    assert state["planned_steps"] == result.steps and state["seconds"] > 0.9 * epochs


def test_time_budget_lengthens_a_run_on_a_fast_machine(clips, tmp_path):
    out = tmp_path / "fast"
    result = Trainer(tiny_config(clips, out, "schedule.epochs=1", "schedule.max_seconds=4")).fit()
    assert result.steps > 6 and result.steps % 6 == 0  # more than the one planned epoch
    assert result.plan.epochs == result.steps // 6
    assert result.seconds < 4 + 3  # within the budget, give or take the last epoch's estimate and the saving


def test_time_budget_is_checked_with_the_other_schedule_keys():
    with pytest.raises(ConfigError, match="schedule.max_seconds"):
        load_config([], ["schedule.max_seconds=0"])
    with pytest.raises(ConfigError, match="schedule.max_seconds"):
        load_config([], ["schedule.max_seconds=60", "schedule.max_steps=10"])


def test_time_budget_carries_across_a_resume(clips, tmp_path):
    out = tmp_path / "budget"
    args = ("schedule.epochs=50", "schedule.max_seconds=3", "optim.lr=1e-3")

    class SlowStop(SlowSteps):
        def on_step_end(self, step):
            super().on_step_end(step)
            if step == 8:  # in the second epoch, after one re-planning
                os.kill(os.getpid(), signal.SIGTERM)

    first = SlowStop(tiny_config(clips, out, *args))
    first.pause = 0.05
    part = first.fit()
    assert part.interrupted and part.steps == 8
    saved = json.loads((list_checkpoints(out)[-1] / "trainer_state.json").read_text())
    assert saved["planned_steps"] == part.plan.total_steps < 50 * 6 and saved["seconds"] >= 8 * 0.05
    rest = SlowSteps(tiny_config(clips, out, *args, "resume=true"))
    rest.pause = 0.05
    result = rest.fit()
    assert result.start_step == 8 and result.steps % 6 == 0 and result.steps < 50 * 6
    final = json.loads((list_checkpoints(out)[-1] / "trainer_state.json").read_text())
    assert final["seconds"] > saved["seconds"] and final["seconds"] < 3 + 2  # the time before the stop counted

"""`avmae finetune` end to end, through the CLI, on tiny generated folders: the bench's set generators,
the from-scratch plan (frequency bands kept apart), ``--init``, the self-supervised pretraining phase,
``--no-pretrain``, ``--budget``, the summary (training and held-out accuracy, best epoch) and the
did-not-learn warning."""

import json
import re
import time

import pytest
import torch

import avmae
from avmae import cli
from avmae.config import load_config
from avmae.data import load_audio
from avmae.data.labelled_sets import (
    EVENTS,
    TEST_VOICES,
    TRAIN_VOICES,
    SynthesiserMissing,
    Voice,
    add_noise,
    event_clip,
    write_sound_events,
    write_spoken_words,
)
from avmae.train import own_data_run

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["data.num_workers=0", "logging.progress=false", "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """Three sound events in class folders: 8 training and 6 test clips each."""
    return write_sound_events(
        tmp_path_factory.mktemp("events"), {"train": 8, "test": 6}, events=["pluck", "drum", "whistle"]
    )


# ------------------------------------------------------------------------------ the generators


def test_sound_events_are_deterministic_labelled_and_noisy(tmp_path):
    a = write_sound_events(tmp_path / "a", {"train": 2, "test": 1}, events=EVENTS[:4])
    b = write_sound_events(tmp_path / "b", {"train": 2, "test": 1}, events=EVENTS[:4])
    names = sorted(p.relative_to(a["train"]).as_posix() for p in a["train"].rglob("*.wav"))
    assert names == [f"{e}/{k:03d}.wav" for e in sorted(EVENTS[:4]) for k in range(2)]
    for p in a["train"].rglob("*.wav"):
        wa, wb = load_audio(p), load_audio(b["train"] / p.relative_to(a["train"]))
        assert torch.equal(wa, wb) and 0.35 * 16000 <= wa.shape[1] <= 1.3 * 16000 and wa.abs().max() <= 1.0
    assert {p.parent.name for p in a["test"].rglob("*.wav")} == set(EVENTS[:4])
    for kind in EVENTS:  # every kind makes a finite, non-silent sound
        x = event_clip(kind, torch.Generator().manual_seed(1))
        assert torch.isfinite(x).all() and x.abs().max() > 0
    with pytest.raises(ValueError, match="unknown event"):
        event_clip("gong", torch.Generator())
    # the background comes at the asked SNR (power of the signal over the added noise)
    sig = 0.5 * (-1.0) ** torch.arange(16000)  # every sample active
    noisy = add_noise(sig, 10.0, torch.Generator().manual_seed(0))
    snr = 10 * torch.log10(sig.pow(2).mean() / (noisy - sig).pow(2).mean())
    assert float(snr) == pytest.approx(10.0, abs=0.01)


def test_spoken_words_need_their_synthesiser(tmp_path, monkeypatch):
    assert not {v.name for v in TRAIN_VOICES["espeak-ng"]} & {v.name for v in TEST_VOICES["espeak-ng"]}
    assert not set(TRAIN_VOICES["flite"]) & set(TEST_VOICES["flite"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no synthesiser on it
    with pytest.raises(SynthesiserMissing, match="apt-get install espeak-ng"):
        write_spoken_words(tmp_path / "w", {"train": 1})
    with pytest.raises(SynthesiserMissing, match="flite is not installed"):
        own_data_speak = __import__("avmae.data.labelled_sets", fromlist=["speak"]).speak
        own_data_speak(Voice("flite", "slt"), "yes")
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------ the one command


def _finetune(capsys, *args):
    code = cli.main(["finetune", *map(str, args), *QUIET])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def _finetune_events(capsys, events, *args):
    """``avmae finetune`` on the events fixture (held-out split given), with ``args`` after it."""
    return _finetune(capsys, events["train"], "--eval", events["test"], *args)


def _pct(out, label):
    m = re.search(rf"^{label}:\s+([\d.]+) %", out, re.M)
    assert m, out
    return float(m.group(1)) / 100


def test_from_scratch_learns_and_reports(events, tmp_path, capsys):
    out = _finetune_events(
        capsys,
        events,
        "--model",
        "audiomae_tiny_cls",
        "--no-pretrain",
        "-o",
        tmp_path / "run",
        "schedule.epochs=16",
    )
    assert "pretrain plan:" not in out and not (tmp_path / "run" / "pretrain").exists()
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "global_pool: time_avg" in cfg and "mask_f_prob: 0.0" in cfg  # the bands kept apart, none masked
    train_acc, held = _pct(out, "train accuracy"), _pct(out, "held-out accuracy")
    assert train_acc >= 0.7 and held >= 0.5, out  # chance 1/3
    best = re.search(r"^best held-out: ([\d.]+) % at epoch (\d+)", out, re.M)
    assert best and float(best.group(1)) / 100 >= held and 1 <= int(best.group(2)) <= 16
    assert "DID NOT LEARN" not in out
    # the training accuracy is that of the saved classifier on the training clips, unaugmented
    model, _ = avmae.hub.load_pretrained(tmp_path / "run")
    assert model.global_pool == "time_avg" and model.head.in_features == 8 * 64


def test_did_not_learn_says_so(events, tmp_path, capsys):
    out = _finetune_events(
        capsys,
        events,
        "--model",
        "audiomae_tiny_cls",
        "--no-pretrain",
        "-o",
        tmp_path / "run",
        "schedule.epochs=2",
        "optim.lr=1e-9",  # nothing moves: the classifier keeps guessing one class
        "schedule.min_lr=0",
    )
    loss = float(re.search(r"^train accuracy: [\d.]+ % \(loss ([\d.]+);", out, re.M).group(1))
    assert loss == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=0.01)  # the prior, untouched
    assert "DID NOT LEARN: on its own training clips the classifier is near chance" in out
    assert "--budget" in out and "--init" in out


def test_pretrain_phase_then_finetune(events, tmp_path, capsys):
    unlabelled = write_sound_events(tmp_path / "more", {"extra": 2}, events=["bell", "claps"])["extra"]
    out = _finetune_events(
        capsys,
        events,
        "--model",
        "audiomae_tiny_cls",
        "--pretrain",
        "--unlabelled",
        unlabelled,
        "--budget",
        "20",
        "-o",
        tmp_path / "run",
    )
    pre = tmp_path / "run" / "pretrain"
    assert "pretrain plan:" in out and "data: 28 clips (24 training, 4 unlabelled)" in out
    assert len(json.loads((pre / "data" / "pretrain.json").read_text())["data"]) == 28
    losses = [json.loads(line)["train/loss"] for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    cfg = (tmp_path / "run" / "finetune" / "config.yaml").read_text()
    assert f"init_from: {pre}" in cfg and "global_pool: time_avg" in cfg
    assert re.search(r"^pretraining loss: [\d.]+ -> [\d.]+", out, re.M) and "held-out accuracy:" in out


def test_init_uses_the_initial_model(events, tmp_path, capsys):
    mae = avmae.create_model("audiomae_tiny", target_length=128)
    init = avmae.save_checkpoint(
        mae, tmp_path / "pre" / "model.safetensors", config={"data": {"mean": -6.0, "std": 4.0}}
    )
    out = _finetune_events(capsys, events, "--init", init, "-o", tmp_path / "run", "schedule.epochs=2")
    assert "pretrain plan:" not in out  # a given encoder is not pretrained again
    assert "statistics: mean -6, std 4, those the initial model was trained with" in out
    assert "layer-wise decay 0.75" in out and "held-out accuracy:" in out and "train accuracy:" in out


def test_budget_sets_the_length(events, tmp_path, capsys, monkeypatch):
    # the probe's first plan (a machine of known speed), then the trainer's re-planning from the speed it sees
    monkeypatch.setattr(own_data_run, "step_seconds", lambda cfg, **kw: 0.05)
    plans = {}
    for budget in ("6", "14"):
        t0 = time.time()
        out = _finetune_events(
            capsys,
            events,
            "--model",
            "audiomae_tiny_cls",
            "--no-pretrain",
            "--budget",
            budget,
            "-o",
            tmp_path / f"run{budget}",
        )
        took = time.time() - t0
        m = re.search(r"length: (\d+) epochs of (\d+) steps \(0.05 s a step measured now; (\d+) s of the", out)
        assert m and "re-planned at every epoch end" in out, out
        plans[budget] = epochs, steps, left = int(m.group(1)), int(m.group(2)), int(m.group(3))
        lo, hi = (max(own_data_run.MIN_EPOCHS, int(t / (0.05 * steps))) for t in (left - 0.5, left + 0.5))
        assert lo <= epochs <= hi and left <= 0.92 * int(budget) + 0.5  # printed rounded to the second
        saved = load_config([tmp_path / f"run{budget}" / "config.yaml"])
        assert saved.schedule.max_seconds == pytest.approx(left, abs=1)  # the trainer ends the run on time
        assert took < int(budget) + 10  # the whole command, within its budget give or take the last epoch
    assert plans["14"][0] > plans["6"][0] >= own_data_run.MIN_EPOCHS


def test_step_seconds_times_the_planned_model():
    from avmae.config import load_config

    cfg = load_config(
        [], ["task=finetune", "model.name=audiomae_tiny_cls", "data.target_length=64", "train.batch_size=4"]
    )
    bare = own_data_run.step_seconds(cfg)
    assert 0 < bare < 10
    # the decoding of the batch's clips is added, and the overhead factor applies to both
    assert own_data_run.step_seconds(cfg, clip_seconds=0.5) >= 4 * 0.5 * own_data_run.STEP_OVERHEAD


def test_time_avg_pool_keeps_the_frequency_bands_apart():
    model = avmae.create_model("audiomae_tiny_cls", num_classes=3, target_length=64, global_pool="time_avg").eval()
    x = torch.randn(2, 1, 64, 128)
    tokens = model.forward_tokens({"audio": x})[:, 1:]  # [B, 4*8, D], token t * 8 + f
    ref = torch.cat([model.fc_norm(tokens[:, f::8].mean(dim=1)) for f in range(8)], dim=1)
    torch.testing.assert_close(model.forward_features({"audio": x}), ref)
    assert model.head.in_features == 8 * 64 and model({"audio": x}).shape == (2, 3)
    with pytest.raises(ValueError, match="mask_f_prob=0"):
        avmae.create_model("audiomae_tiny_cls", global_pool="time_avg", mask_f_prob=0.2)

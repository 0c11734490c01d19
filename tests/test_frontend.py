"""AudioMAE fbank frontend (exactness against a direct torchaudio call) and augmentations."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchaudio
from torchaudio.compliance import kaldi

from avmae.data import NORM_STATS, AudioFrontend, fbank
from avmae.data.audio import num_frames, pad_or_crop
from avmae.data.augment import (
    fbank_noise,
    mask_along_axis,
    mixup_waveforms,
    random_gain,
    random_roll,
    sample_beta,
    spec_augment,
)

MEAN, STD = -4.2677393, 4.5689974


def reference(waveform, target_length, mean=MEAN, std=STD, sr=16000, mel=128, center=True):
    """The official AudioMAE dataset steps, written out independently."""
    if center:
        waveform = waveform - waveform.mean()
    x = kaldi.fbank(
        waveform,
        htk_compat=True,
        sample_frequency=sr,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=mel,
        dither=0.0,
        frame_shift=10,
    )
    p = target_length - x.shape[0]
    if p > 0:
        x = torch.nn.ZeroPad2d((0, 0, 0, p))(x)
    elif p < 0:
        x = x[0:target_length, :]
    return ((x - mean) / (std * 2)).unsqueeze(0)


def clip(seconds, seed=0, sr=16000):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(sr * seconds)) / sr
    return (0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(t.numel(), generator=g))[None]


@pytest.mark.parametrize("seconds,target", [(10.0, 1024), (3.0, 1024), (12.0, 1024), (1.0, 100), (5.12, 512)])
def test_matches_official_steps_exactly(seconds, target):
    w = clip(seconds)
    out = AudioFrontend(target_length=target)(w)
    assert out.shape == (1, target, 128) and out.dtype == torch.float32
    assert torch.equal(out, reference(w, target))


def test_other_stats_and_mel_bins():
    w = clip(2.0, seed=1)
    mean, std = NORM_STATS["esc50"]
    fe = AudioFrontend.for_dataset("esc50", num_mel_bins=64, target_length=256)
    assert (fe.mean, fe.std, fe.num_mel_bins) == (mean, std, 64)
    assert torch.equal(fe(w), reference(w, 256, mean, std, mel=64))
    with pytest.raises(KeyError):
        AudioFrontend.for_dataset("nope")


def test_norm_stats_values():
    assert NORM_STATS == {
        "audioset": (-4.2677393, 4.5689974),
        "esc50": (-6.6268077, 5.358466),
        "speechcommands": (-6.845978, 5.5654526),
        "cavmae": (-5.081, 4.4849),
    }
    fe = AudioFrontend()
    assert (fe.sample_rate, fe.num_mel_bins, fe.target_length, fe.mean, fe.std) == (16000, 128, 1024, MEAN, STD)


def test_ten_seconds_is_998_frames_then_padding_value():
    w = clip(10.0)
    assert fbank(w).shape == (998, 128) and num_frames(160000) == 998
    out = AudioFrontend()(w)
    pad_value = (0.0 - MEAN) / (2 * STD)  # zero-padding happens before normalisation
    assert torch.allclose(out[0, 998:], torch.full((26, 128), pad_value))
    assert abs(pad_value - 0.467) < 1e-3


def test_crop_keeps_first_frames():
    w = clip(12.0)
    full = AudioFrontend(target_length=None)(w)
    assert full.shape == (1, num_frames(w.shape[1]), 128)
    assert torch.equal(AudioFrontend()(w), full[:, :1024])


@pytest.mark.parametrize("n", [1, 10, 399, 400, 401])
def test_shorter_than_one_frame(n):
    w = clip(1.0)[:, :n]
    out = AudioFrontend(target_length=64)(w)
    assert out.shape == (1, 64, 128) and torch.isfinite(out).all()
    if n >= 400:
        assert torch.equal(out, reference(w, 64))
    else:  # centred first, then zero-padded to one 25 ms frame
        assert torch.equal(out, reference(F.pad(w - w.mean(), (0, 400 - n)), 64, center=False))
        assert torch.allclose(out[0, 1:], torch.full((63, 128), (0 - MEAN) / (2 * STD)))


def test_silent_and_constant_clips_are_finite():
    for w in (torch.zeros(1, 16000), torch.full((1, 16000), 0.3)):
        out = AudioFrontend(target_length=128)(w)
        assert torch.isfinite(out).all()
        frames = out[0, : num_frames(16000)]
        assert frames.std() < 1e-5  # every bin at log(float eps)
        assert torch.allclose(frames, torch.full_like(frames, (math.log(torch.finfo().eps) - MEAN) / (2 * STD)))


def test_accepts_1d_rejects_multichannel():
    w = clip(1.0)
    fe = AudioFrontend(target_length=100)
    assert torch.equal(fe(w[0]), fe(w))
    with pytest.raises(ValueError):
        fe(torch.zeros(2, 16000))


def test_pad_or_crop():
    x = torch.randn(5, 3)
    assert torch.equal(pad_or_crop(x, 8)[5:], torch.zeros(3, 3))
    assert torch.equal(pad_or_crop(x, 2), x[:2])


# ---------------------------------------------------------------------------- augmentations
def test_spec_augment_matches_torchaudio_masking():
    x = AudioFrontend(target_length=300).compute_fbank(clip(3.0))
    torch.manual_seed(123)
    ours = spec_augment(x, freqm=48, timem=96)
    torch.manual_seed(123)
    view = x.t().unsqueeze(0)  # [1, F, T], as the official dataset does
    view = torchaudio.transforms.FrequencyMasking(48)(view)
    view = torchaudio.transforms.TimeMasking(96)(view)
    assert torch.equal(ours, view.squeeze(0).t())


def test_spec_augment_masks_with_zero_and_generator():
    x = torch.randn(200, 128) - 5
    g = torch.Generator().manual_seed(0)
    out = spec_augment(x, freqm=48, timem=60, generator=g)
    masked_bins = (out == 0).all(0)
    masked_frames = (out == 0).all(1)
    assert 0 < masked_bins.sum() < 48 and 0 < masked_frames.sum() < 60
    # masked region is contiguous
    idx = masked_bins.nonzero().flatten()
    assert int(idx[-1] - idx[0] + 1) == idx.numel()
    same = spec_augment(x, 48, 60, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    assert torch.equal(spec_augment(x, 0, 0), x)
    assert torch.equal(mask_along_axis(x, 0, axis=0), x)


def test_sample_beta_moments_and_reproducibility():
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([sample_beta(10, 10, g) for _ in range(3000)])
    assert ((draws > 0) & (draws < 1)).all()
    assert abs(draws.mean() - 0.5) < 0.01
    assert abs(draws.var() - 100 / (400 * 21)) < 0.002
    small = torch.tensor([sample_beta(0.5, 2.0, g) for _ in range(3000)])
    assert abs(small.mean() - 0.2) < 0.015
    a = [sample_beta(10, 10, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert a[0] == a[1]


def test_mixup_waveforms():
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(1, 1000), torch.randn(1, 600)
    y1, y2 = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 1.0])
    mixed, y, lam = mixup_waveforms(w1, w2, y1, y2, g)
    assert mixed.shape == (1, 1000) and 0 < lam < 1
    expected = lam * w1 + (1 - lam) * F.pad(w2, (0, 400))
    assert torch.allclose(mixed, expected - expected.mean(), atol=1e-6)
    assert abs(float(mixed.mean())) < 1e-6
    assert torch.allclose(y, torch.tensor([lam, 1 - lam, 1 - lam]))
    mixed, _, lam = mixup_waveforms(w2, w1, y1, y2, torch.Generator().manual_seed(1))
    assert mixed.shape == (1, 600)  # partner cut to the first one's length
    expected = lam * w2 + (1 - lam) * w1[:, :600]
    assert torch.allclose(mixed, expected - expected.mean(), atol=1e-6)


def test_random_roll_really_rolls():
    w = torch.arange(1000.0)[None]
    shifts = set()
    for seed in range(20):
        out = random_roll(w, torch.Generator().manual_seed(seed))
        shift = int(out[0, 0] and (1000 - out[0, 0]))
        assert torch.equal(out, torch.roll(w, shift, -1))
        shifts.add(shift)
    assert len(shifts) > 10


def test_random_gain_range():
    w = torch.ones(1, 10)
    gains = [float(random_gain(w, torch.Generator().manual_seed(s))[0, 0]) for s in range(200)]
    assert all(0.5 < x < 1.5 for x in gains)
    assert abs(sum(gains) / len(gains) - 1.0) < 0.03


def test_fbank_noise_shape_and_determinism():
    x = torch.zeros(50, 8)
    a = fbank_noise(x, torch.Generator().manual_seed(3))
    b = fbank_noise(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    assert 0 <= a.min() and a.max() <= 0.1

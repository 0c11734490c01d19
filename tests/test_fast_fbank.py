"""Batched Kaldi fbank and the fast decode path against torchaudio / the per-item frontend."""

import io
import math

import numpy as np
import pytest
import torch
from torchaudio.compliance import kaldi

from avmae.data import AudioFrontend, MediaError, load_audio, save_audio
from avmae.data.fast_fbank import BatchedAudioFrontend, BatchedFbank, collate_waveforms, decode_audio, pad_waveforms

SR = 16000


def kaldi_fbank(wave, mel=128):
    """AudioMAE's call, written out independently of avmae."""
    return kaldi.fbank(
        wave[None],
        htk_compat=True,
        sample_frequency=SR,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=mel,
        dither=0.0,
        frame_shift=10,
    )


def signals():
    g = torch.Generator().manual_seed(0)
    t = lambda n: torch.arange(n) / SR  # noqa: E731
    return [
        0.3 * torch.sin(2 * math.pi * 440 * t(SR * 3)),  # pure tone: very low bins far from the peak
        torch.zeros(12000),  # silence: every bin at the epsilon floor
        0.1 * torch.randn(33333, generator=g),  # noise, odd length
        0.2 * torch.sin(2 * math.pi * 3000 * t(8000)) + 1e-3 * torch.randn(8000, generator=g) + 0.05,  # DC offset
        0.9 * torch.sign(torch.randn(20000, generator=g)),  # clipped
        0.5 * torch.randn(401, generator=g),  # exactly one frame
    ]


@pytest.mark.parametrize("mel", [128, 64])
def test_each_item_matches_kaldi(mel):
    fb = BatchedFbank(SR, mel)
    for s in signals():
        ref = kaldi_fbank(s, mel)
        out = fb(s[None])[0]
        assert out.shape == ref.shape
        assert (out - ref).abs().max() < 1e-4


def test_padded_batch_with_lengths_matches_kaldi_per_item():
    sigs = signals()
    waves, lengths = pad_waveforms(sigs)
    assert waves.shape == (len(sigs), max(s.numel() for s in sigs)) and lengths.tolist() == [s.numel() for s in sigs]
    fb = BatchedFbank(SR, 128, pad_value=-7.0)
    out = fb(waves, lengths)
    for i, s in enumerate(sigs):
        ref = kaldi_fbank(s)
        m = ref.shape[0]
        assert int(fb.num_frames(lengths[i])) == m
        assert (out[i, :m] - ref).abs().max() < 1e-4
        assert (out[i, m:] == -7.0).all()


def test_batched_pass_matches_per_item_pass():
    """The one-pass path (default on accelerators) against the per-item path (default on CPU)."""
    waves, lengths = pad_waveforms(signals())
    fb = BatchedFbank()
    a = fb(waves, lengths, per_item=True)
    b = fb(waves, lengths, per_item=False)
    assert (a - b).abs().max() < 1e-4
    # centring by a differently rounded mean moves only bins at float noise level
    a = fb(waves, lengths, center=True, per_item=True)
    b = fb(waves, lengths, center=True, per_item=False)
    assert (a - b).abs().mean() < 1e-5
    assert ((a - b).abs() > 1e-4).float().mean() < 1e-3


@pytest.mark.parametrize("target_length", [1024, 128])
def test_frontend_equals_audio_frontend_stacked(target_length):
    sigs = [s for s in signals()] + [torch.randn(300) * 0.1]  # shorter than one frame
    fe = AudioFrontend(target_length=target_length)
    bfe = BatchedAudioFrontend.from_frontend(fe)
    ref = torch.stack([fe(s[None]) for s in sigs])
    out = bfe([s[None] for s in sigs])
    assert out.shape == (len(sigs), 1, target_length, 128) and out.dtype == torch.float32
    assert (out - ref).abs().max() * 2 * fe.std < 1e-4


def test_frontend_under_autocast_stays_float32():
    s = signals()[0][None]
    fe = AudioFrontend(target_length=256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = BatchedAudioFrontend.from_frontend(fe)([s])
    assert out.dtype == torch.float32
    assert (out[0] - fe(s)).abs().max() * 2 * fe.std < 1e-4


def test_collate_waveforms():
    items = [
        {"wave": torch.ones(1, n), "label": torch.tensor([1.0, 0.0]), "index": i, "path": f"p{i}"}
        for i, n in enumerate([5, 3])
    ]
    batch = collate_waveforms(items)
    assert batch["wave"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch["length"].tolist() == [5, 3] and batch["index"].tolist() == [0, 1]
    assert batch["label"].shape == (2, 2) and batch["path"] == ["p0", "p1"]


def _sine(seconds, rate, channels=1):
    t = torch.arange(int(rate * seconds)) / rate
    w = 0.4 * torch.sin(2 * math.pi * 523 * t)
    return w.expand(channels, -1).clone() if channels > 1 else w[None]


@pytest.mark.parametrize(
    "name,rate,channels",
    [("a.flac", SR, 1), ("b.wav", SR, 2), ("c.mp3", SR, 1), ("d.ogg", SR, 1), ("e.flac", 22050, 1), ("f.m4a", SR, 2)],
)
def test_decode_audio_equals_load_audio(tmp_path, name, rate, channels):
    path = save_audio(tmp_path / name, _sine(0.7, rate, channels), rate)
    want = load_audio(path, SR)
    got = decode_audio(path, SR)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(decode_audio(path, SR, max_seconds=0.2), load_audio(path, SR, max_seconds=0.2))
    with open(path, "rb") as f:  # file objects too (tar members)
        assert torch.equal(decode_audio(io.BytesIO(f.read()), SR), want)


def test_decode_audio_raises_media_error(tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(MediaError, match="bad.flac"):
        decode_audio(bad)
    with pytest.raises(MediaError, match="not found"):
        decode_audio(tmp_path / "missing.flac")


def test_decode_audio_matches_load_audio_on_random_int16(tmp_path):
    data = np.random.default_rng(0).integers(-32768, 32767, size=5000).astype(np.float32) / 32768
    path = save_audio(tmp_path / "r.flac", torch.from_numpy(data)[None], SR)
    assert torch.equal(decode_audio(path), load_audio(path))


def test_waveform_dataset_batched_equals_audio_dataset(tmp_path):
    from avmae.data import AudioDataset, synthesize_clip
    from avmae.data.datasets import item_generator
    from avmae.data.fast_fbank import WaveformDataset

    items = []
    for i in range(5):
        save_audio(
            tmp_path / f"c{i}.flac", synthesize_clip(i % 6, item_generator(2, 0, i), seconds=0.3 + 0.1 * i)[None], SR
        )
        items.append({"wav": str(tmp_path / f"c{i}.flac"), "labels": ""})
    fe = AudioFrontend(target_length=64)
    aug = {"gain": True, "roll": True, "mixup": 0.5}
    for train in (False, True):
        ref = AudioDataset(items, frontend=fe, train=train, augment=aug, seed=4)
        wds = WaveformDataset(items, frontend=fe, train=train, augment=aug, seed=4)
        batch = collate_waveforms([wds[i] for i in range(len(wds))])
        out = BatchedAudioFrontend.from_frontend(fe, center=False)(batch["wave"], batch["length"])
        want = torch.stack([ref[i]["audio"] for i in range(len(ref))])
        assert (out - want).abs().max() * 2 * fe.std < 1e-4
        assert torch.equal(batch["index"], torch.arange(5))
    with pytest.raises(ValueError, match="freqm"):
        WaveformDataset(items, frontend=fe, train=True, augment={"freqm": 8})

"""Bad media never escape as anything but MediaError: fuzzed files through every reader."""

import random

import pytest
import torch

from avmae.data import MediaError, load_audio
from avmae.data.io import save_audio


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    t = torch.arange(16000 * 2) / 16000
    wave = (0.3 * torch.sin(2 * torch.pi * 440 * t)).reshape(1, -1)
    paths = []
    for suffix in (".wav", ".flac", ".mp3", ".ogg", ".m4a"):
        paths.append(save_audio(root / f"tone{suffix}", wave, 16000))
    return paths


def test_decode_time_limit_is_a_media_error(good_files):
    with pytest.raises(MediaError, match="time limit"):
        load_audio(good_files[1], timeout=0.0)
    assert load_audio(good_files[1], timeout=None).shape[1] == 32000


def _mutations(data: bytes, rng: random.Random):
    n = len(data)
    yield "empty", b""
    yield "one byte", data[:1]
    yield "header only", data[:64]
    for frac in (0.1, 0.5, 0.9):
        yield f"truncated {frac}", data[: int(n * frac)]
    for i in range(4):
        buf = bytearray(data)
        for _ in range(max(1, n // 200)):
            buf[rng.randrange(n)] = rng.randrange(256)
        yield f"byte flips {i}", bytes(buf)
    buf = bytearray(data)
    start = rng.randrange(n // 4, n // 2)
    buf[start : start + 512] = bytes(512)
    yield "zeroed block", bytes(buf)
    yield "text", b"this is not audio at all\n" * 20


def test_fuzzed_audio_only_raises_media_error_or_decodes(good_files, tmp_path):
    rng = random.Random(0)
    outcomes = {"ok": 0, "media_error": 0}
    for src in good_files:
        data = src.read_bytes()
        for name, blob in _mutations(data, rng):
            for suffix in (src.suffix, ".wav"):  # also a wrong extension
                path = tmp_path / f"{src.stem}-{name.replace(' ', '_')}{suffix}"
                path.write_bytes(blob)
                try:
                    wave = load_audio(path, timeout=10.0)
                except MediaError as err:
                    assert str(path) in str(err)
                    outcomes["media_error"] += 1
                else:
                    assert wave.dim() == 2 and wave.shape[0] == 1 and wave.shape[1] > 0
                    assert torch.isfinite(wave).all()
                    outcomes["ok"] += 1
    assert outcomes["media_error"] > 0

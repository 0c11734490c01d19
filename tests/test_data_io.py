"""load_audio / MediaError on media generated here with PyAV and the standard library."""

import io
import math
import pickle
import struct
import wave as wavemod

import av
import numpy as np
import pytest
import torch

from avmae.data import MediaError, load_audio, save_audio


def sine(freq, rate, seconds, amp=0.5):
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


def write_wav_int16(path, channels, rate):
    """``channels: [C, N]`` float -> 16-bit PCM WAV via the stdlib (independent of PyAV)."""
    data = np.round(channels.numpy().T * 32767).astype("<i2")
    with wavemod.open(str(path), "wb") as w:
        w.setnchannels(channels.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def write_wav_float(path, samples, rate):
    """Mono IEEE-float WAV (format tag 3) written byte by byte."""
    payload = np.asarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def write_pcm(path, samples, rate, codec):
    """Mono WAV with a given PCM codec (pcm_s32le, pcm_u8, ...) through PyAV."""
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream(codec, rate=rate, layout="mono")
        f = av.AudioFrame.from_ndarray(samples.numpy().reshape(1, -1), format="fltp", layout="mono")
        f.sample_rate, f.pts = rate, 0
        for p in s.encode(f):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def write_video(path, *, audio, video_codec="libx264", audio_codec="aac", rate=16000, fmt=None):
    """A small video file (optionally with an audio track) through PyAV."""
    with av.open(str(path), "w", format=fmt) as c:
        v = c.add_stream(video_codec, rate=10)
        v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        a = c.add_stream(audio_codec, rate=rate, layout="mono") if audio is not None else None
        for i in range(10):
            img = np.full((64, 64, 3), i * 20, dtype=np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            f = av.AudioFrame.from_ndarray(audio.numpy().reshape(1, -1), format="fltp", layout="mono")
            f.sample_rate, f.pts = rate, 0
            for p in a.encode(f):
                c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return path


def peak_hz(x, rate):
    spec = torch.fft.rfft(x.reshape(-1).double()).abs()
    return float(torch.argmax(spec)) * rate / x.numel()


# ---------------------------------------------------------------------------- lossless formats
def test_wav_int16_matches_source(tmp_path):
    src = sine(440, 16000, 1.0)
    y = load_audio(write_wav_int16(tmp_path / "a.wav", src[None], 16000))
    assert y.shape == (1, 16000) and y.dtype == torch.float32
    assert torch.allclose(y[0], src, atol=1e-4)


def test_flac_matches_source(tmp_path):
    src = sine(440, 16000, 1.0)
    y = load_audio(save_audio(tmp_path / "a.flac", src, 16000))
    assert y.shape == (1, 16000)
    assert torch.allclose(y[0], src, atol=1e-4)


@pytest.mark.parametrize("codec,atol", [("pcm_s32le", 1e-6), ("pcm_f32le", 0.0), ("pcm_u8", 1.0 / 64)])
def test_wav_sample_formats_scaled(tmp_path, codec, atol):
    src = sine(300, 16000, 0.5)
    y = load_audio(write_pcm(tmp_path / f"{codec}.wav", src, 16000, codec))
    assert y.shape == (1, 8000)
    assert torch.allclose(y[0], src, atol=atol + 1e-7)


def test_stereo_is_channel_mean(tmp_path):
    s = sine(440, 16000, 0.5)
    y = load_audio(write_wav_int16(tmp_path / "st.wav", torch.stack([s, 0.2 * s]), 16000))
    assert y.shape == (1, 8000)
    assert torch.allclose(y[0], 0.6 * s, atol=1e-4)


# ---------------------------------------------------------------------------- lossy / containers
@pytest.mark.parametrize("suffix,rate", [("mp3", 16000), ("ogg", 16000), ("opus", 48000), ("m4a", 16000)])
def test_lossy_formats(tmp_path, suffix, rate):
    src = sine(1000, rate, 1.0, amp=0.5)
    y = load_audio(save_audio(tmp_path / f"a.{suffix}", src, rate), 16000)
    assert y.dim() == 2 and y.shape[0] == 1
    assert abs(y.shape[1] - 16000) < 16000 * 0.1  # codec priming/padding only
    assert abs(peak_hz(y, 16000) - 1000) < 5
    rms = float(y.pow(2).mean().sqrt())
    assert 0.25 < rms < 0.45  # 0.5 / sqrt(2) = 0.354


def test_audio_track_of_mp4(tmp_path):
    src = sine(700, 16000, 1.0)
    y = load_audio(write_video(tmp_path / "v.mp4", audio=src))
    assert abs(y.shape[1] - 16000) < 2048
    assert abs(peak_hz(y, 16000) - 700) < 5


def test_audio_track_of_webm(tmp_path):
    src = sine(700, 48000, 1.0)
    path = write_video(tmp_path / "v.webm", audio=src, video_codec="libvpx", audio_codec="libopus", rate=48000)
    y = load_audio(path, 16000)
    assert abs(y.shape[1] - 16000) < 1600
    assert abs(peak_hz(y, 16000) - 700) < 5


def test_file_object_source(tmp_path):
    src = sine(440, 16000, 0.25)
    data = save_audio(tmp_path / "a.flac", src, 16000).read_bytes()
    y = load_audio(io.BytesIO(data))
    assert torch.allclose(y[0], src, atol=1e-4)


# ---------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("rate", [44100, 48000, 22050, 44101])
def test_resampling_keeps_length_and_pitch(tmp_path, rate):
    src = sine(1000, rate, 1.0)
    y = load_audio(write_wav_int16(tmp_path / f"r{rate}.wav", src[None], rate), 16000)
    assert abs(y.shape[1] - 16000) <= 1
    assert abs(peak_hz(y, 16000) - 1000) <= 1.5
    # a band-limited resampler keeps the amplitude of an in-band sine
    assert abs(float(y[0, 2000:-2000].abs().max()) - 0.5) < 0.02


def test_upsampling(tmp_path):
    src = sine(500, 8000, 0.5)
    y = load_audio(write_wav_int16(tmp_path / "u.wav", src[None], 8000), 16000)
    assert y.shape == (1, 8000)
    assert abs(peak_hz(y, 16000) - 500) <= 2


def test_max_seconds(tmp_path):
    path = write_wav_int16(tmp_path / "long.wav", sine(440, 16000, 3.0)[None], 16000)
    assert load_audio(path, max_seconds=1.25).shape == (1, 20000)
    assert load_audio(path, max_seconds=10).shape == (1, 48000)


# ---------------------------------------------------------------------------- failures
def assert_media_error(path, *, match=None):
    with pytest.raises(MediaError) as info:
        load_audio(path)
    err = info.value
    assert str(path) in str(err)
    assert err.path == str(path) and err.reason
    if match:
        assert match in err.reason
    return err


def test_missing_file(tmp_path):
    assert_media_error(tmp_path / "nope.wav", match="not found")


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    assert_media_error(tmp_path / "empty.wav", match="empty")


def test_text_file_named_wav(tmp_path):
    (tmp_path / "text.wav").write_text("this is not audio\n" * 20)
    assert_media_error(tmp_path / "text.wav")


def test_directory(tmp_path):
    (tmp_path / "dir.wav").mkdir()
    assert_media_error(tmp_path / "dir.wav")


@pytest.mark.parametrize("keep", [0.5, 0.1, 60, 8, 3])
def test_truncated_flac(tmp_path, keep):
    data = save_audio(tmp_path / "full.flac", sine(440, 16000, 1.0), 16000).read_bytes()
    n = int(len(data) * keep) if keep < 1 else keep
    path = tmp_path / "cut.flac"
    path.write_bytes(data[:n])
    try:
        y = load_audio(path)
    except MediaError as err:
        assert str(path) in str(err)
    else:  # a decoder may return what it could read: then it must be valid and shorter
        assert y.shape[0] == 1 and 0 < y.shape[1] < 16000 and torch.isfinite(y).all()


def test_corrupted_middle(tmp_path):
    data = bytearray(save_audio(tmp_path / "a.mp3", sine(440, 16000, 1.0), 16000).read_bytes())
    rng = np.random.default_rng(0)
    data[200:] = rng.integers(0, 256, len(data) - 200, dtype=np.uint8).tobytes()
    path = tmp_path / "garbled.mp3"
    path.write_bytes(bytes(data))
    try:
        y = load_audio(path)
    except MediaError as err:
        assert str(path) in str(err)
    else:
        assert torch.isfinite(y).all()


def test_video_without_audio(tmp_path):
    assert_media_error(write_video(tmp_path / "mute.mp4", audio=None), match="no audio stream")


def test_nan_samples(tmp_path):
    samples = np.zeros(1600, np.float32)
    samples[100] = np.nan
    assert_media_error(write_wav_float(tmp_path / "nan.wav", samples, 16000), match="NaN")
    samples[100] = np.inf
    assert_media_error(write_wav_float(tmp_path / "inf.wav", samples, 16000), match="NaN")


def test_float_wav_ok(tmp_path):
    samples = sine(440, 16000, 0.1).numpy()
    y = load_audio(write_wav_float(tmp_path / "f.wav", samples, 16000))
    assert torch.equal(y[0], torch.from_numpy(samples))


@pytest.mark.parametrize("rate", [0, 1_000_000])
def test_absurd_sample_rate(tmp_path, rate):
    path = write_wav_float(tmp_path / f"rate{rate}.wav", np.zeros(1600, np.float32), rate)
    assert_media_error(path)


def test_zero_samples(tmp_path):
    assert_media_error(write_wav_float(tmp_path / "nosamples.wav", np.zeros(0, np.float32), 16000))


def test_media_error_forms_and_pickling():
    err = MediaError("/x/a.flac", "no audio stream")
    assert str(err) == "/x/a.flac: no audio stream"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason, str(again)) == ("/x/a.flac", "no audio stream", str(err))
    one = MediaError("/x/a.flac: no audio stream")
    assert (one.path, one.reason, str(one)) == ("/x/a.flac", "no audio stream", str(err))


def test_bad_arguments(tmp_path):
    path = write_wav_int16(tmp_path / "a.wav", sine(440, 16000, 0.1)[None], 16000)
    with pytest.raises(ValueError):
        load_audio(path, 0)
    with pytest.raises(ValueError):
        load_audio(path, max_seconds=0)

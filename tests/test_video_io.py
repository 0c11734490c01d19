"""Video decoding with PyAV: containers, frame sampling, seeking, transforms, frame folders, errors."""

import math
import os
import threading

import av
import numpy as np
import pytest
import torch

import avmae.data.video as V
from avmae.data import MediaError, load_audio, save_audio
from avmae.data.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_all_frames,
    decode_frames,
    extract_frame_folder,
    frame_folder_indices,
    frame_folder_path,
    load_av,
    load_frame_folder,
    load_frames,
    probe_video,
    sample_times,
    transform_frames,
)


def colour(k):
    """Frame k is a flat picture whose red and green levels spell k in base 16."""
    return np.array([(k % 16) * 16, (k // 16) * 16, 128], np.uint8)


def write_video(path, *, vcodec="libx264", acodec="aac", n=30, fps=10, size=48, gop=None, audio_rate=16000):
    """Frame k is flat ``colour(k)``; the sound (optional) is a 440 Hz tone as long as the video."""
    with av.open(str(path), "w") as c:
        v = c.add_stream(vcodec, rate=fps)
        v.width = v.height = size
        v.pix_fmt = "yuv420p"
        if gop:
            v.codec_context.gop_size = gop
        a = c.add_stream(acodec, rate=audio_rate, layout="mono") if acodec else None
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(np.broadcast_to(colour(k), (size, size, 3)).copy(), format="rgb24")
            frame.pts = k
            c.mux(v.encode(frame))
        c.mux(v.encode(None))
        if a is not None:
            t = np.arange(int(audio_rate * n / fps)) / audio_rate
            wav = av.AudioFrame.from_ndarray(
                (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], format="fltp", layout="mono"
            )
            wav.sample_rate, wav.pts = audio_rate, 0
            c.mux(a.encode(wav))
            c.mux(a.encode(None))
    return path


def index_of(frames_uint8):
    """Frame index encoded in the colour of each decoded frame ``[T, H, W, 3]``."""
    rgb = frames_uint8.float().mean(dim=(1, 2))
    return [int(round(float(r) / 16)) + 16 * int(round(float(g) / 16)) for r, g, _ in rgb]


def index_of_normalised(frames):
    """Same, for ImageNet-normalised ``[T, 3, H, W]`` frames."""
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return index_of((frames * s + m).mul(255).permute(0, 2, 3, 1))


CONTAINERS = [
    ("mp4", "libx264", "aac", 16000),
    ("mov", "libx264", "aac", 16000),
    ("mkv", "libx264", "aac", 16000),
    ("webm", "libvpx-vp9", "libopus", 48000),
    ("webm", "libvpx", "libopus", 48000),
]


@pytest.mark.parametrize("ext,vcodec,acodec,rate", CONTAINERS, ids=[f"{c[0]}-{c[1]}" for c in CONTAINERS])
def test_every_container_decodes_frames_and_sound(tmp_path, ext, vcodec, acodec, rate):
    path = write_video(tmp_path / f"clip.{ext}", vcodec=vcodec, acodec=acodec, audio_rate=rate)
    info = probe_video(path)
    assert info.has_audio and (info.width, info.height) == (48, 48)
    assert info.duration == pytest.approx(3.0, abs=0.11)
    wave, frames = load_av(path, 5, size=32)
    assert frames.shape == (5, 3, 32, 32) and frames.dtype == torch.float32
    assert index_of_normalised(frames) == [3, 9, 15, 21, 27]
    assert wave.shape[0] == 1 and abs(wave.shape[1] - 48000) < 2000  # 3 s at 16 kHz (codec padding)
    assert 0.15 < float(wave.abs().max()) < 0.45


def test_uniform_sampling_takes_segment_centres(tmp_path):
    path = write_video(tmp_path / "c.mp4", n=30)
    assert sample_times(3.0, 3) == pytest.approx([0.5, 1.5, 2.5])
    for num in (1, 2, 3, 7, 10):
        got = index_of(decode_frames(path, num))
        assert got == [math.floor((i + 0.5) * 30 / num) for i in range(num)], num


def test_random_sampling_stays_in_its_segment_and_follows_the_generator(tmp_path):
    path = write_video(tmp_path / "c.mp4", n=30)
    draws = set()
    for seed in range(6):
        got = index_of(decode_frames(path, 3, mode="random", generator=torch.Generator().manual_seed(seed)))
        assert all(10 * i <= k < 10 * (i + 1) for i, k in enumerate(got)), got
        again = index_of(decode_frames(path, 3, mode="random", generator=torch.Generator().manual_seed(seed)))
        assert got == again
        draws.add(tuple(got))
    assert len(draws) > 1


@pytest.mark.parametrize("ext,vcodec", [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("mkv", "libx264")])
def test_seeking_returns_the_frames_of_a_full_decode(tmp_path, ext, vcodec, monkeypatch):
    path = write_video(tmp_path / f"long.{ext}", vcodec=vcodec, acodec=None, n=60, gop=6)
    every, times_all = decode_all_frames(path)
    assert every.shape[0] == 60 and index_of(every) == list(range(60))
    assert times_all[:3].tolist() == pytest.approx([0.0, 0.1, 0.2])
    seeks = []
    real_seek = V._Cursor.seek
    monkeypatch.setattr(V._Cursor, "seek", lambda self, t: (seeks.append(t), real_seek(self, t))[1])
    times = [5.55, 0.05, 2.37, 2.33, 4.01, 4.01, 9.0, 0.0, 3.14159, 5.96]  # any order, repeats, past the end
    expected = every[[min(int(t * 10 + 1e-9), 59) for t in times]]
    got = decode_frames(path, times=times, seek_threshold=0.0)
    assert len(seeks) >= 4  # really seeking
    assert torch.equal(got, expected)
    assert torch.equal(decode_frames(path, times=times, seek=False), expected)
    assert torch.equal(decode_frames(path, times=times), expected)  # default threshold mixes both


def test_one_late_frame_decodes_a_gop_not_the_file(tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.mp4", acodec=None, n=100, gop=10, fps=25)
    cursors = []
    real_init = V._Cursor.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        cursors.append(self)

    monkeypatch.setattr(V._Cursor, "__init__", spy)
    assert index_of(decode_frames(path, times=[3.63])) == [90]
    assert cursors[-1].seeks == 1 and cursors[-1].decoded <= 12


def test_normalisation_and_resize(tmp_path):
    path = write_video(tmp_path / "c.mp4", n=12, size=64)
    frames = load_frames(path, 1, times=[0.55], size=32)  # frame 5
    raw = decode_frames(path, times=[0.55])[0].float().mean(dim=(0, 1))  # [3] decoded RGB levels
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert frames.shape == (1, 3, 32, 32)
    assert torch.allclose(frames[0].mean(dim=(1, 2)), (raw / 255 - mean) / std, atol=1e-3)
    assert torch.allclose(raw, torch.tensor(colour(5)).float(), atol=4)  # codec error of a few levels
    # non-square: short side resized to 40, then a centre crop of 32
    img = torch.zeros(2, 60, 90, 3, dtype=torch.uint8)
    img[:, :, 45:] = 255
    x = transform_frames(img, 32, short_side=40)
    assert x.shape == (2, 3, 32, 32)
    right, left = x[0, 0, :, -1], x[0, 0, :, 0]
    assert bool((right > left).all())
    with pytest.raises(ValueError, match="short_side"):
        transform_frames(img, 32, short_side=16)


def test_random_resized_crop_and_flip_follow_the_generator():
    img = (
        torch.arange(40 * 50 * 3, dtype=torch.int64)
        .remainder(256)
        .to(torch.uint8)
        .reshape(1, 40, 50, 3)
        .repeat(3, 1, 1, 1)
    )
    a = transform_frames(img, 24, crop="random_resized", flip=True, generator=torch.Generator().manual_seed(1))
    b = transform_frames(img, 24, crop="random_resized", flip=True, generator=torch.Generator().manual_seed(1))
    c = transform_frames(img, 24, crop="random_resized", flip=True, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[0], a[2])  # one box for every frame of the clip


def test_file_objects_and_probe(tmp_path):
    path = write_video(tmp_path / "c.mp4", n=20)
    with open(path, "rb") as f:
        assert index_of_normalised(load_frames(f, 2, size=16)) == [5, 15]
    info = probe_video(path)
    assert info.num_frames == 20 and info.fps == 10.0 and info.codec == "h264"


# ---------------------------------------------------------------------------- errors
def test_media_errors_name_the_file(tmp_path):
    audio_only = save_audio(tmp_path / "sound.m4a", torch.zeros(1, 8000), 16000)
    silent = write_video(tmp_path / "silent.mp4", acodec=None, n=10)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 40)
    whole = write_video(tmp_path / "whole.mp4", n=30).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(whole[: len(whole) // 2])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases = [
        (lambda: load_frames(audio_only, 2), audio_only, "no video stream"),
        (lambda: load_av(silent, 2), silent, "no audio stream"),
        (lambda: load_frames(garbage, 2), garbage, "not a readable media file"),
        (lambda: load_frames(truncated, 2), truncated, ""),
        (lambda: load_frames(tmp_path / "missing.mp4", 2), tmp_path / "missing.mp4", "file not found"),
        (lambda: load_frames(empty, 2), empty, "empty file"),
        (lambda: decode_all_frames(garbage), garbage, ""),
    ]
    for fn, path, reason in cases:
        with pytest.raises(MediaError) as info:
            fn()
        assert str(path) in str(info.value) and reason in info.value.reason, str(info.value)


def test_a_video_stream_without_frames_is_an_error(tmp_path):
    path = tmp_path / "noframes.mkv"
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=10)
        v.width = v.height = 32
        v.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=16000, layout="mono")
        wav = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        wav.sample_rate, wav.pts = 16000, 0
        c.mux(a.encode(wav))
        c.mux(a.encode(None))
    for fn in (
        lambda: load_frames(path, 2),
        lambda: load_frames(path, 1, times=[0.0]),
        lambda: decode_all_frames(path),
    ):
        with pytest.raises(MediaError, match="no video frames decoded"):
            fn()


def test_bad_arguments_are_value_errors(tmp_path):
    path = write_video(tmp_path / "c.mp4", n=5, acodec=None)
    with pytest.raises(ValueError):
        load_frames(path, 2, times=[0.1])
    with pytest.raises(ValueError):
        load_frames(path, 1, times=[-1.0])
    with pytest.raises(ValueError):
        load_frames(path, 1, mode="every")


# ---------------------------------------------------------------------------- frame folders
def test_frame_folder_indices_follow_cav_mae():
    assert frame_folder_indices(1, 10) == [5]  # CAV-MAE's evaluation frame
    assert frame_folder_indices(2, 10) == [2, 7]
    draws = {frame_folder_indices(1, 10, train=True, generator=torch.Generator().manual_seed(s))[0] for s in range(60)}
    assert draws == set(range(10))


def test_frame_folder_layout_and_fallback(tmp_path):
    path = write_video(tmp_path / "clip7.mp4", n=40, size=64)
    written = extract_frame_folder(path, tmp_path / "frames", size=32)
    assert (
        written[3]
        == frame_folder_path(tmp_path / "frames", "clip7", 3)
        == tmp_path / "frames" / "frame_3" / "clip7.jpg"
    )
    assert [p.exists() for p in written] == [True] * 10
    mid = load_frame_folder(tmp_path / "frames", "clip7", size=32)
    assert mid.shape == (1, 3, 32, 32) and index_of_normalised(mid) == [22]  # frame_5: centre of 2.0-2.4 s
    both = load_frame_folder(tmp_path / "frames", "clip7", 2, size=16)
    assert index_of_normalised(both) == [10, 30]  # frame_2 and frame_7
    (tmp_path / "frames" / "frame_5" / "clip7.jpg").unlink()
    (tmp_path / "frames" / "frame_4" / "clip7.jpg").unlink()
    assert index_of_normalised(load_frame_folder(tmp_path / "frames", "clip7", size=32)) == [14]  # frame_3
    assert index_of_normalised(load_frame_folder(tmp_path / "frames", "clip7", frame_index=9, size=32)) == [38]
    a = load_frame_folder(tmp_path / "frames", "clip7", train=True, generator=torch.Generator().manual_seed(3), size=32)
    b = load_frame_folder(tmp_path / "frames", "clip7", train=True, generator=torch.Generator().manual_seed(3), size=32)
    assert torch.equal(a, b)
    with pytest.raises(MediaError, match="frame_\\*"):
        load_frame_folder(tmp_path / "frames", "other", size=32)
    (tmp_path / "frames" / "frame_0" / "clip7.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(MediaError, match="unreadable image"):
        load_frame_folder(tmp_path / "frames", "clip7", frame_index=0, size=32)


def test_no_decoder_outlives_a_call(tmp_path):
    """Nothing of PyAV is left for the cyclic garbage collector: collected later inside a forked
    DataLoader worker, a decoder's thread pool cannot be joined and the worker hangs."""
    import gc

    path = write_video(tmp_path / "c.mp4", n=30, gop=5)

    def av_objects():
        return [
            o
            for o in gc.get_objects()
            if str(getattr(type(o), "__module__", "")).startswith("av.") or type(o) is V._Cursor
        ]

    gc.collect()
    gc.disable()
    try:
        before = len(av_objects())
        decode_frames(path, 3)
        decode_frames(path, times=[2.9, 0.1], seek_threshold=0.0)
        decode_frames(path, 2, seek=False)
        decode_all_frames(path)
        with pytest.raises(MediaError):
            decode_frames(tmp_path / "missing.mp4", 2)
        assert len(av_objects()) == before
    finally:
        gc.enable()


class _Decodes(torch.utils.data.Dataset):
    """Frames and sound of one file, once per item (what a DataLoader worker of an AV dataset does)."""

    def __init__(self, path, n):
        self.path, self.n = path, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return decode_frames(self.path, 2, times=[0.1 * i, 0.1 * i + 1.0]), load_audio(self.path, 16000)


def _threads():
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else threading.active_count()


def test_workers_forked_after_decoding_in_the_parent_do_not_hang(tmp_path):
    """Decoding leaves no FFmpeg thread behind (decoder or scaler): a forked worker inherits no
    thread pool it would wait for. Before the fix the first worker conversion hung on any machine
    with 2 usable cores (PyAV's per-thread swscale context, see ``video._to_rgb``)."""
    path = write_video(tmp_path / "c.mp4", n=30, gop=5)
    torch.ones(1 << 20).add_(1).sum()  # torch's OpenMP pool (if any) starts before counting
    before = _threads()
    expected = [_Decodes(path, 4)[i] for i in range(4)]
    decode_all_frames(path)
    assert _threads() == before  # no decoder or scaler thread outlives a call
    # other code in the parent converting through PyAV's own per-thread scaler does not matter either
    with av.open(str(path)) as c:
        next(c.decode(video=0)).to_ndarray(format="rgb24")
    loader = torch.utils.data.DataLoader(_Decodes(path, 4), batch_size=None, num_workers=2, timeout=60)
    got = list(loader)
    assert index_of(got[3][0]) == [3, 13]
    for (frames, wave), (ref_frames, ref_wave) in zip(got, expected):
        assert torch.equal(frames, ref_frames) and torch.equal(wave, ref_wave)

"""Broken media through every reader: video files (frames, probe, whole decode), sound + pictures
(load_av), CAV-MAE frame folders, and AudioDataset / AVDataset with on_error="skip". Nothing may
crash or hang: each call gives valid tensors or a MediaError naming the file.
(load_audio alone is fuzzed in test_reliability.py.)"""

import json
import math
import random
import shutil
import time

import pytest
import torch

from avmae.data import AudioFrontend, MediaError, load_audio, save_audio
from avmae.data.av_dataset import AVDataset
from avmae.data.av_demo import write_av_clip
from avmae.data.datasets import AudioDataset
from avmae.data.video import (
    decode_all_frames,
    extract_frame_folder,
    load_av,
    load_frame_folder,
    load_frames,
    probe_video,
)

SR = 16000
SIZE = 16  # model frame size in these tests
LIMIT = 10.0  # decode time limit per call (s): a stuck decoder becomes a MediaError


pytestmark = pytest.mark.usefixtures("one_thread")


def av_clip(path, k=0, n=10):
    """1 s of 32x32 grey frames (level 20 k + 10 i) with a tone."""
    frames = torch.stack([torch.full((32, 32, 3), 20 * k + 10 * i, dtype=torch.uint8) for i in range(n)])
    t = torch.arange(int(SR * n / 10)) / SR
    return write_av_clip(path, frames, 0.3 * torch.sin(2 * math.pi * (300 + 100 * k) * t), fps=10, sample_rate=SR)


def mutations(data: bytes, rng: random.Random):
    n = len(data)
    yield "empty", b""
    yield "one_byte", data[:1]
    yield "header_only", data[:64]
    for frac in (0.1, 0.5, 0.9):
        yield f"truncated_{frac}", data[: int(n * frac)]
    for i, flips in enumerate((1, 8, max(1, n // 100))):
        buf = bytearray(data)
        for _ in range(flips):
            buf[rng.randrange(n)] = rng.randrange(256)
        yield f"flips_{i}", bytes(buf)
    buf = bytearray(data)
    start = rng.randrange(n // 4, n // 2)
    buf[start : start + 256] = bytes(256)
    yield "zeroed_block", bytes(buf)
    yield "text", b"this is not media at all\n" * 20


def outcome(fn, path, check):
    """'ok' (``check`` passed on the result) or 'error' (a MediaError naming ``path``); anything
    else, or a call slower than the time limit allows, fails the test."""
    start = time.monotonic()
    try:
        result = fn()
    except MediaError as err:
        assert str(path) in str(err) and err.reason, str(err)
        got = "error"
    else:
        check(result)
        got = "ok"
    assert time.monotonic() - start < LIMIT + 20, f"{path}: {time.monotonic() - start:.0f} s"
    return got


def check_frames(x, n=2):
    assert x.shape == (n, 3, SIZE, SIZE) and x.dtype == torch.float32 and torch.isfinite(x).all()


def check_wave(w):
    assert w.dim() == 2 and w.shape[0] == 1 and w.shape[1] > 0 and torch.isfinite(w).all()


def check_av(pair):
    check_wave(pair[0])
    check_frames(pair[1])


def check_all(pair):
    frames, times = pair
    assert frames.dim() == 4 and frames.shape[-1] == 3 and frames.dtype == torch.uint8 and len(times) == len(frames)


VIDEO_READERS = {
    "load_frames": (lambda p: load_frames(p, 2, size=SIZE, timeout=LIMIT), check_frames),
    "load_frames_random": (
        lambda p: load_frames(
            p, 2, size=SIZE, mode="random", generator=torch.Generator().manual_seed(0), timeout=LIMIT
        ),
        check_frames,
    ),
    "load_frames_no_seek": (lambda p: load_frames(p, 2, size=SIZE, seek=False, timeout=LIMIT), check_frames),
    "decode_all_frames": (lambda p: decode_all_frames(p, timeout=LIMIT), check_all),
    "load_av": (lambda p: load_av(p, 2, size=SIZE, timeout=LIMIT), check_av),
    "probe_video": (lambda p: probe_video(p), lambda info: None),
    "load_audio": (lambda p: load_audio(p, timeout=LIMIT), check_wave),
}


def test_fuzzed_video_files_through_every_reader(tmp_path):
    rng = random.Random(0)
    sources = [
        av_clip(tmp_path / "clip.mp4"),
        av_clip(tmp_path / "clip.mkv", k=1),
        save_audio(tmp_path / "tone.flac", 0.3 * torch.sin(torch.arange(8000) / 5.0)[None], SR),
    ]
    counts = {"ok": 0, "error": 0}
    for src in sources:
        for name, blob in mutations(src.read_bytes(), rng):
            for suffix in (src.suffix, ".wav"):  # the true extension and a wrong one
                path = tmp_path / f"{src.stem}-{name}{suffix}"
                path.write_bytes(blob)
                for fn, check in VIDEO_READERS.values():
                    counts[outcome(lambda fn=fn, path=path: fn(path), path, check)] += 1
    assert counts["error"] > 0 and counts["ok"] > 0  # both outcomes happen: the mutations are not all fatal


def test_fuzzed_frame_folders(tmp_path):
    rng = random.Random(1)
    root = tmp_path / "frames"
    extract_frame_folder(av_clip(tmp_path / "clip.mp4"), root, "vid", size=SIZE)
    good = [(root / f"frame_{i}" / "vid.jpg").read_bytes() for i in range(10)]
    pattern = str(root / "frame_*" / "vid.jpg")
    readers = [
        lambda: load_frame_folder(root, "vid", 2, size=SIZE),
        lambda: load_frame_folder(root, "vid", 2, size=SIZE, train=True, generator=torch.Generator().manual_seed(0)),
        lambda: load_frame_folder(root, "vid", 2, frame_index=[0, 9], size=SIZE),
    ]
    counts = {"ok": 0, "error": 0}
    for name, _ in mutations(good[0], rng):
        for i in range(10):  # every frame of the folder broken the same way
            blob = dict(mutations(good[i], random.Random(i)))[name]
            (root / f"frame_{i}" / "vid.jpg").write_bytes(blob)
        for fn in readers:
            counts[outcome(fn, pattern, check_frames)] += 1
    assert counts["error"] > 0
    assert (
        outcome(
            lambda: load_frame_folder(root, "missing", 1, size=SIZE),
            str(root / "frame_*" / "missing.jpg"),
            check_frames,
        )
        == "error"
    )
    shutil.rmtree(root)
    assert outcome(lambda: load_frame_folder(root, "vid", 1, size=SIZE), pattern, check_frames) == "error"


def test_video_time_limit_is_a_media_error(tmp_path):
    clip = av_clip(tmp_path / "clip.mp4")
    for fn in (
        lambda: load_frames(clip, 2, size=SIZE, timeout=0.0),
        lambda: decode_all_frames(clip, timeout=0.0),
        lambda: load_av(clip, 2, size=SIZE, timeout=0.0),
    ):
        with pytest.raises(MediaError, match="time limit") as info:
            fn()
        assert str(clip) in str(info.value)
    check_frames(load_frames(clip, 2, size=SIZE, timeout=None))


def test_wrong_kind_of_media_names_the_missing_stream(tmp_path):
    sound = save_audio(tmp_path / "sound.flac", torch.zeros(1, 800), SR)
    folder = tmp_path / "a_folder.mp4"
    folder.mkdir()
    for fn, path, reason in [
        (lambda: load_frames(sound, 1, size=SIZE), sound, "no video stream"),
        (lambda: load_av(sound, 1, size=SIZE), sound, "no video stream"),
        (lambda: load_frames(folder, 1, size=SIZE), folder, "directory"),
    ]:
        with pytest.raises(MediaError, match=reason) as info:
            fn()
        assert str(path) in str(info.value)


FRONTEND = AudioFrontend(target_length=48, num_mel_bins=32)


def test_audio_dataset_skips_every_broken_file_and_keeps_the_rest(tmp_path):
    rng = random.Random(2)
    good = save_audio(tmp_path / "good.flac", 0.3 * torch.sin(torch.arange(6000) / 4.0)[None], SR)
    items, broken = [{"wav": "good.flac"}], set()
    for name, blob in mutations(good.read_bytes(), rng):
        path = tmp_path / f"bad-{name}.flac"
        path.write_bytes(blob)
        items.append({"wav": path.name})
        try:
            load_audio(path, timeout=LIMIT)
        except MediaError:
            broken.add(str(path))
    items.append({"wav": "missing.flac"})
    broken.add(str(tmp_path / "missing.flac"))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"data": items}))
    ds = AudioDataset(
        manifest, frontend=FRONTEND, on_error="skip", max_skip_fraction=1.0, skip_log_dir=tmp_path / "skips"
    )
    for i in range(len(ds)):
        item = ds[i]
        assert item["audio"].shape == (1, 48, 32) and torch.isfinite(item["audio"]).all()
        assert ds.items[item["index"]]["wav"] not in ds.skipped
    assert ds.skipped == broken


def test_av_dataset_skips_every_broken_item(tmp_path):
    rng = random.Random(3)
    (tmp_path / "v").mkdir()
    good = av_clip(tmp_path / "v" / "good.mp4")
    extract_frame_folder(good, tmp_path / "frames", "folder_ok", size=SIZE)
    items = [{"video": "v/good.mp4"}, {"video_path": "frames", "video_id": "folder_ok", "wav": "v/good.mp4"}]
    for name, blob in list(mutations(good.read_bytes(), rng))[::2]:
        (tmp_path / "v" / f"{name}.mp4").write_bytes(blob)
        items.append({"video": f"v/{name}.mp4"})
    items.append({"video_path": "frames", "video_id": "no_such_folder", "wav": "v/good.mp4"})
    manifest = tmp_path / "av.json"
    manifest.write_text(json.dumps({"data": items}))
    ds = AVDataset(manifest, frontend=FRONTEND, image_size=SIZE, on_error="skip", max_skip_fraction=1.0)
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (1, 3, SIZE, SIZE) and torch.isfinite(item["video"]).all()
        assert item["audio"].shape == (1, 48, 32) and torch.isfinite(item["audio"]).all()
    assert str(tmp_path / "frames" / "frame_*" / "no_such_folder.jpg") in ds.skipped
    assert ds.source(0) not in ds.skipped and ds.source(1) not in ds.skipped
    assert any(s.endswith("empty.mp4") for s in ds.skipped)


def test_silent_short_and_long_clips_give_finite_padded_or_cropped_features(tmp_path):
    silent = save_audio(tmp_path / "silent.flac", torch.zeros(1, SR), SR)
    short = save_audio(tmp_path / "short.flac", 0.3 * torch.sin(torch.arange(1600) / 3.0)[None], SR)  # 0.1 s: 8 frames
    long = save_audio(tmp_path / "long.flac", 0.3 * torch.sin(torch.arange(SR) / 3.0)[None], SR)  # 1 s: 98 frames
    (tmp_path / "m.json").write_text(json.dumps({"data": [{"wav": p.name} for p in (silent, short, long)]}))
    ds = AudioDataset(tmp_path / "m.json", frontend=FRONTEND)
    feats = [ds[i]["audio"][0] for i in range(3)]
    for x in feats:
        assert x.shape == (48, 32) and torch.isfinite(x).all()
    every_frame = AudioFrontend(target_length=None, num_mel_bins=32)
    # short: its 8 frames, then zeros appended before normalisation, i.e. (0 - mean) / (2 std)
    own = every_frame(load_audio(short))[0]
    assert own.shape[0] == 8
    assert torch.allclose(feats[1][:8], own, atol=1e-5)
    pad = (0.0 - FRONTEND.mean) / (2 * FRONTEND.std)
    assert torch.allclose(feats[1][8:], torch.full((40, 32), pad))
    # long: its first target_length frames
    assert torch.allclose(feats[2], every_frame(load_audio(long))[0, :48], atol=1e-5)

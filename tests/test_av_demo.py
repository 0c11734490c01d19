"""The audio-visual demo data: generated once, deterministic, pictures that follow the sound."""

import json

import pytest
import torch

import avmae.data.av_demo as av_demo
from avmae.data import AudioFrontend, load_audio, read_label_csv
from avmae.data.av_dataset import AVDataset
from avmae.data.av_demo import DEMO_AV_LOOK, ensure_demo_av
from avmae.data.demo import DEMO_CLASSES
from avmae.data.video import decode_all_frames, probe_video

SMALL = dict(num_train_per_class=2, num_eval_per_class=1, seconds=1.6)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ensure_demo_av(tmp_path_factory.mktemp("demo") / "av", **SMALL)


def test_layout_manifest_and_media(demo):
    ids, names = read_label_csv(demo / "class_labels_indices.csv")
    assert ids == [f"/demo/{c}" for c, _ in DEMO_CLASSES] and names[0] == "Harmonic tone"
    train = json.loads((demo / "train.json").read_text())["data"]
    evals = json.loads((demo / "eval.json").read_text())["data"]
    assert len(train) == 12 and len(evals) == 6
    assert train[0] == {"video": "video/train_tone_000.mp4", "video_id": "train_tone_000", "labels": "/demo/tone"}
    info = probe_video(demo / train[0]["video"])
    assert (info.width, info.height, info.codec, info.has_audio) == (64, 64, "h264", True)
    assert info.duration == pytest.approx(1.6) and info.num_frames == 16
    wave = load_audio(demo / train[0]["video"])
    assert abs(wave.shape[1] - int(1.6 * 16000)) < 1100  # AAC pads the end
    ds = AVDataset(
        demo / "train.json",
        demo / "class_labels_indices.csv",
        frontend=AudioFrontend(target_length=160),
        num_frames=2,
        image_size=32,
    )
    item = ds[7]
    assert item["audio"].shape == (1, 160, 128) and item["video"].shape == (2, 3, 32, 32)
    assert item["label"].argmax().item() == 3


def test_cached_and_deterministic(demo, tmp_path, monkeypatch):
    marker = (demo / ".complete").stat().st_mtime_ns
    monkeypatch.setattr(av_demo, "_write_dataset", lambda *a, **k: pytest.fail("regenerated a complete dataset"))
    assert ensure_demo_av(demo, **SMALL) == demo
    assert (demo / ".complete").stat().st_mtime_ns == marker
    monkeypatch.undo()
    other = ensure_demo_av(tmp_path / "again", **SMALL)
    for name in (
        "train.json",
        "eval.json",
        "class_labels_indices.csv",
        "video/train_chirp_001.mp4",
        "video/eval_fm_tone_000.mp4",
    ):
        assert (other / name).read_bytes() == (demo / name).read_bytes(), name
    # other parameters replace the folder, atomically (no temporary folders left behind)
    changed = ensure_demo_av(tmp_path / "again", num_train_per_class=1, num_eval_per_class=1, seconds=1.0)
    assert len(json.loads((changed / "train.json").read_text())["data"]) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_picture_follows_the_sound(demo):
    """The shape's brightness follows the loudness of the sound over time, its hue the class."""
    for name, _ in DEMO_CLASSES:
        path = demo / "video" / f"train_{name}_000.mp4"
        frames, _ = decode_all_frames(path)  # [T, H, W, 3]
        wave = load_audio(path)[0]
        n = frames.shape[0]
        hop = wave.shape[0] // n if wave.shape[0] < 16000 * 1.6 else int(16000 / 10)
        rms = torch.stack([wave[i * hop : (i + 1) * hop].pow(2).mean().sqrt() for i in range(n)])
        level = (20 * torch.log10(rms + 1e-8) + 50).clamp(0, 40) / 40
        hue = torch.tensor(DEMO_AV_LOOK[name][1])
        # brightest pixels along the class hue, per frame
        score = (frames.float() / 255 * hue).sum(-1).flatten(1).topk(20, dim=1).values.mean(1)
        corr = torch.corrcoef(torch.stack([score, level]))[0, 1]
        assert corr > 0.8, (name, float(corr))

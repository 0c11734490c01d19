"""AVDataset: manifests with video files or frame folders, items, determinism, skip policy."""

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

from avmae.data import AudioFrontend, MediaError, save_audio
from avmae.data.av_dataset import AVDataset, read_av_manifest
from avmae.data.av_demo import write_av_clip
from avmae.data.datasets import ManifestError
from avmae.data.video import extract_frame_folder

SR = 16000
FRONTEND = AudioFrontend(target_length=64)
CLASSES = [("/m/a", "Alpha"), ("/m/b", "Beta"), ("/m/c", "Gamma")]


def clip(path, k, n=20, size=32):
    """A 2 s video: frame i is grey (8 * k + i); the sound is a tone at 300 + 100 k Hz."""
    frames = torch.stack([torch.full((size, size, 3), 8 * k + i, dtype=torch.uint8) for i in range(n)])
    t = torch.arange(int(SR * n / 10)) / SR
    return write_av_clip(path, frames, 0.3 * torch.sin(2 * math.pi * (300 + 100 * k) * t), fps=10, sample_rate=SR)


@pytest.fixture()
def corpus(tmp_path):
    """5 mp4 clips (one with its sound in a separate FLAC), one frame-folder item, a label CSV."""
    (tmp_path / "video").mkdir()
    labels = ["/m/a", "/m/b", "/m/c", "/m/a,/m/b", "/m/c"]
    items = []
    for k, lab in enumerate(labels):
        clip(tmp_path / "video" / f"v{k}.mp4", k)
        items.append({"video": f"video/v{k}.mp4", "labels": lab})
    save_audio(tmp_path / "other.flac", 0.1 * torch.randn(1, SR), SR)
    items[4]["wav"] = "other.flac"
    extract_frame_folder(tmp_path / "video" / "v2.mp4", tmp_path / "frames", "folder2", size=32)
    save_audio(tmp_path / "folder2.flac", 0.2 * torch.randn(1, SR), SR)
    items.append({"video_id": "folder2", "video_path": "frames", "wav": "folder2.flac", "labels": "/m/c"})
    (tmp_path / "train.json").write_text(json.dumps({"data": items}))
    csv = tmp_path / "labels.csv"
    csv.write_text("index,mid,display_name\n" + "".join(f"{i},{m},{n}\n" for i, (m, n) in enumerate(CLASSES)))
    return tmp_path, tmp_path / "train.json", csv


def grey(frames):
    """Mean grey level 0..255 of ImageNet-normalised frames ``[T, 3, H, W]``, per frame."""
    m = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    s = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((frames * s + m) * 255).mean(dim=(1, 2, 3))


def test_read_av_manifest(corpus):
    root, manifest, _ = corpus
    items = read_av_manifest(manifest)
    assert items[0]["video"] == items[0]["wav"] == str(root.resolve() / "video" / "v0.mp4")
    assert items[4]["wav"] == str(root.resolve() / "other.flac")
    assert items[5]["video_path"] == str(root.resolve() / "frames") and items[5]["video_id"] == "folder2"
    bad = root / "bad.json"
    for item, match in [
        ({"wav": "a.flac"}, "neither"),
        ({"video_path": "frames", "wav": "a.flac"}, "video_id"),
        ({"video_path": "frames", "video_id": "x"}, "wav"),
        ({"video": "", "labels": ""}, "non-empty"),
        ({"video": "a.mp4", "labels": ["/m/a"]}, "comma-separated"),
    ]:
        bad.write_text(json.dumps({"data": [item]}))
        with pytest.raises(ManifestError, match=match):
            read_av_manifest(bad)
    jl = root / "m.jsonl"
    jl.write_text('{"video": "video/v1.mp4"}\n\n{"video": "video/v3.mp4", "labels": "/m/a"}\n')
    assert [i["labels"] for i in read_av_manifest(jl)] == ["", "/m/a"]


def test_items_from_files_and_frame_folders(corpus):
    _, manifest, csv = corpus
    ds = AVDataset(manifest, csv, frontend=FRONTEND, num_frames=2, image_size=16)
    assert len(ds) == 6 and ds.num_classes == 3 and ds.multilabel
    item = ds[0]
    assert set(item) == {"audio", "video", "label", "index"}
    assert item["audio"].shape == (1, 64, 128) and item["video"].shape == (2, 3, 16, 16)
    assert item["label"].tolist() == [1.0, 0.0, 0.0] and item["index"] == 0
    assert grey(item["video"]).round().tolist() == pytest.approx([5, 15], abs=1.5)  # segment centres of 20 frames
    assert ds[3]["label"].tolist() == [1.0, 1.0, 0.0]
    assert grey(ds[5]["video"]).round().tolist() == pytest.approx([16 + 4, 16 + 14], abs=1.5)  # frame_2, frame_7
    # audio: the clip's own track, or the separate file when "wav" is given
    a0, a4 = ds[0]["audio"], ds[4]["audio"]
    assert not torch.allclose(a0, a4)
    single = AVDataset(manifest, csv, frontend=FRONTEND, image_size=16)
    assert single[0]["video"].shape == (1, 3, 16, 16)
    assert grey(single[5]["video"]).item() == pytest.approx(16 + 10, abs=1.5)  # frame_5 of the folder
    assert grey(
        AVDataset(manifest, csv, frontend=FRONTEND, image_size=16, frame_index=9)[5]["video"]
    ).item() == pytest.approx(16 + 19, abs=1.5)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["audio"].shape == (3, 1, 64, 128) and batch["video"].shape == (3, 2, 3, 16, 16)


def test_training_draws_are_deterministic_per_seed_epoch_index(corpus):
    _, manifest, csv = corpus
    kw = dict(frontend=FRONTEND, num_frames=2, image_size=16, train=True, crop="random_resized", flip=True)
    a, b = AVDataset(manifest, csv, seed=1, **kw), AVDataset(manifest, csv, seed=1, **kw)
    for i in range(len(a)):
        assert torch.equal(a[i]["video"], b[i]["video"]) and torch.equal(a[i]["audio"], b[i]["audio"])
    before = [a[i]["video"] for i in range(len(a))]
    a.set_epoch(1)
    assert any(not torch.equal(before[i], a[i]["video"]) for i in range(len(a)))
    # training frames stay inside their segments: grey 8k + [0, 10) then 8k + [10, 20)
    ev = AVDataset(manifest, csv, frontend=FRONTEND, num_frames=2, image_size=16, train=True, seed=3)
    for epoch in range(3):
        ev.set_epoch(epoch)
        g = grey(ev[1]["video"]).tolist()
        assert 8 - 1.5 <= g[0] <= 8 + 9 + 1.5 and 8 + 10 - 1.5 <= g[1] <= 8 + 19 + 1.5

    # workers do not change the result
    def loader(w):
        return [b["video"] for b in DataLoader(a, batch_size=2, num_workers=w, timeout=120 if w else 0)]

    assert all(torch.equal(x, y) for x, y in zip(loader(0), loader(2)))


def test_mixup_mixes_frames_with_the_sound(corpus):
    _, manifest, csv = corpus
    ds = AVDataset(manifest, csv, frontend=FRONTEND, image_size=16, train=True, augment={"mixup": 1.0})
    plain = AVDataset(manifest, csv, frontend=FRONTEND, image_size=16, train=True)
    mixed = [ds[i] for i in range(5)]
    fractional = [m for m in mixed if bool(((m["label"] > 0.01) & (m["label"] < 0.99)).any())]
    assert fractional
    for m in fractional:
        assert m["video"].shape == (1, 3, 16, 16)
        assert abs(grey(m["video"]).item() - grey(plain[m["index"]]["video"]).item()) > 1.0


def test_skip_policy_covers_broken_video(corpus, tmp_path):
    root, manifest, csv = corpus
    (root / "video" / "v1.mp4").write_bytes(b"garbage" * 100)
    (root / "frames" / "frame_0" / "folder2.jpg").unlink()  # frame folder still readable (frame_5 exists)
    strict = AVDataset(manifest, csv, frontend=FRONTEND, image_size=16)
    with pytest.raises(MediaError, match="v1.mp4"):
        strict[1]
    ds = AVDataset(
        manifest,
        csv,
        frontend=FRONTEND,
        image_size=16,
        on_error="skip",
        max_skip_fraction=0.5,
        skip_log_dir=tmp_path / "skips",
    )
    item = ds[1]
    assert item["index"] != 1 and item["video"].shape == (1, 3, 16, 16)
    assert any(s.endswith("v1.mp4") for s in ds.skipped)
    assert (tmp_path / "skips").exists()
    # a video without a sound track and no "wav" is unreadable as an AV clip
    write_silent = root / "video" / "v0.mp4"
    import av
    import numpy as np

    with av.open(str(write_silent), "w") as c:
        v = c.add_stream("libx264", rate=10)
        v.width = v.height = 32
        v.pix_fmt = "yuv420p"
        for k in range(5):
            f = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            f.pts = k
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    with pytest.raises(MediaError, match="no audio stream"):
        strict[0]
    # skipping more than allowed stops the run
    tight = AVDataset(manifest, csv, frontend=FRONTEND, image_size=16, on_error="skip", max_skip_fraction=0.2)
    with pytest.raises(RuntimeError, match="max_skip_fraction"):
        for i in range(len(tight)):
            tight[i]


def test_argument_checks(corpus):
    _, manifest, csv = corpus
    with pytest.raises(ValueError, match="num_frames"):
        AVDataset(manifest, csv, frontend=FRONTEND, num_frames=0)
    with pytest.raises(ValueError, match="crop"):
        AVDataset(manifest, csv, frontend=FRONTEND, crop="zoom")
    with pytest.raises(ValueError, match="frame_index"):
        AVDataset(manifest, csv, frontend=FRONTEND, frame_index=10)
    ds = AVDataset([{"video": str(manifest.parent / "video" / "v0.mp4")}], frontend=FRONTEND, image_size=16)
    assert ds[0]["label"].numel() == 0 and "AVDataset" in repr(ds)


# ---------------------------------------------------------------------------- trainer integration
def test_av_dataset_builder_and_retrieval_metrics(corpus):
    from avmae.config import load_config
    from avmae.train import DATASETS
    from avmae.train.datasets import video_input_size
    from avmae.train.retrieval import retrieval_metrics

    root, manifest, csv = corpus
    overrides = [
        "modality=av",
        "model.name=avmae_tiny",
        "data.target_length=64",
        f"data.train_manifest={manifest}",
        f"data.eval_manifest={manifest}",
        f"data.label_csv={csv}",
    ]
    cfg = load_config([], overrides)
    assert video_input_size(cfg) == (4, 64)  # the preset's own video input
    assert video_input_size(load_config([], overrides + ["model.params={num_frames: 2, image_size: 32}"])) == (2, 32)
    train, evals = DATASETS.get("av")(cfg, "train"), DATASETS.get("av")(cfg, "eval")
    assert isinstance(train, AVDataset) and train.train and not evals.train
    item = evals[0]
    assert item["audio"].shape == (1, 64, 128) and item["video"].shape == (4, 3, 64, 64)

    import avmae

    class Local:  # the two accelerate calls retrieval_metrics makes, for one process
        unwrap_model = staticmethod(lambda m, **kw: m)
        gather_for_metrics = staticmethod(lambda x: x)

    model = avmae.create_model("avmae_tiny")
    metrics = retrieval_metrics(model, DataLoader(evals, batch_size=4), Local())
    assert set(metrics) == {f"retrieval/{d}_{k}" for d in ("a2v", "v2a") for k in ("r1", "r5", "medr")}
    assert all(0.0 <= metrics[f"retrieval/{d}_r1"] <= metrics[f"retrieval/{d}_r5"] <= 1.0 for d in ("a2v", "v2a"))
    assert all(1.0 <= metrics[f"retrieval/{d}_medr"] <= 6.0 for d in ("a2v", "v2a"))
    assert model.training  # restored

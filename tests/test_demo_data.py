"""Synthetic demo dataset: deterministic, cached, atomic, with distinguishable classes."""

import json
import time

import pytest
import torch

import avmae.data.demo as demo
from avmae.data import AudioDataset, AudioFrontend, ensure_demo_audio, load_audio, read_label_csv
from avmae.data.demo import DEMO_CLASSES, default_demo_root, synthesize_clip

SMALL = dict(num_train_per_class=6, num_eval_per_class=3, seconds=1.0)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return ensure_demo_audio(tmp_path_factory.mktemp("demo") / "d", **SMALL)


def test_layout_and_manifests(small_demo):
    root = small_demo
    ids, names = read_label_csv(root / "class_labels_indices.csv")
    assert ids == [f"/demo/{name}" for name, _ in DEMO_CLASSES] and len(names) == 6
    for split, per_class in (("train", 6), ("eval", 3)):
        items = json.loads((root / f"{split}.json").read_text())["data"]
        assert len(items) == 6 * per_class
        assert all(not item["wav"].startswith("/") and item["labels"] in ids for item in items)
        assert all((root / item["wav"]).is_file() for item in items)
    flac = sorted((root / "audio").glob("*.flac"))
    assert len(flac) == 6 * 9
    wave = load_audio(flac[0])
    assert wave.shape == (1, 16000) and wave.abs().max() <= 1.0 and wave.abs().max() > 0.05
    assert flac[0].read_bytes()[:4] == b"fLaC"  # real FLAC files


def test_generation_is_deterministic(small_demo, tmp_path):
    other = ensure_demo_audio(tmp_path / "again", **SMALL)
    for name in ("train.json", "eval.json", "class_labels_indices.csv"):
        assert (other / name).read_text() == (small_demo / name).read_text()
    for path in sorted((small_demo / "audio").glob("*.flac"))[::5]:
        assert torch.equal(load_audio(path), load_audio(other / "audio" / path.name))
    changed = ensure_demo_audio(tmp_path / "seed1", **SMALL, seed=1)
    a, b = sorted((small_demo / "audio").glob("*.flac"))[0], sorted((changed / "audio").glob("*.flac"))[0]
    assert not torch.equal(load_audio(a), load_audio(b))


def test_cached_second_call_is_fast(small_demo, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(demo, "_write_dataset", fail)
    start = time.perf_counter()
    assert ensure_demo_audio(small_demo, **SMALL) == small_demo
    assert time.perf_counter() - start < 0.5


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = demo.save_audio

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(demo, "save_audio", flaky)
    root = tmp_path / "demo"
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_audio(root, num_train_per_class=2, num_eval_per_class=1, seconds=0.5)
    assert list(tmp_path.iterdir()) == []  # no half dataset, no temp folder
    monkeypatch.setattr(demo, "save_audio", real_save)
    ensure_demo_audio(root, num_train_per_class=2, num_eval_per_class=1, seconds=0.5)
    assert len(list((root / "audio").glob("*.flac"))) == 18


def test_other_parameters_replace_the_cache(tmp_path):
    root = tmp_path / "demo"
    ensure_demo_audio(root, num_train_per_class=2, num_eval_per_class=1, seconds=0.5)
    ensure_demo_audio(root, num_train_per_class=1, num_eval_per_class=1, seconds=0.5)
    assert len(json.loads((root / "train.json").read_text())["data"]) == 6
    assert len(list((root / "audio").glob("*.flac"))) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("AVMAE_CACHE", str(tmp_path))
    assert default_demo_root() == tmp_path / "demo_audio_v1"
    monkeypatch.delenv("AVMAE_CACHE")
    assert default_demo_root().parts[-3:] == (".cache", "avmae", "demo_audio_v1")


def test_synthesize_clip():
    for c, (name, _) in enumerate(DEMO_CLASSES):
        a = synthesize_clip(name, torch.Generator().manual_seed(c), 16000, 0.8)
        b = synthesize_clip(c, torch.Generator().manual_seed(c), 16000, 0.8)
        assert a.shape == (12800,) and a.dtype == torch.float32 and torch.equal(a, b)
        assert a.abs().max() <= 1.0 and a.std() > 1e-3
    with pytest.raises(KeyError):
        synthesize_clip("speech", torch.Generator())


def test_default_clip_length_fits_demo_target_length():
    from avmae.data.audio import num_frames

    assert num_frames(int(16000 * 2.6)) == 258  # cropped to the demo's 256 frames


def test_classes_are_distinguishable(small_demo):
    """A nearest-centroid classifier on simple fbank statistics beats chance by far."""
    frontend = AudioFrontend(target_length=98)
    csv_path = small_demo / "class_labels_indices.csv"

    def features(split):
        ds = AudioDataset(small_demo / f"{split}.json", csv_path, frontend=frontend)
        xs, ys = [], []
        for i in range(len(ds)):
            item = ds[i]
            a = item["audio"][0]
            xs.append(torch.cat([a.mean(0), a.std(0), (a[1:] - a[:-1]).abs().mean(0)]))
            ys.append(int(item["label"].argmax()))
        return torch.stack(xs), torch.tensor(ys)

    xt, yt = features("train")
    xe, ye = features("eval")
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xt, xe = (xt - mu) / sd, (xe - mu) / sd
    centroids = torch.stack([xt[yt == c].mean(0) for c in range(6)])
    dist = torch.cdist(centroids, centroids)
    assert dist[~torch.eye(6, dtype=torch.bool)].min() > 2.0  # class means all differ
    accuracy = (torch.cdist(xe, centroids).argmin(1) == ye).float().mean()
    assert accuracy > 0.4  # chance is 1/6

"""Manifests, label CSVs and AudioDataset (labels, skip policy, determinism)."""

import json
import math
import os

import pytest
import torch
from torch.utils.data import DataLoader

from avmae.data import (
    AudioDataset,
    AudioFrontend,
    MediaError,
    collect_skipped,
    read_label_csv,
    read_manifest,
    save_audio,
    seed_worker,
)

SR = 16000
FRONTEND = AudioFrontend(target_length=48)
CLASSES = [("/m/a", "Alpha"), ("/m/b", "Beta, with comma"), ("/m/c", "Gamma")]


def tone(freq, seconds=0.4):
    t = torch.arange(int(SR * seconds)) / SR
    return 0.4 * torch.sin(2 * math.pi * freq * t)


def write_labels(path):
    lines = ["index,mid,display_name"] + [f'{i},{mid},"{name}"' for i, (mid, name) in enumerate(CLASSES)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def corpus(tmp_path):
    """8 readable clips in tmp/audio, a manifest with relative paths, a label CSV."""
    (tmp_path / "audio").mkdir()
    labels = ["/m/a", "/m/b", "/m/c", "/m/a,/m/b", "/m/c", "/m/b", "/m/a", "/m/a,/m/c"]
    items = []
    for i, lab in enumerate(labels):
        save_audio(tmp_path / "audio" / f"c{i}.flac", tone(200 + 150 * i, 0.3 + 0.05 * i), SR)
        items.append({"wav": f"audio/c{i}.flac", "labels": lab, "video_id": f"v{i}"})
    manifest = tmp_path / "train.json"
    manifest.write_text(json.dumps({"data": items}))
    return tmp_path, manifest, write_labels(tmp_path / "class_labels_indices.csv")


# ---------------------------------------------------------------------------- manifests
def test_read_manifest_resolves_relative_paths(corpus, tmp_path):
    root, manifest, _ = corpus
    items = read_manifest(manifest)
    assert len(items) == 8
    assert items[0]["wav"] == str((root / "audio" / "c0.flac").resolve())
    assert items[3]["labels"] == "/m/a,/m/b" and items[3]["video_id"] == "v3"
    # absolute paths are kept; a manifest elsewhere still finds relative clips next to itself
    other = tmp_path / "sub"
    other.mkdir()
    (other / "m.json").write_text(json.dumps({"data": [{"wav": items[0]["wav"]}, {"wav": "x.wav"}]}))
    got = read_manifest(other / "m.json")
    assert got[0]["wav"] == items[0]["wav"] and got[0]["labels"] == ""
    assert got[1]["wav"] == str((other / "x.wav").resolve())


def test_read_manifest_jsonl(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"wav": "a.flac", "labels": "/m/a"}\n\n{"wav": "/abs/b.flac"}\n')
    items = read_manifest(path)
    assert [i["wav"] for i in items] == [str(tmp_path.resolve() / "a.flac"), "/abs/b.flac"]


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"items": []}),
        json.dumps({"data": [{"labels": "/m/a"}]}),
        json.dumps({"data": {"wav": "a"}}),
        json.dumps([1, 2]),
    ],
)
def test_read_manifest_errors_name_the_manifest(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.json"):
        read_manifest(path)


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json"):
        read_manifest(tmp_path / "nope.json")


def test_read_label_csv(tmp_path):
    ids, names = read_label_csv(write_labels(tmp_path / "l.csv"))
    assert ids == ["/m/a", "/m/b", "/m/c"]
    assert names == ["Alpha", "Beta, with comma", "Gamma"]
    (tmp_path / "bad.csv").write_text("idx,mid\n0,/m/a\n")
    with pytest.raises(ValueError, match="bad.csv"):
        read_label_csv(tmp_path / "bad.csv")


# ---------------------------------------------------------------------------- items and labels
def test_items_and_multi_hot_labels(corpus):
    root, manifest, csv_path = corpus
    ds = AudioDataset(manifest, csv_path, frontend=FRONTEND)
    assert len(ds) == 8 and ds.num_classes == 3 and ds.multilabel
    assert ds.class_names == ["Alpha", "Beta, with comma", "Gamma"]
    item = ds[3]
    assert item["audio"].shape == (1, 48, 128) and item["audio"].dtype == torch.float32
    assert item["label"].tolist() == [1.0, 1.0, 0.0] and item["label"].dtype == torch.float32
    assert item["index"] == 3
    assert ds[2]["label"].tolist() == [0.0, 0.0, 1.0]
    # eval items are exactly the frontend applied to the decoded clip
    from avmae.data import load_audio

    assert torch.equal(item["audio"], FRONTEND(load_audio(root / "audio" / "c3.flac")))
    assert ds[-1]["index"] == 7


def test_no_label_csv_and_multilabel_override(corpus):
    _, manifest, csv_path = corpus
    ds = AudioDataset(manifest, frontend=FRONTEND)
    assert ds.num_classes == 0 and ds[0]["label"].shape == (0,) and not ds.multilabel
    assert not AudioDataset(manifest, csv_path, frontend=FRONTEND, multilabel=False).multilabel


def test_single_label_is_not_multilabel(tmp_path):
    save_audio(tmp_path / "a.flac", tone(300), SR)
    items = [{"wav": str(tmp_path / "a.flac"), "labels": "/m/b"}] * 3
    ds = AudioDataset(items, write_labels(tmp_path / "l.csv"), frontend=FRONTEND)
    assert not ds.multilabel and ds[1]["label"].tolist() == [0.0, 1.0, 0.0]


def test_unknown_label_is_named(corpus):
    _, manifest, csv_path = corpus
    data = json.loads(manifest.read_text())
    data["data"][5]["labels"] = "/m/a,/m/zzz"
    manifest.write_text(json.dumps(data))
    with pytest.raises(KeyError, match="/m/zzz"):
        AudioDataset(manifest, csv_path, frontend=FRONTEND)


def test_bad_arguments(corpus):
    _, manifest, _ = corpus
    with pytest.raises(ValueError, match="augment"):
        AudioDataset(manifest, frontend=FRONTEND, augment={"freq_mask": 3})
    with pytest.raises(ValueError, match="on_error"):
        AudioDataset(manifest, frontend=FRONTEND, on_error="ignore")
    with pytest.raises(ValueError, match="sample_rate"):
        AudioDataset(manifest, frontend=FRONTEND, sample_rate=22050)


# ---------------------------------------------------------------------------- skip policy
def break_items(root, manifest, which):
    """Make items ``which`` unreadable in three different ways."""
    data = json.loads(manifest.read_text())
    broken = []
    for k, i in enumerate(which):
        path = root / "audio" / f"c{i}.flac"
        if k % 3 == 0:
            path.write_text("not audio")
        elif k % 3 == 1:
            path.write_bytes(b"")
        else:
            path.unlink()
        broken.append(str(path.resolve()))
    manifest.write_text(json.dumps(data))
    return set(broken)


def test_raise_policy(corpus):
    root, manifest, csv_path = corpus
    broken = break_items(root, manifest, [2])
    ds = AudioDataset(manifest, csv_path, frontend=FRONTEND)
    ds[1]
    with pytest.raises(MediaError) as info:
        ds[2]
    assert info.value.path in broken


def test_skip_policy_replaces_and_records(corpus, caplog, tmp_path):
    root, manifest, csv_path = corpus
    broken = break_items(root, manifest, [1, 4])
    log_dir = tmp_path / "skiplog"
    ds = AudioDataset(
        manifest, csv_path, frontend=FRONTEND, on_error="skip", max_skip_fraction=0.25, skip_log_dir=log_dir
    )
    with caplog.at_level("WARNING", logger="avmae.data.datasets"):
        items = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]
    assert ds.skipped == broken
    assert sum("skipping" in r.message for r in caplog.records) == 2  # logged once per path
    for i, item in enumerate(items[:8]):
        if i in (1, 4):
            assert item["index"] not in (1, 4)  # replaced by a readable item ...
            assert torch.equal(item["audio"], ds[item["index"]]["audio"])
            assert torch.equal(item["label"], ds.label(item["index"]))
        else:
            assert item["index"] == i
    # ... chosen deterministically: a fresh dataset picks the same replacements
    fresh = AudioDataset(manifest, csv_path, frontend=FRONTEND, on_error="skip", max_skip_fraction=0.25)
    assert [fresh[i]["index"] for i in (1, 4)] == [items[1]["index"], items[4]["index"]]
    recorded = collect_skipped(log_dir)
    assert set(recorded) == broken and all(recorded.values())
    assert [p.name for p in log_dir.iterdir()] == ["skipped-rank0-worker0.tsv"]


def test_skip_policy_raises_over_fraction(corpus):
    root, manifest, csv_path = corpus
    break_items(root, manifest, [0, 3])
    ds = AudioDataset(manifest, csv_path, frontend=FRONTEND, on_error="skip", max_skip_fraction=0.2)
    ds[0]  # 1 of 8 skipped: allowed
    with pytest.raises(RuntimeError, match="max_skip_fraction"):
        ds[3]


def test_skip_with_workers_logs_per_worker(corpus, tmp_path):
    root, manifest, csv_path = corpus
    broken = break_items(root, manifest, [2, 5])
    log_dir = tmp_path / "skiplog"
    ds = AudioDataset(
        manifest, csv_path, frontend=FRONTEND, on_error="skip", max_skip_fraction=0.5, skip_log_dir=log_dir
    )
    loader = DataLoader(ds, batch_size=2, num_workers=2, worker_init_fn=seed_worker)
    indices = torch.cat([b["index"] for b in loader])
    assert len(indices) == 8 and not (set(indices.tolist()) & {2, 5})
    assert set(collect_skipped(log_dir)) == broken
    assert all(p.name.startswith("skipped-rank0-worker") for p in log_dir.iterdir())


# ---------------------------------------------------------------------------- determinism
AUG = {"freqm": 24, "timem": 12, "mixup": 0.5, "gain": True, "roll": True}


def make_train(manifest, csv_path, seed=0):
    return AudioDataset(manifest, csv_path, frontend=FRONTEND, train=True, augment=AUG, seed=seed)


def test_augmented_items_depend_only_on_seed_epoch_index(corpus):
    _, manifest, csv_path = corpus
    a, b = make_train(manifest, csv_path), make_train(manifest, csv_path)
    order = [5, 2, 7, 0]
    first = {i: a[i] for i in order}
    for i in reversed(order):  # other order, other instance: same result
        assert torch.equal(b[i]["audio"], first[i]["audio"])
        assert torch.equal(b[i]["label"], first[i]["label"])
    b.set_epoch(1)
    assert any(not torch.equal(b[i]["audio"], first[i]["audio"]) for i in order)
    other_seed = make_train(manifest, csv_path, seed=1)
    assert any(not torch.equal(other_seed[i]["audio"], first[i]["audio"]) for i in order)
    # augmentations actually happen and eval mode has none
    plain = AudioDataset(manifest, csv_path, frontend=FRONTEND)
    assert any(not torch.equal(plain[i]["audio"], first[i]["audio"]) for i in order)


def test_mixup_gives_soft_labels(corpus):
    _, manifest, csv_path = corpus
    ds = AudioDataset(manifest, csv_path, frontend=FRONTEND, train=True, augment={"mixup": 1.0})
    labels = torch.stack([ds[i]["label"] for i in range(len(ds))])
    assert ((labels > 0) & (labels < 1)).any()  # some partner has other classes
    assert (labels >= 0).all() and (labels <= 1 + 1e-6).all()
    single = labels[[0, 1, 2, 4, 5, 6]]  # one class each: lam + (1 - lam) = 1 in total
    total = single.sum(1)
    assert (torch.isclose(total, torch.ones(6)) | (total > 1)).all()


def test_spec_augment_in_dataset_masks_before_normalisation(corpus):
    _, manifest, csv_path = corpus
    ds = AudioDataset(manifest, csv_path, frontend=FRONTEND, train=True, augment={"freqm": 40})
    pad_value = (0.0 - FRONTEND.mean) / (2 * FRONTEND.std)
    x = ds[0]["audio"][0]
    masked_bins = torch.isclose(x, torch.tensor(pad_value)).all(0)
    assert masked_bins.any()  # masked bins hold the normalised 0, like the padding


def test_worker_count_does_not_change_batches(corpus):
    _, manifest, csv_path = corpus
    ds = make_train(manifest, csv_path)
    ds.set_epoch(3)

    def batches(workers):
        loader = DataLoader(
            ds,
            batch_size=3,
            num_workers=workers,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(0),
        )
        return [b["audio"] for b in loader], [b["label"] for b in loader]

    audio0, label0 = batches(0)
    audio2, label2 = batches(2)
    assert all(torch.equal(x, y) for x, y in zip(audio0, audio2))
    assert all(torch.equal(x, y) for x, y in zip(label0, label2))


def test_seed_worker_seeds_numpy_and_random(monkeypatch):
    import random

    import numpy as np

    torch.manual_seed(1234)
    seed_worker(0)
    a = (np.random.rand(), random.random())
    torch.manual_seed(1234)
    seed_worker(0)
    assert (np.random.rand(), random.random()) == a
    assert os.environ.get("RANK", "0") == "0"

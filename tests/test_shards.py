"""Manifest -> tar shards -> streamed items: coverage, splitting, equality with AudioDataset."""

import json
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

from avmae.data import AudioDataset, AudioFrontend, MediaError, save_audio, synthesize_clip
from avmae.data.datasets import item_generator
from avmae.data.fast_fbank import BatchedAudioFrontend
from avmae.data.shards import ShardDataset, expand_shards, make_shard_loader, write_shards

CLASSES = ["tone", "chirp", "clicks"]
N = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    items = []
    for i in range(N):
        name = CLASSES[i % 3]
        wave = synthesize_clip(name, item_generator(1, 0, i), seconds=0.3 + 0.05 * (i % 4))
        ext = "wav" if i % 5 == 0 else "flac"
        save_audio(root / "audio" / f"clip.{i}.{ext}", wave[None], 16000)  # dots in names are fine
        labels = f"/demo/{name}" + (",/demo/tone" if i % 4 == 1 and name != "tone" else "")
        items.append({"wav": f"audio/clip.{i}.{ext}", "labels": labels, "source": "test"})
    (root / "train.json").write_text(json.dumps({"data": items}))
    (root / "labels.csv").write_text(
        "index,mid,display_name\n" + "".join(f"{k},/demo/{c},{c}\n" for k, c in enumerate(CLASSES))
    )
    return root


FE = AudioFrontend(target_length=48)


def reference(corpus):
    ds = AudioDataset(corpus / "train.json", corpus / "labels.csv", frontend=FE)
    return {i: ds[i] for i in range(len(ds))}


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    paths = write_shards(corpus / "train.json", out, shard_size=2, label_csv=corpus / "labels.csv")
    return out, paths


def test_write_shards_layout(shards, corpus):
    out, paths = shards
    assert [p.name for p in paths] == [f"shard-{i:06d}.tar" for i in range(N // 2)]
    index = json.loads((out / "index.json").read_text())
    assert index["total"] == N and [s["count"] for s in index["shards"]] == [2] * (N // 2)
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
    assert names == ["00000000.wav", "00000000.json", "00000001.flac", "00000001.json"]
    with tarfile.open(paths[0]) as tar:
        meta = json.loads(tar.extractfile("00000001.json").read())
        audio = tar.extractfile("00000001.flac").read()
    assert meta["index"] == 1 and meta["label_indices"] == [1, 0] and meta["num_classes"] == 3
    assert meta["source"] == "test" and meta["wav"].endswith("clip.1.flac")
    assert audio == (corpus / "audio" / "clip.1.flac").read_bytes()


def test_single_process_reads_every_item_once_equal_to_audio_dataset(shards, corpus):
    out, _ = shards
    ref = reference(corpus)
    ds = ShardDataset(
        str(out / "shard-{000000..000007}.tar"), frontend=FE, shuffle_buffer=5, seed=3, rank=0, world_size=1
    )
    assert ds.num_samples == N
    items = list(ds)
    assert sorted(it["index"] for it in items) == list(range(N))
    for it in items:
        want = ref[it["index"]]
        assert torch.equal(it["audio"], want["audio"]) and torch.equal(it["label"], want["label"])


def test_stored_fbank_equals_audio_dataset(corpus, tmp_path):
    write_shards(
        corpus / "train.json", tmp_path, shard_size=5, with_fbank=True, frontend=FE, label_csv=corpus / "labels.csv"
    )
    ref = reference(corpus)
    items = list(ShardDataset(tmp_path, frontend=FE, label_csv=corpus / "labels.csv", world_size=1, rank=0))
    assert len(items) == N
    for it in items:
        assert torch.equal(it["audio"], ref[it["index"]]["audio"])
        assert torch.equal(it["label"], ref[it["index"]]["label"])
    # another target length cannot use the stored fbank and decodes instead
    fe2 = AudioFrontend(target_length=32)
    it = next(iter(ShardDataset(tmp_path, frontend=fe2, shuffle_buffer=0, shuffle_shards=False, world_size=1, rank=0)))
    want = AudioDataset(corpus / "train.json", frontend=fe2)[it["index"]]["audio"]
    assert torch.equal(it["audio"], want)
    # nor can another fbank (BEATs'), on the indexed dataset too
    fe3 = AudioFrontend(target_length=48, style="beats", mean=15.41663, std=6.55582)
    it = next(iter(ShardDataset(tmp_path, frontend=fe3, shuffle_buffer=0, shuffle_shards=False, world_size=1, rank=0)))
    assert torch.equal(it["audio"], AudioDataset(corpus / "train.json", frontend=fe3)[it["index"]]["audio"])
    from avmae.data.shards import IndexedShardDataset

    indexed = IndexedShardDataset(tmp_path, frontend=fe3)
    assert torch.equal(indexed[0]["audio"], AudioDataset(corpus / "train.json", frontend=fe3)[0]["audio"])


def test_two_ranks_two_workers_cover_everything_once(shards):
    out, _ = shards
    seen = []
    for rank in range(2):
        loader = make_shard_loader(
            out, frontend=FE, batch_size=3, num_workers=2, shuffle_buffer=4, seed=1, epoch=2, rank=rank, world_size=2
        )
        for batch in loader:
            assert batch["audio"].shape[1:] == (1, 48, 128) and batch["label"].shape[1] == 3
            seen += batch["index"].tolist()
    assert sorted(seen) == list(range(N))


def test_epochs_reshuffle_deterministically(shards):
    out, _ = shards

    def order(epoch, seed=0):
        ds = ShardDataset(out, frontend=FE, shuffle_buffer=6, seed=seed, rank=0, world_size=1, return_waveform=True)
        ds.set_epoch(epoch)
        return [it["index"] for it in ds]

    a = order(0)
    assert a == order(0) and sorted(a) == list(range(N))
    assert order(1) != a and order(0, seed=5) != a


def test_rank_from_environment(shards, monkeypatch):
    out, _ = shards
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    ds = ShardDataset(out, frontend=FE)
    assert (ds.rank, ds.world_size) == (1, 4)
    assert len(ds.shards_for()) == 2


def test_pipe_urls(shards):
    out, paths = shards
    ds = ShardDataset([f"pipe:cat {p}" for p in paths[:2]], frontend=FE, world_size=1, rank=0)
    assert sorted(it["index"] for it in ds) == [0, 1, 2, 3]
    assert ds.num_samples is None
    assert len(expand_shards(out)) == N // 2


def test_waveform_items_with_batched_frontend(shards, corpus):
    out, _ = shards
    ref = reference(corpus)
    loader = make_shard_loader(out, frontend=FE, batch_size=4, return_waveform=True, world_size=1, rank=0)
    bfe = BatchedAudioFrontend.from_frontend(FE, center=False)
    n = 0
    for batch in loader:
        x = bfe(batch["wave"], batch["length"])
        for j, i in enumerate(batch["index"].tolist()):
            assert (x[j] - ref[i]["audio"]).abs().max() < 1e-4
            n += 1
    assert n == N


def test_unreadable_audio_is_skipped_or_raised(corpus, tmp_path):
    items = json.loads((corpus / "train.json").read_text())["data"][:4]
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"garbage" * 20)
    items = [{**it, "wav": str(corpus / it["wav"])} for it in items] + [{"wav": str(bad), "labels": ""}]
    write_shards(items, tmp_path / "s", shard_size=10)
    ds = ShardDataset(tmp_path / "s", frontend=FE, world_size=1, rank=0)
    assert sorted(it["index"] for it in ds) == [0, 1, 2, 3] and ds.skipped == 1
    with pytest.raises(MediaError, match="00000004.flac"):
        list(ShardDataset(tmp_path / "s", frontend=FE, world_size=1, rank=0, on_error="raise"))
    # with_fbank leaves unreadable clips out at write time
    paths = write_shards(items, tmp_path / "f", shard_size=10, with_fbank=True, frontend=FE)
    assert json.loads((tmp_path / "f" / "index.json").read_text())["skipped"] == [str(bad)]
    assert len(paths) == 1


def test_indexed_shards_equal_audio_dataset_with_augmentation(shards, corpus, tmp_path):
    from avmae.data.shards import IndexedShardDataset

    out, _ = shards
    aug = {"gain": True, "mixup": 0.5, "freqm": 8, "timem": 8}
    ref = AudioDataset(corpus / "train.json", corpus / "labels.csv", frontend=FE, train=True, augment=aug, seed=2)
    ds = IndexedShardDataset(
        out / "shard-{000000..000007}.tar", corpus / "labels.csv", frontend=FE, train=True, augment=aug, seed=2
    )
    assert len(ds) == N and [it["source_index"] for it in ds.items] == list(range(N))  # written in manifest order
    ds.set_epoch(1)
    ref.set_epoch(1)
    for i in (0, 5, 11):
        a, b = ds[i], ref[i]
        assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["label"], b["label"]) and a["index"] == b["index"]
    # stored fbanks (no waveform augmentation): SpecAugment draws as AudioDataset does
    write_shards(corpus / "train.json", tmp_path, shard_size=6, with_fbank=True, frontend=FE)
    aug = {"freqm": 8, "timem": 8}
    ref = AudioDataset(corpus / "train.json", corpus / "labels.csv", frontend=FE, train=True, augment=aug, seed=2)
    ds = IndexedShardDataset(tmp_path, corpus / "labels.csv", frontend=FE, train=True, augment=aug, seed=2)
    assert all(torch.equal(ds[i]["audio"], ref[i]["audio"]) for i in range(N))
    loader = DataLoader(ds, batch_size=4, num_workers=2)  # file handles per worker process
    assert sorted(torch.cat([b["index"] for b in loader]).tolist()) == list(range(N))


def test_trainer_pretrains_from_shards(shards, corpus, tmp_path):
    from avmae.config import load_config
    from avmae.train import Trainer

    out, _ = shards
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(
            [],
            [
                "modality=audio_shards",
                "model.name=audiomae_tiny",
                f"data.train_manifest={out / 'index.json'}",
                f"data.eval_manifest={corpus / 'train.json'}",
                f"data.label_csv={corpus / 'labels.csv'}",
                "data.target_length=48",
                "data.num_workers=0",
                "train.batch_size=4",
                "train.cpu=true",
                "train.mixed_precision=no",
                "schedule.max_steps=3",
                "schedule.warmup_epochs=0",
                "logging.progress=false",
                "checkpoint.every_n_epochs=0",
                f"output_dir={tmp_path / 'run'}",
            ],
        )
        result = Trainer(cfg).fit()
    finally:
        torch.set_num_threads(threads)
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(v)) for v in result.eval.values())

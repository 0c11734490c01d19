"""Bad data does not stop a run: a training run over a manifest in which a quarter of the files are
broken completes, lists exactly those files in skipped.tsv, and its loss falls; past
max_skip_fraction (over all DataLoader workers) it stops with a clear message. Manifests cannot
reach outside their folder through relative paths unless allowed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avmae.config import load_config
from avmae.data import ManifestError, ensure_demo_audio, read_manifest
from avmae.data.av_dataset import read_av_manifest
from avmae.train import Trainer, build_audio_dataset, build_av_dataset

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def quarter_broken(tmp_path_factory):
    """12 demo clips and 4 broken files (empty, truncated, not audio, missing) in one manifest."""
    root = ensure_demo_audio(
        tmp_path_factory.mktemp("bad") / "demo", num_train_per_class=2, num_eval_per_class=1, seconds=0.7
    )
    items = json.loads((root / "train.json").read_text())["data"]
    assert len(items) == 12
    good = (root / items[0]["wav"]).read_bytes()
    (root / "empty.flac").write_bytes(b"")
    (root / "truncated.flac").write_bytes(good[: len(good) // 3])
    (root / "notes.wav").write_text("not audio\n" * 50)
    broken = ["empty.flac", "truncated.flac", "notes.wav", "missing.flac"]
    good_items = iter(items)
    mixed = [{"wav": broken[i // 4], "labels": ""} if i % 4 == 0 else next(good_items) for i in range(16)]
    (root / "mixed.json").write_text(json.dumps({"data": mixed}))
    return root, {str((root / b).resolve()) for b in broken}


def overrides(root, out, *extra):
    return [
        "model.name=audiomae_tiny",
        "model.params.decoder=global",
        "model.params.norm_pix_loss=false",
        f"data.train_manifest={root / 'mixed.json'}",
        "data.target_length=64",
        "data.num_mel_bins=64",
        "data.num_workers=0",
        "data.cache=true",
        "data.on_error=skip",
        "data.max_skip_fraction=0.3",
        "train.batch_size=4",
        "train.cpu=true",
        "train.mixed_precision=no",
        "optim.lr=3e-3",
        "schedule.epochs=3",
        "schedule.warmup_epochs=0",
        "eval.every_n_epochs=-1",
        "logging.every_n_steps=1",
        "logging.progress=false",
        "logging.tensorboard=false",
        "checkpoint.every_n_epochs=0",
        f"output_dir={out}",
        *extra,
    ]


def read_skipped(out):
    lines = (out / "skipped.tsv").read_text().splitlines()
    return {line.split("\t")[0]: line.split("\t")[1] for line in lines}


def test_run_with_a_quarter_broken_completes_and_lists_exactly_them(quarter_broken, tmp_path):
    root, broken = quarter_broken
    out = tmp_path / "run"
    result = Trainer(load_config([], overrides(root, out))).fit()
    assert result.steps == 12 and not result.interrupted
    assert result.last_loss < result.first_loss
    skipped = read_skipped(out)
    assert set(skipped) == broken and result.skipped_items == 4
    assert "file not found" in skipped[str(root.resolve() / "missing.flac")]
    assert "empty file" in skipped[str(root.resolve() / "empty.flac")]


def test_too_many_unreadable_clips_stop_the_run_with_a_clear_message(quarter_broken, tmp_path):
    """Two DataLoader workers each see about half of the broken files, under the ceiling on
    their own; the trainer's count over all of them stops the run at the end of the epoch."""
    root, broken = quarter_broken
    out = tmp_path / "run"
    args = overrides(root, out, "data.max_skip_fraction=0.2", "data.num_workers=2")
    args = [a for a in args if not a.startswith("output_dir=")]
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), "--output-dir", str(out), *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (
        "training stopped:" in proc.stderr and "max_skip_fraction=0.2" in proc.stderr and "skipped.tsv" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert set(read_skipped(out)) == broken  # written before stopping, for the user to look at


# ------------------------------------------------------------------------------ manifest paths
@pytest.fixture()
def layout(tmp_path):
    """data/ holds the manifests and a.wav; outside/ holds b.wav; data/link -> outside/."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "a.wav").write_bytes(b"x")
    (outside / "b.wav").write_bytes(b"x")
    (data / "link").symlink_to(outside, target_is_directory=True)
    (data / "b_link.wav").symlink_to(outside / "b.wav")
    (data / "inner").mkdir()
    (data / "inner_link").symlink_to(data / "inner", target_is_directory=True)
    return data, outside


def write(manifest, *wavs):
    manifest.write_text(json.dumps({"data": [{"wav": w} for w in wavs]}))
    return manifest


@pytest.mark.parametrize("wav", ["../outside/b.wav", "link/b.wav", "b_link.wav", "inner/../../outside/b.wav"])
def test_relative_paths_may_not_leave_the_manifest_folder(layout, wav):
    data, outside = layout
    m = write(data / "m.json", "a.wav", wav)
    with pytest.raises(ManifestError, match="allow_outside_root") as info:
        read_manifest(m)
    assert "m.json" in str(info.value) and wav in str(info.value)
    items = read_manifest(m, allow_outside_root=True)  # allowed on request, resolved as before
    assert items[1]["wav"] == str(data.resolve() / wav)


def test_absolute_paths_and_links_inside_the_folder_are_fine(layout):
    data, outside = layout
    m = write(data / "m.json", "a.wav", str(outside / "b.wav"), "inner_link/c.wav", "inner/../a.wav", "./a.wav")
    assert [Path(it["wav"]).name for it in read_manifest(m)] == ["a.wav", "b.wav", "c.wav", "a.wav", "a.wav"]


def test_av_manifests_and_the_config_follow_the_same_rule(layout, tmp_path):
    data, _ = layout
    av = data / "av.json"
    av.write_text(json.dumps({"data": [{"video_id": "x", "video_path": "link", "wav": "a.wav"}]}))
    with pytest.raises(ManifestError, match="video_path"):
        read_av_manifest(av)
    assert read_av_manifest(av, allow_outside_root=True)[0]["video_path"].endswith("link")
    av_cfg = [
        "modality=av",
        "model.name=avmae_tiny",
        "model.params.num_frames=1",
        "model.params.image_size=16",
        f"data.train_manifest={av}",
        "data.target_length=64",
        f"output_dir={tmp_path / 'o'}",
    ]
    with pytest.raises(ManifestError, match="allow_outside_root"):
        build_av_dataset(load_config([], av_cfg), "train")
    ds = build_av_dataset(load_config([], [*av_cfg, "data.allow_outside_root=true"]), "train")
    assert len(ds) == 1 and ds.skip_log_dir == tmp_path / "o" / "skipped" / "train"

    m = write(data / "m.json", "a.wav", "../outside/b.wav")
    cfg = load_config([], [f"data.train_manifest={m}", "data.target_length=64", f"output_dir={tmp_path / 'o'}"])
    with pytest.raises(ManifestError, match="allow_outside_root"):
        build_audio_dataset(cfg, "train")
    cfg = load_config(
        [],
        [
            f"data.train_manifest={m}",
            "data.target_length=64",
            "data.allow_outside_root=true",
            f"output_dir={tmp_path / 'o'}",
        ],
    )
    assert len(build_audio_dataset(cfg, "train")) == 2

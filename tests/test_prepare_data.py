"""Dataset preparation tool: manifests, fbank stats, balanced weights, frame folders, shards."""

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from avmae.data import AudioFrontend, load_audio, read_manifest, save_audio, synthesize_clip
from avmae.sampling import balanced_weights, label_counts, load_weights, save_weights

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tool():
    return importlib.import_module("avmae.cli.prepare")  # behind tools/prepare_data.py


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    g = torch.Generator().manual_seed(1)
    save_audio(root / "a.wav", synthesize_clip("tone", g, seconds=0.5).unsqueeze(0), 16000)
    save_audio(root / "sub" / "Yb-1.flac", synthesize_clip("clicks", g, seconds=0.7).unsqueeze(0), 16000)
    save_audio(root / "sub" / "c.ogg", synthesize_clip("fm_tone", g, seconds=0.3).unsqueeze(0), 16000)
    (root / "sub" / "bad.wav").write_bytes(b"\x00" * 64)
    (root / "readme.txt").write_text("not audio")
    return root


def _write_label_csv(path):
    path.write_text("index,mid,display_name\n0,/m/x,Tone\n1,/m/y,Clicks\n2,/m/z,FM\n", encoding="utf-8")
    return path


def test_manifest_with_labels_relative_paths_and_unreadable_files(tool, media, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text('file,labels\na.wav,/m/x\nsub/Yb-1,"/m/y, /m/x"\n', encoding="utf-8")
    out = tmp_path / "manifests" / "train.json"
    assert tool.main(["manifest", str(media), "--out", str(out), "--labels", str(labels), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "1 unreadable file(s)" in captured.err and "bad.wav" in captured.err
    assert "1 file(s) have no entry" in captured.err  # c.ogg
    doc = json.loads(out.read_text())
    wavs = [item["wav"] for item in doc["data"]]
    assert all(Path(w).is_absolute() for w in wavs)  # outside the manifest's folder: absolute
    inside = media / "manifest.json"  # next to the clips: relative, so the folder moves as a whole
    try:
        assert tool.main(["manifest", str(media), "--out", str(inside), "--check", "none", "--no-progress"]) == 0
        assert all(not Path(item["wav"]).is_absolute() for item in json.loads(inside.read_text())["data"])
    finally:
        inside.unlink()
    assert [Path(w).name for w in wavs] == ["a.wav", "Yb-1.flac", "c.ogg"]
    assert [item["labels"] for item in doc["data"]] == ["/m/x", "/m/y,/m/x", ""]
    items = read_manifest(out)  # paths resolve against the manifest's folder
    assert load_audio(items[0]["wav"]).shape[1] == 8000


def test_manifest_reads_audioset_segment_csv_and_checks_labels(tool, media, tmp_path, capsys):
    segments = tmp_path / "segments.csv"
    segments.write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'a, 0.000, 10.000, "/m/x,/m/z"\n'
        'b-1, 30.000, 40.000, "Clicks"\n',
        encoding="utf-8",
    )
    label_csv = _write_label_csv(tmp_path / "class_labels_indices.csv")
    out = tmp_path / "as.json"
    argv = [
        "manifest",
        str(media),
        "-o",
        str(out),
        "--labels",
        str(segments),
        "--label-csv",
        str(label_csv),
        "--require-labels",
        "--check",
        "full",
        "--no-progress",
    ]
    assert tool.main(argv) == 0
    items = json.loads(out.read_text())["data"]
    # "Yb-1.flac" matches YTID "b-1" (the "Y" prefix of AudioSet downloads); a display name becomes its id
    assert [(Path(i["wav"]).name, i["labels"]) for i in items] == [("a.wav", "/m/x,/m/z"), ("Yb-1.flac", "/m/y")]
    bad = tmp_path / "bad_labels.csv"
    bad.write_text("a,/m/unknown\n", encoding="utf-8")
    with pytest.raises(KeyError, match="unknown"):
        tool.main(
            [
                "manifest",
                str(media),
                "-o",
                str(out),
                "--labels",
                str(bad),
                "--label-csv",
                str(label_csv),
                "--check",
                "none",
                "--no-progress",
            ]
        )


def test_stats_are_the_mean_and_std_of_the_fbank(tool, media, tmp_path, capsys):
    paths = sorted(p for p in media.rglob("*") if p.suffix in (".wav", ".flac", ".ogg") and p.name != "bad.wav")
    fe = AudioFrontend(target_length=None)
    allv = torch.cat([fe.compute_fbank(load_audio(p)).flatten().double() for p in paths])
    res = tool.fbank_stats(paths, target_length=None)
    assert res["mean"] == pytest.approx(float(allv.mean()), rel=1e-9)
    assert res["std"] == pytest.approx(float(allv.std()), rel=1e-6)
    assert res["files"] == 3 and res["frames"] == allv.numel() // 128
    # the frontend's view: padded / cropped to target_length frames
    fe = AudioFrontend(target_length=40)
    padded = torch.cat([fe.compute_fbank(load_audio(p)).flatten().double() for p in paths])
    res = tool.fbank_stats(paths, target_length=40)
    assert res["mean"] == pytest.approx(float(padded.mean()), rel=1e-9) and res["frames"] == 120

    out = tmp_path / "stats.json"
    assert (
        tool.main(
            [
                "stats",
                str(media),
                "--max-files",
                "2",
                "--seed",
                "0",
                "--target-length",
                "0",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert f"data.mean={saved['mean']:.7g} data.std={saved['std']:.7g}" in text
    assert saved["files"] + len(saved["skipped"]) == 2  # a seeded sample of 2 of the 4 files
    again = tmp_path / "again.json"
    tool.main(
        [
            "stats",
            str(media),
            "--max-files",
            "2",
            "--seed",
            "0",
            "--target-length",
            "0",
            "--out",
            str(again),
            "--no-progress",
        ]
    )
    assert json.loads(again.read_text()) == saved
    # the training length from the run config, said in the output; 1024 by default, said too
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  target_length: 48\n")
    assert (
        tool.main(
            ["stats", *map(str, paths), "--config", str(cfg), "--max-files", "0", "--out", str(out), "--no-progress"]
        )
        == 0
    )
    assert "padded or cropped to 48 frames (data.target_length of" in capsys.readouterr().out
    assert json.loads(out.read_text())["mean"] == pytest.approx(
        tool.fbank_stats(paths, target_length=48)["mean"], rel=1e-9
    )
    assert tool.main(["stats", str(paths[0]), "--no-progress"]) == 0
    assert "1024 frames (the default; give the training length" in capsys.readouterr().out


def test_balanced_weights_follow_gen_weight(tool, tmp_path):
    label_csv = _write_label_csv(tmp_path / "labels.csv")
    items = [
        {"wav": "a.wav", "labels": "/m/x"},
        {"wav": "b.wav", "labels": "/m/x,/m/y"},
        {"wav": "c.wav", "labels": "/m/x"},
        {"wav": "d.wav", "labels": ""},
    ]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"data": items}))
    # AudioMAE's gen_weight.py, written out
    count = {"/m/x": 3, "/m/y": 1, "/m/z": 0}
    lw = {k: 1000.0 / (v + 0.01) for k, v in count.items()}
    want = [lw["/m/x"], lw["/m/x"] + lw["/m/y"], lw["/m/x"], 0.0]
    w = balanced_weights(manifest, label_csv)
    assert w.dtype == torch.float64
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-12)
    counts, per_item = label_counts(items, ["/m/x", "/m/y", "/m/z"])
    assert counts.tolist() == [3, 1, 0] and per_item[1] == [0, 1]

    out = tmp_path / "weights.csv"
    assert tool.main(["weights", str(manifest), "--label-csv", str(label_csv), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and all("," not in line for line in lines)
    np.testing.assert_allclose(np.loadtxt(out), want, rtol=1e-12)
    torch.testing.assert_close(load_weights(save_weights(w, tmp_path / "w2.csv")), w)


def _write_video(path, frames=20, size=(48, 80), fps=10):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.zeros((size[0], size[1], 3), np.uint8)
            img[..., 0] = int(255 * i / (frames - 1))  # red rises with time
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_frames_writes_cav_mae_folders(tool, tmp_path, capsys):
    pytest.importorskip("avmae.data.video")
    from PIL import Image

    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "vid1.mp4")
    (videos / "broken.mp4").write_bytes(b"\x00\x01" * 50)
    out = tmp_path / "frames"
    assert (
        tool.main(["frames", str(videos), "--out", str(out), "--num-frames", "4", "--size", "32", "--no-progress"]) == 0
    )
    files = [out / f"frame_{i}" / "vid1.jpg" for i in range(4)]
    assert all(f.is_file() for f in files)
    reds = []
    for f in files:
        with Image.open(f) as im:
            assert im.size == (32, 32)
            reds.append(np.asarray(im)[..., 0].mean())
    assert reds == sorted(reds) and reds[-1] > reds[0] + 100  # evenly spaced in time, in order
    assert "broken.mp4" in capsys.readouterr().err


def test_shards_dispatch_and_clear_error(tool, tmp_path, monkeypatch, capsys):
    calls = {}
    fake = types.ModuleType("avmae.data.shards")

    def write_shards(manifest, out_dir, *, shard_size=1000, with_fbank=False, frontend=None, label_csv=None):
        calls.update(
            manifest=manifest,
            out_dir=out_dir,
            shard_size=shard_size,
            with_fbank=with_fbank,
            frontend=frontend,
            label_csv=label_csv,
        )
        return ["shard-000000.tar"]

    fake.write_shards = write_shards
    monkeypatch.setitem(sys.modules, "avmae.data.shards", fake)
    assert (
        tool.main(
            [
                "shards",
                "m.json",
                "--out",
                str(tmp_path),
                "--shard-size",
                "7",
                "--with-fbank",
                "--target-length",
                "64",
                "--norm",
                "esc50",
            ]
        )
        == 0
    )
    assert calls["shard_size"] == 7 and calls["with_fbank"] and calls["frontend"].target_length == 64
    assert calls["frontend"].std == pytest.approx(5.358466)
    printed = capsys.readouterr().out
    assert "PosixPath" not in printed and "1 shard(s)" in printed and "shard-000000.tar" in printed
    monkeypatch.setitem(sys.modules, "avmae.data.shards", None)  # not installed: import fails
    assert tool.main(["shards", "m.json", "--out", str(tmp_path)]) == 2
    assert "avmae.data.shards" in capsys.readouterr().err


def test_manifest_items_for_videos(tool, tmp_path):
    videos = tmp_path / "clips"
    videos.mkdir()
    _write_video(videos / "v1.mp4", frames=4)
    out = tmp_path / "av.json"
    assert tool.main(["manifest", str(videos), "-o", str(out), "--check", "none", "--no-progress"]) == 0
    assert json.loads(out.read_text())["data"] == [
        {"wav": "clips/v1.mp4", "labels": "", "video_id": "v1", "video": "clips/v1.mp4"}
    ]
    assert (
        tool.main(
            [
                "manifest",
                str(videos),
                "-o",
                str(out),
                "--check",
                "none",
                "--frames",
                str(tmp_path / "frames"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["data"] == [
        {"wav": "clips/v1.mp4", "labels": "", "video_id": "v1", "video_path": "frames"}
    ]


def test_weights_of_an_audio_visual_manifest(tmp_path):
    pytest.importorskip("avmae.data.av_dataset")
    manifest = tmp_path / "av.json"
    manifest.write_text(
        json.dumps({"data": [{"video": "a.mp4", "labels": "/m/x"}, {"video": "b.mp4", "labels": "/m/x,/m/y"}]})
    )
    w = balanced_weights(manifest, ["/m/x", "/m/y"])
    np.testing.assert_allclose(w.numpy(), [1000 / 2.01, 1000 / 2.01 + 1000 / 1.01])

"""Embedding extraction: the tool's numbers are the model's own forward on the same input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import avmae
from avmae.checkpoint import to_audiomae_official
from avmae.data import NORM_STATS, AudioFrontend, load_audio, save_audio, synthesize_clip
from avmae.extract import EmbeddingExtractor, extract, find_media, output_names
from avmae.hub import frontend_for, load_pretrained

T = 64  # 0.64 s windows
MEAN, STD = NORM_STATS["esc50"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer_config(task, **model_params):
    """The shape of the run config the trainer stores in the checkpoint metadata."""
    return {
        "task": task,
        "model": {"name": "", "params": model_params},
        "data": {
            "target_length": T,
            "num_mel_bins": 128,
            "sample_rate": 16000,
            "norm": "esc50",
            "mean": None,
            "std": None,
        },
        "masking": {"mask_ratio": 0.8, "mask_t_prob": 0.0, "mask_f_prob": 0.0},
    }


def _randomise(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    g = torch.Generator().manual_seed(0)
    save_audio(
        root / "short.wav", synthesize_clip("tone", g, seconds=0.4).unsqueeze(0), 16000
    )  # 38 frames: one padded window
    save_audio(
        root / "sub" / "long.flac", synthesize_clip("chirp", g, seconds=1.5).unsqueeze(0), 16000
    )  # 148 frames: 3 windows
    (root / "sub" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 4)
    (root / "empty.mp3").write_bytes(b"")
    (root / "notes.txt").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt")
    mae = _randomise(avmae.create_model("audiomae_tiny", target_length=T))
    cfg = _trainer_config("pretrain")
    cfg["model"]["name"] = "audiomae_tiny"
    step = root / "run" / "checkpoints" / "step_0000010"
    avmae.save_checkpoint(mae, step / "model.safetensors", model_name="audiomae_tiny", config=cfg)
    clf = _randomise(avmae.create_model("audiomae_tiny_cls", target_length=T, num_classes=3))
    cfg = _trainer_config("finetune")
    cfg["model"]["name"] = "audiomae_tiny_cls"
    avmae.save_checkpoint(clf, root / "clf.safetensors", model_name="audiomae_tiny_cls", config=cfg)
    torch.save({"model": to_audiomae_official(mae), "epoch": 3}, root / "official.pth")
    return {
        "mae": mae,
        "clf": clf,
        "run": root / "run",
        "clf_path": root / "clf.safetensors",
        "official": root / "official.pth",
    }


def _frontend():
    return AudioFrontend(target_length=T, mean=MEAN, std=STD)


def _mae_pooled(model, x, contextual_from=None):
    with torch.no_grad():
        return model.forward_features({"audio": x}, contextual_from=contextual_from)[:, 1:].mean(1)


def _manual_windows(wave, hop=T):
    """The long clip's windows, cut by hand: un-normalised fbank, zero-padded, normalised.
    -> (windows [n, 1, T, F], real frames per window [n])."""
    fb = AudioFrontend(target_length=None).compute_fbank(wave)
    n = fb.shape[0]
    starts = list(range(0, n - T + hop, hop)) if n > T else [0]
    starts = [s for s in starts if s < n]
    real = torch.tensor([min(T, n - s) for s in starts], dtype=torch.float32)
    fb = F.pad(fb, (0, 0, 0, max(0, starts[-1] + T - n)))
    return ((torch.stack([fb[s : s + T] for s in starts]) - MEAN) / (2 * STD)).unsqueeze(1), real


def test_load_pretrained_reads_the_trainer_metadata(checkpoints):
    model, rep = load_pretrained(checkpoints["run"])  # a run folder: its newest checkpoint
    assert rep.model_name == "audiomae_tiny" and rep.source == "metadata"
    assert rep.model_params == {"target_length": T}  # the create_model call that built the saved model
    assert rep.path.endswith("step_0000010/model.safetensors")
    for a, b in zip(model.state_dict().values(), checkpoints["mae"].state_dict().values()):
        assert torch.equal(a, b)
    fe = frontend_for(model, rep.config)
    assert (fe.mean, fe.std, fe.target_length) == (MEAN, STD, T)
    clf, rep = load_pretrained(checkpoints["clf_path"])
    assert rep.model_params["num_classes"] == 3 and not model.training


def test_short_clip_equals_the_model_forward(media, checkpoints):
    """A 38-frame clip runs at 48 frames (its length rounded up to 16), not padded to the window;
    with variable_length=False it is the training frontend's input, padded to T frames."""
    model = checkpoints["mae"]
    wave = load_audio(media / "short.wav")
    ex = EmbeddingExtractor(model, _frontend(), patches=True, contextual_from=0)
    got = ex(wave)
    x = AudioFrontend(target_length=48, mean=MEAN, std=STD)(wave).unsqueeze(0)
    torch.testing.assert_close(torch.from_numpy(got["embedding"]), _mae_pooled(model, x)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(got["contextual"]), _mae_pooled(model, x, 0)[0], atol=1e-5, rtol=1e-5)
    assert got["patches"].shape == (1, 3 * 8, 64) and ex.settings()["short_clips"].startswith("own length")
    padded = EmbeddingExtractor(model, _frontend(), variable_length=False)(wave)
    x = _frontend()(wave).unsqueeze(0)  # the training frontend pads to T frames
    torch.testing.assert_close(torch.from_numpy(padded["embedding"]), _mae_pooled(model, x)[0], atol=1e-5, rtol=1e-5)


def _weighted(per, real):
    return (per * real[:, None]).sum(0) / real.sum()


def test_long_clip_is_the_frame_weighted_mean_over_windows(media, checkpoints):
    model = checkpoints["mae"]
    wave = load_audio(media / "sub" / "long.flac")
    wins, real = _manual_windows(wave)
    assert real.tolist() == [64, 64, 20]  # 148 frames: the last window is zero-padded
    ex = EmbeddingExtractor(model, _frontend(), keep_windows=True)
    got = ex(wave)
    per = _mae_pooled(model, wins)
    torch.testing.assert_close(torch.from_numpy(got["window_embedding"]), per, atol=1e-5, rtol=1e-5)
    assert got["window_frames"].tolist() == [64, 64, 20]
    torch.testing.assert_close(torch.from_numpy(got["embedding"]), _weighted(per, real), atol=1e-5, rtol=1e-5)
    # half-window hop: windows at 0, 32, 64, 96 (the last one reaches the end)
    ex = EmbeddingExtractor(model, _frontend(), hop=T // 2, keep_windows=True)
    got = ex(wave)
    wins, real = _manual_windows(wave, hop=T // 2)
    assert got["window_frames"].tolist() == real.tolist() == [64, 64, 64, 52]
    torch.testing.assert_close(
        torch.from_numpy(got["embedding"]), _weighted(_mae_pooled(model, wins), real), atol=1e-5, rtol=1e-5
    )


def test_classifier_features_are_its_forward_features(media, checkpoints):
    clf = checkpoints["clf"]
    wave = load_audio(media / "short.wav")
    got = EmbeddingExtractor(clf, _frontend(), patches=True)(wave)
    with torch.no_grad():
        want = clf.forward_features({"audio": AudioFrontend(target_length=48, mean=MEAN, std=STD)(wave).unsqueeze(0)})[
            0
        ]
    torch.testing.assert_close(torch.from_numpy(got["embedding"]), want, atol=1e-5, rtol=1e-5)
    assert got["patches"].shape == (1, 3 * 8, 64)
    with pytest.raises(ValueError, match="contextual"):
        EmbeddingExtractor(clf, _frontend(), contextual_from=0)


def test_batches_do_not_change_results_and_unreadable_files_are_skipped(media, checkpoints):
    paths, root = find_media(media)
    assert [p.name for p in paths] == ["empty.mp3", "short.wav", "broken.wav", "long.flac"]
    assert output_names(paths, root) == ["empty", "short", "sub/broken", "sub/long"]
    ex = EmbeddingExtractor(checkpoints["mae"], _frontend(), keep_windows=True)
    one = list(extract(paths, ex, batch_size=1))
    many = list(extract(paths, ex, batch_size=16))
    assert [r.path for r in one] == [str(p) for p in paths]
    assert [r.error is not None for r in one] == [True, False, True, False]
    assert "empty.mp3" in one[0].error and "broken.wav" in one[2].error
    assert [r.num_windows for r in many] == [0, 1, 0, 3]
    for a, b in zip(one, many):
        if a.arrays is not None:
            for k in a.arrays:
                np.testing.assert_allclose(a.arrays[k], b.arrays[k], atol=1e-5)


def test_tool_writes_npz_npy_and_safetensors(media, checkpoints, tmp_path, capsys, load_tool):
    tool = load_tool("extract")
    model = checkpoints["mae"]
    long_emb = EmbeddingExtractor(model, _frontend())(load_audio(media / "sub" / "long.flac"))["embedding"]

    out = tmp_path / "emb.npz"
    assert (
        tool.main(
            [
                str(media),
                "-c",
                str(checkpoints["run"]),
                "-o",
                str(out),
                "--keep-windows",
                "--contextual",
                "--no-progress",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "skipped 2 unreadable file(s)" in err and "broken.wav" in err
    z = np.load(out)
    assert [Path(f).name for f in z["files"]] == ["short.wav", "long.flac"]
    assert list(z["names"]) == ["short", "sub/long"]
    assert [Path(f).name for f in z["skipped"]] == ["empty.mp3", "broken.wav"]
    assert z["embedding"].shape == (2, 64) and z["contextual"].shape == (2, 64)
    assert list(z["window_offsets"]) == [0, 1, 4] and z["window_embedding"].shape == (4, 64)
    np.testing.assert_allclose(z["embedding"][1], long_emb, atol=1e-5)
    assert list(z["window_frames"]) == [38, 64, 64, 20] and z["window_frames"].dtype == np.int64
    np.testing.assert_allclose(
        (z["window_embedding"][1:4] * z["window_frames"][1:4, None]).sum(0) / 148, z["embedding"][1], atol=1e-6
    )
    meta = json.loads(str(z["meta"]))
    assert (
        meta["window_frames"] == T
        and meta["hop_frames"] == T
        and meta["mean"] == MEAN
        and meta["contextual_from"] == -1
    )

    folder = tmp_path / "npy"
    assert (
        tool.main(
            [
                str(media),
                "-c",
                str(checkpoints["run"]),
                "-o",
                str(folder),
                "--patches",
                "--no-progress",
                "--extensions",
                "flac,wav",
            ]
        )
        == 0
    )
    np.testing.assert_allclose(np.load(folder / "sub" / "long.npy"), long_emb, atol=1e-5)
    assert np.load(folder / "sub" / "long.patches.npy").shape == (3, model.modalities["audio"].num_tokens, 64)
    assert (folder / "files.tsv").read_text().splitlines()[0].startswith("short\t")
    assert (
        "broken.wav" in (folder / "skipped.tsv").read_text() and "empty.mp3" not in (folder / "skipped.tsv").read_text()
    )

    from safetensors import safe_open

    st = tmp_path / "emb.safetensors"
    assert (
        tool.main(
            [
                str(media / "sub" / "long.flac"),
                "-c",
                str(checkpoints["official"]),
                "-o",
                str(st),
                "--no-progress",
                "--norm",
                "esc50",
            ]
        )
        == 0
    )
    with safe_open(str(st), "np") as f:
        np.testing.assert_allclose(
            f.get_tensor("embedding")[0], long_emb, atol=1e-5
        )  # the official file holds the same weights
        assert json.loads(f.metadata()["files"]) == [str(media / "sub" / "long.flac")]


def test_manifests_audio_and_audio_visual(media, tmp_path):
    audio = tmp_path / "audio.json"
    audio.write_text(json.dumps({"data": [{"wav": str(media / "short.wav"), "labels": ""}, {"wav": "rel/x.flac"}]}))
    paths, root = find_media(audio)
    assert paths == [media / "short.wav", tmp_path / "rel" / "x.flac"] and root == tmp_path.resolve()
    pytest.importorskip("avmae.data.av_dataset")
    av = tmp_path / "av.jsonl"
    av.write_text(json.dumps({"video": "clips/a.mp4", "labels": "/m/x"}) + "\n")
    assert find_media(av)[0] == [tmp_path.resolve() / "clips" / "a.mp4"]


def test_reduced_precision_is_close(media, checkpoints):
    wave = load_audio(media / "sub" / "long.flac")
    full = EmbeddingExtractor(checkpoints["mae"], _frontend())(wave)["embedding"]
    half = EmbeddingExtractor(checkpoints["mae"], _frontend(), precision="bf16")(wave)["embedding"]
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="precision"):
        EmbeddingExtractor(checkpoints["mae"], _frontend(), precision="int8")


def test_decoding_in_worker_processes(media, checkpoints):
    paths = [media / "short.wav", media / "sub" / "broken.wav", media / "sub" / "long.flac"]
    ex = EmbeddingExtractor(checkpoints["mae"], _frontend())
    inline = list(extract(paths, ex, batch_size=4))
    workers = list(extract(paths, ex, batch_size=4, num_workers=2))
    assert [r.error is None for r in workers] == [True, False, True]
    for a, b in zip(inline, workers):
        if a.arrays is not None:
            np.testing.assert_allclose(a.arrays["embedding"], b.arrays["embedding"], atol=1e-6)

"""BEATs released checkpoints: ``.pt`` files in the released layout (``cfg``, ``model``,
``label_dict``) with random weights, written by the plain-math reference
(tests/reference/official_beats.py), load with no model name and match it to 1e-5: features at
1,024 frames and at a clip's own length, the fine-tuned logits, and the fbank frontend."""

import json

import pytest
import torch
from reference.official_beats import (
    _bucket,
    beats_forward,
    beats_logits,
    beats_preprocess,
    make_beats_state_dict,
    write_beats_checkpoint,
)

from avmae import cli
from avmae.hub import frontend_for, load_pretrained
from avmae.models.beats import BEATS_STATS, relative_buckets

pytestmark = pytest.mark.usefixtures("one_thread")
HEADS, CONV, GROUPS = 4, 16, 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("beats")
    pre, ft = make_beats_state_dict(seed=0), make_beats_state_dict(num_classes=5, seed=1)
    kw = dict(heads=HEADS, conv_pos=CONV, conv_groups=GROUPS)
    return {
        "pretrain": (write_beats_checkpoint(pre, root / "BEATs_iter3.pt", **kw), pre),
        "finetune": (write_beats_checkpoint(ft, root / "BEATs_iter3_plus_AS2M_finetuned.pt", **kw), ft),
    }


@pytest.fixture(scope="module")
def waves():
    return torch.randn(2, 16000 * 3, generator=torch.Generator().manual_seed(0)) * 0.1  # 298 frames


def test_buckets_are_the_released_ones():
    rel = torch.arange(2000)[None, :] - torch.arange(2000)[:, None]
    assert torch.equal(relative_buckets(2000, 320, 800), _bucket(rel, 320, 800))


def test_the_frontend_is_their_preprocess(files, waves):
    model, _ = load_pretrained(files["pretrain"][0])
    fe = frontend_for(model)
    assert (fe.style, fe.mean, fe.std, fe.target_length) == ("beats", *BEATS_STATS, None)
    ours = torch.stack([fe(w[None])[0] for w in waves])
    torch.testing.assert_close(ours, beats_preprocess(waves), atol=1e-5, rtol=0)


@pytest.mark.parametrize("frames", [1024, 298])
def test_features_equal_the_reference(files, waves, frames):
    path, sd = files["pretrain"]
    model, report = load_pretrained(path)
    assert report.model_name == "beats_base" and report.format == "beats" and not report.missing
    assert report.ignored == ["encoder.layers.1.self_attn.relative_attention_bias.weight"]  # the shared copy
    fb = torch.randn(2, frames, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.forward_features({"audio": fb[:, None]})
    assert got.shape == (2, frames // 16 * 8, 64)
    torch.testing.assert_close(got.double(), beats_forward(sd, fb.double(), heads=HEADS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("frames", [1024, 160])
def test_fine_tuned_logits_equal_the_reference(files, frames):
    path, sd = files["finetune"]
    model, report = load_pretrained(path)
    assert report.model_name == "beats_base_cls" and model.head.out_features == 5
    fb = torch.randn(2, frames, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model({"audio": fb[:, None]})
    torch.testing.assert_close(got.double(), beats_logits(sd, fb.double(), heads=HEADS), atol=1e-5, rtol=0)


def test_extract_and_convert_a_beats_file(files, waves, tmp_path, capsys):
    import numpy as np

    from avmae.data import load_audio, save_audio

    save_audio(tmp_path / "clips" / "a.wav", waves[0:1], 16000)
    out = tmp_path / "emb.npz"
    assert cli.main(["extract", str(tmp_path / "clips"), "-c", str(files["pretrain"][0]), "-o", str(out)]) == 0
    z = np.load(out)
    model, _ = load_pretrained(files["pretrain"][0])
    # the clip's BEATs fbank (298 frames) cut to whole patches (288), as BEATs drops its last 10
    # frames (avmae's extraction pads other models' short clips to whole patches instead)
    fe = frontend_for(model)
    feats = fe.compute_fbank(load_audio(tmp_path / "clips" / "a.wav"))[:288]
    with torch.no_grad():
        ref = model.forward_features({"audio": fe.normalize(feats)[None, None]}).mean(1)[0]
    np.testing.assert_allclose(z["embedding"][0], ref.numpy(), atol=1e-5)
    assert json.loads(str(z["meta"]))["mean"] == BEATS_STATS[0]
    conv = tmp_path / "beats.safetensors"
    assert cli.main(["convert", str(files["finetune"][0]), "--out", str(conv)]) == 0
    capsys.readouterr()
    again, report = load_pretrained(conv)
    assert report.source == "metadata" and frontend_for(again, report.config).style == "beats"
    for to in ("timm", "official"):  # AudioMAE-style layouts cannot hold BEATs: refused, nothing written
        assert cli.main(["convert", str(files["pretrain"][0]), "--out", str(tmp_path / f"b-{to}.pth"), "--to", to]) == 2
        assert not (tmp_path / f"b-{to}.pth").exists()


def test_hear_and_knn_on_a_beats_file(files, tmp_path, capsys):
    from test_finetune import write_clips

    import avmae.hear as hear

    model = hear.load_model(str(files["pretrain"][0]))
    assert model.frontend.style == "beats" and model.frontend.mean == BEATS_STATS[0]
    audio = torch.randn(2, 24000, generator=torch.Generator().manual_seed(0)) * 0.1
    emb, stamps = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape[0] == 2 and emb.shape[-1] == 64 and emb.shape[:2] == stamps.shape and torch.isfinite(emb).all()
    train, evals, labels = write_clips(tmp_path / "clips", {"train": 3, "eval": 2}, seconds=0.64)
    out = tmp_path / "knn.json"
    argv = ["evaluate", "-c", str(files["pretrain"][0]), "--task", "knn", "--data", str(evals), "--train-data"]
    argv += [str(train), "--label-csv", str(labels), "--num-workers", "0", "--cpu", "-o", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    got = json.loads(out.read_text())
    assert got["num_train"] == 6 and got["metrics"]["num_items"] == 4

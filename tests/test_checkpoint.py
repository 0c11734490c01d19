"""Saving and loading: round trips, foreign layouts, untrusted files."""

import argparse
import os
import pickle

import pytest
import torch

import avmae
from avmae.checkpoint import CheckpointError, read_state_dict, to_audiomae_official

T = 64


def _mae(**kw):
    return avmae.create_model("audiomae_tiny", target_length=T, **kw).eval()


def test_safetensors_round_trip(tmp_path):
    a, b = _mae(), _mae()
    torch.manual_seed(1)
    b = _mae()
    path = avmae.save_checkpoint(a, tmp_path / "w.safetensors", model_name="audiomae_tiny", config={"x": 1})
    assert not list(tmp_path.glob("*.tmp"))
    rep = avmae.load_checkpoint(b, path)
    assert rep.format == "avmae" and not rep.missing and not rep.unexpected
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    _, meta = read_state_dict(path)
    assert meta["model"] == "audiomae_tiny" and '"x": 1' in meta["config"]


def test_official_layout_round_trip_with_namespace(tmp_path):
    """Our weights exported in the official layout, saved like the official code (with a pickled
    argparse.Namespace), load back under weights_only=True and give the same outputs."""
    a = _mae()
    sd = to_audiomae_official(a)
    assert "decoder_embed.weight" in sd and sd["pos_embed"].shape == (1, 1 + 32, 64)
    path = tmp_path / "checkpoint-20.pth"
    torch.save({"model": sd, "optimizer": {}, "epoch": 20, "args": argparse.Namespace(blr=2e-4, model="mae")}, path)
    b = _mae()
    rep = avmae.load_checkpoint(b, path)
    assert rep.format == "audiomae-pretrain"
    x = torch.randn(2, 1, T, 128)
    noise = {"audio": torch.rand(2, 32)}
    assert torch.allclose(a({"audio": x}, noise=noise).loss, b({"audio": x}, noise=noise).loss)


def test_pretrain_checkpoint_initialises_classifier(tmp_path):
    a = _mae()
    path = avmae.save_checkpoint(a, tmp_path / "pre.safetensors")
    clf = avmae.create_model("audiomae_tiny_cls", num_classes=3, target_length=T)
    rep = avmae.load_checkpoint(clf, path)
    assert any(k.startswith("decoder.") for k in rep.ignored)
    assert set(rep.reinitialized) >= {"head.weight", "fc_norm.weight"}
    assert torch.equal(clf.blocks[0].attn.qkv.weight, a.blocks[0].attn.qkv.weight)
    assert torch.equal(clf.modalities["audio"].patch_embed.proj.weight, a.modalities["audio"].patch_embed.proj.weight)
    # the same through the official layout
    off = tmp_path / "official.pth"
    torch.save({"model": to_audiomae_official(a)}, off)
    clf2 = avmae.create_model("audiomae_tiny_cls", num_classes=3, target_length=T)
    rep2 = avmae.load_checkpoint(clf2, off)
    assert rep2.format == "audiomae-pretrain" and "norm.weight" in rep2.ignored
    assert torch.equal(clf2.blocks[1].mlp.fc2.weight, a.blocks[1].mlp.fc2.weight)


def test_other_input_length_resizes_the_audio_tables(tmp_path):
    path = avmae.save_checkpoint(_mae(), tmp_path / "w.safetensors")
    longer = avmae.create_model("audiomae_tiny", target_length=128)
    rep = avmae.load_checkpoint(longer, path)
    assert {"modalities.audio.pos_embed", "decoder.pos_embed.audio"} <= set(rep.resized)


def test_head_shape_mismatch(tmp_path):
    clf = avmae.create_model("audiomae_tiny_cls", num_classes=3, target_length=T)
    path = avmae.save_checkpoint(clf, tmp_path / "ft.safetensors")
    other = avmae.create_model("audiomae_tiny_cls", num_classes=5, target_length=T)
    with pytest.raises(CheckpointError, match="head"):
        avmae.load_checkpoint(other, path)
    rep = avmae.load_checkpoint(other, path, reset_head=True)
    assert "head.weight" in rep.reinitialized


def test_strict_reports_missing_keys(tmp_path):
    sd = {k: v for k, v in _mae().state_dict().items() if not k.startswith("blocks.1.")}
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing.*blocks.1"):
        avmae.load_checkpoint(_mae(), tmp_path / "partial.pt")
    rep = avmae.load_checkpoint(_mae(), tmp_path / "partial.pt", strict=False)
    assert "blocks.1.attn.qkv.weight" in rep.missing


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_code_payload_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"model": {"w": torch.ones(1)}, "x": _Payload()}, f)
    with pytest.raises(CheckpointError, match="refusing to unpickle.*system"):
        avmae.load_checkpoint(_mae(), path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError):
        avmae.load_checkpoint(_mae(), raw)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_bad_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pth"):
        avmae.load_checkpoint(_mae(), path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        avmae.load_checkpoint(_mae(), tmp_path / "missing.safetensors")
    st = tmp_path / "bad.safetensors"
    st.write_bytes(content + b"x")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        avmae.load_checkpoint(_mae(), st)


def test_unknown_layout(tmp_path):
    torch.save({"foo.weight": torch.ones(2)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        avmae.load_checkpoint(_mae(), tmp_path / "x.pt")


def test_av_pretraining_checkpoint_initialises_av_classifier(tmp_path):
    pre = avmae.create_model("cav_mae_tiny")
    path = avmae.save_checkpoint(pre, tmp_path / "cav.safetensors")
    clf = avmae.create_model("cav_mae_tiny_ft", num_classes=5)
    rep = avmae.load_checkpoint(clf, path)
    assert not rep.missing and not rep.unexpected
    assert any(k.startswith("decoder.") for k in rep.ignored)
    assert {"mlp_head.1.weight", "mlp_head.1.bias"} <= set(rep.reinitialized)
    own = clf.state_dict()
    shared = [k for k in pre.state_dict() if k in own and not k.startswith("mlp_head.")]
    assert shared and all(torch.equal(own[k], pre.state_dict()[k]) for k in shared)

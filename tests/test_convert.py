"""Checkpoint conversion: official AudioMAE <-> avmae is lossless, avmae -> timm ViT computes the same."""

import json

import pytest
import torch
from conftest import import_tool
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

import avmae
from avmae.checkpoint import read_state_dict, to_audiomae_official
from avmae.hub import describe_checkpoint, load_pretrained

T = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tool():
    return import_tool("convert_checkpoint")


def _randomised(name, **kw):
    model = avmae.create_model(name, target_length=T, **kw)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _official(model, path):
    """Save like the official code: {'model': state_dict, ...} in a .pth."""
    torch.save({"model": to_audiomae_official(model), "epoch": 20}, path)
    return path


@pytest.mark.parametrize(
    "name,kw",
    [("audiomae_tiny", {}), ("audiomae_tiny", {"decoder": "global"}), ("audiomae_tiny_cls", {"num_classes": 7})],
)
def test_official_to_avmae_to_official_is_identity(tool, tmp_path, name, kw):
    src = _official(_randomised(name, **kw), tmp_path / "official.pth")
    mid = tmp_path / "converted.safetensors"
    assert tool.main([str(src), "--out", str(mid)]) == 0
    assert tool.main([str(mid), "--out", str(tmp_path / "back.pth"), "--to", "official"]) == 0
    a, _ = read_state_dict(src)
    b, _ = read_state_dict(tmp_path / "back.pth")
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the converted file describes itself
    info = describe_checkpoint(mid)
    assert info.model_name == name and info.source == "metadata"


def test_official_pretraining_file_gets_its_own_decoder(tmp_path):
    """The released pretrained.pth holds the shifted-window decoder (decoder_mode=1): building the
    global decoder for it, as the official demo notebook did, loads half the blocks and shows noise."""
    for decoder, cls in (("swin", "SwinDecoder"), ("global", "GlobalDecoder")):
        ref = _randomised("audiomae_tiny", decoder=decoder)
        model, rep = load_pretrained(_official(ref, tmp_path / f"{decoder}.pth"))
        assert type(model.decoder).__name__ == cls and rep.format == "audiomae-pretrain"
        assert rep.model_params["target_length"] == T and not rep.missing
        x, noise = torch.randn(1, 1, T, 128), {"audio": torch.rand(1, 32)}
        with torch.no_grad():
            assert torch.equal(
                model({"audio": x}, noise=noise).pred["audio"], ref({"audio": x}, noise=noise).pred["audio"]
            )


def _timm_from(path):
    kwargs = json.loads(path.with_suffix(".json").read_text())
    kwargs["img_size"] = tuple(kwargs["img_size"])
    vit = VisionTransformer(**kwargs).eval()
    vit.load_state_dict(load_file(str(path)), strict=True)
    return vit, kwargs


def test_timm_export_gives_the_same_pooled_features(tool, tmp_path):
    x = torch.randn(3, 1, T, 128)
    # a pretraining model: final norm, mean over patch tokens
    mae = _randomised("audiomae_tiny")
    src = avmae.save_checkpoint(mae, tmp_path / "mae.safetensors", model_name="audiomae_tiny")
    assert tool.main([str(src), "--out", str(tmp_path / "vit_mae.safetensors"), "--to", "timm"]) == 0
    vit, kw = _timm_from(tmp_path / "vit_mae.safetensors")
    assert kw["global_pool"] == "avg" and kw["fc_norm"] is False and kw["num_classes"] == 0
    assert vit.pos_embed.shape == (1, 1 + 32, 64)  # timm's table includes the cls row
    with torch.no_grad():
        ours = mae.forward_features({"audio": x})[:, 1:].mean(1)
        theirs = vit.forward_head(vit.forward_features(x), pre_logits=True)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    # a classifier: mean pool, fc_norm, head
    clf = _randomised("audiomae_tiny_cls", num_classes=5)
    src = avmae.save_checkpoint(clf, tmp_path / "clf.safetensors", model_name="audiomae_tiny_cls")
    assert tool.main([str(src), "--out", str(tmp_path / "vit_clf.safetensors"), "--to", "timm"]) == 0
    vit, kw = _timm_from(tmp_path / "vit_clf.safetensors")
    assert kw["fc_norm"] is True and kw["num_classes"] == 5
    with torch.no_grad():
        torch.testing.assert_close(
            vit.forward_head(vit.forward_features(x), pre_logits=True),
            clf.forward_features({"audio": x}),
            atol=1e-5,
            rtol=1e-5,
        )
        torch.testing.assert_close(vit(x), clf({"audio": x}), atol=1e-5, rtol=1e-5)


def test_timm_encoder_imports_and_extracts_like_the_original(tool, tmp_path):
    mae = _randomised("audiomae_tiny")
    src = avmae.save_checkpoint(mae, tmp_path / "mae.safetensors", model_name="audiomae_tiny")
    assert tool.main([str(src), "--out", str(tmp_path / "vit.pth"), "--to", "timm"]) == 0
    # a timm encoder alone (a hub port): imported into the pretraining model, decoder left fresh
    model, rep = load_pretrained(tmp_path / "vit.pth")
    assert rep.format == "timm-vit" and not rep.missing and any(k.startswith("decoder.") for k in rep.reinitialized)
    x = torch.randn(2, 1, T, 128)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features({"audio": x}), mae.forward_features({"audio": x}))
    out = tmp_path / "imported.safetensors"
    assert tool.main([str(tmp_path / "vit.pth"), "--out", str(out)]) == 0
    assert describe_checkpoint(out).model_params["target_length"] == T


def test_overrides_and_refusals(tool, tmp_path, capsys):
    clf = _randomised("audiomae_tiny_cls", num_classes=2)
    src = _official(clf, tmp_path / "ft.pth")
    # the same weights built for 2x longer inputs: the positional table continued past its rows
    out = tmp_path / "long.safetensors"
    assert tool.main([str(src), "--out", str(out), "--set", "target_length=128"]) == 0
    model, rep = load_pretrained(out)
    assert model.modality.input_shape == (1, 128, 128) and rep.model_params["num_classes"] == 2
    ast = avmae.save_checkpoint(
        avmae.create_model("ast_tiny", num_classes=2, target_length=T),
        tmp_path / "ast.safetensors",
        model_name="ast_tiny",
        config={"model": {"name": "ast_tiny", "params": {"target_length": T}}},
    )
    assert tool.main([str(ast), "--out", str(tmp_path / "ast_vit.safetensors"), "--to", "timm"]) == 2
    assert "no plain timm ViT" in capsys.readouterr().err


def test_files_without_a_model_name(tmp_path, monkeypatch):
    from avmae.checkpoint import CheckpointError
    from avmae.hub import SPEC_DETECTORS, register_spec_detector

    mae = _randomised("audiomae_tiny")
    path = tmp_path / "bare.pth"
    torch.save(mae.state_dict(), path)  # this project's keys, no metadata, no config.yaml
    with pytest.raises(CheckpointError, match="model_name="):
        load_pretrained(path)
    model, rep = load_pretrained(path, model_name="audiomae_tiny", target_length=T)
    assert rep.source == "argument" and torch.equal(model.norm.weight, mae.norm.weight)
    register_spec_detector(
        "tiny-bare", lambda sd: ("audiomae_tiny", {"target_length": T}) if "decoder.embed.weight" in sd else None
    )
    try:
        model, rep = load_pretrained(path)
    finally:
        SPEC_DETECTORS.remove("tiny-bare")
    assert rep.model_name == "audiomae_tiny" and rep.source == "detected"

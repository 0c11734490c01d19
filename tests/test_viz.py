"""Reconstruction plots: the arrays are what the model computed, the figure says what it shows."""

import numpy as np
import pytest
import torch

import avmae
from avmae.data import save_audio, synthesize_clip
from avmae.viz import mask_noise, plot_arrays, plot_reconstruction, reconstruct

T = 64

pytestmark = pytest.mark.usefixtures("one_thread")


def _mae(**kw):
    m = avmae.create_model("audiomae_tiny", target_length=T, **kw).eval()
    with torch.no_grad():  # a non-trivial decoder output
        for p in m.decoder.pred.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_reconstruct_restores_patch_statistics_under_norm_pix():
    model = _mae()
    assert model.norm_pix_loss
    x = torch.randn(T, 128) * 0.5 + 0.3
    noise = mask_noise(model, seed=3)
    rec = reconstruct(model, x, noise=noise)

    with torch.no_grad():
        out = model({"audio": x[None, None]}, noise=noise)
    mod = model.modalities["audio"]
    target = mod.patchify(x[None, None])
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)  # unbiased, as the loss
    expected = mod.unpatchify(out.pred["audio"] * torch.sqrt(var + 1e-6) + mean)[0, 0].detach().numpy()
    np.testing.assert_allclose(rec["reconstruction"], expected, rtol=1e-5, atol=1e-5)

    pix = rec["mask"].astype(bool)
    assert pix.shape == (T, 128)
    np.testing.assert_array_equal(
        pix, mod.unpatchify(out.mask["audio"][..., None].expand(-1, -1, 256))[0, 0].bool().numpy()
    )
    np.testing.assert_array_equal(rec["pasted"][~pix], x.numpy()[~pix])  # visible: the input itself
    np.testing.assert_allclose(rec["pasted"][pix], expected[pix], rtol=1e-5, atol=1e-5)
    assert np.isnan(rec["masked"][pix]).all() and not np.isnan(rec["masked"][~pix]).any()
    L = mod.num_tokens
    assert float(rec["mask_ratio"]) == pytest.approx(1 - int(L * 0.2) / L)
    assert float(rec["loss"]) == pytest.approx(float(out.loss), rel=1e-6)
    assert bool(rec["norm_pix"])


def test_reconstruct_without_norm_pix_shows_raw_predictions():
    model = _mae(norm_pix_loss=False)
    x = torch.randn(1, T, 128)
    noise = mask_noise(model, seed=0)
    rec = reconstruct(model, x, noise=noise, mask_ratio=0.5)
    with torch.no_grad():
        out = model({"audio": x[None]}, noise=noise, mask_ratio=0.5)
    raw = model.modalities["audio"].unpatchify(out.pred["audio"])[0, 0].detach().numpy()
    np.testing.assert_allclose(rec["reconstruction"], raw, atol=1e-6)
    assert float(rec["mask_ratio"]) == pytest.approx(0.5)
    assert not bool(rec["norm_pix"])


def test_seed_fixes_the_mask():
    model = _mae()
    x = torch.randn(T, 128)
    a, b, c = (reconstruct(model, x, seed=s)["token_mask"] for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_figure_has_four_panels_axes_in_seconds_and_says_what_it_shows(tmp_path):
    model = _mae()
    path = tmp_path / "r.png"
    fig = plot_reconstruction(model, torch.randn(T, 128), seed=0, path=path, title="clip.wav")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4
    assert any("normalised log-mel" in ax.get_ylabel() for ax in fig.axes)  # the colour bar
    for ax in panels:
        assert ax.get_xlabel() == "time (s)"
        assert ax.get_xlim() == pytest.approx((0.0, T * 0.01))
        assert ax.get_ylim() == pytest.approx((0.0, 128.0))
    assert panels[0].get_ylabel() == "mel bin"
    text = fig.get_suptitle()
    assert "clip.wav" in text and "mask ratio 0.81" in text and "loss" in text
    assert "mean/std restored" in text


def test_classifier_is_refused():
    clf = avmae.create_model("audiomae_tiny_cls", target_length=T, num_classes=3)
    with pytest.raises(TypeError, match="decoder"):
        reconstruct(clf, torch.randn(T, 128))


def test_audio_visual_model_draws_a_row_per_modality():
    model = avmae.create_model("avmae_tiny").eval()
    inputs = {"audio": torch.randn(1, T, 128), "video": torch.randn(4, 3, 64, 64)}
    rec = reconstruct(model, inputs, seed=0)
    assert rec["video/input"].shape == (4, 3, 64, 64) and rec["audio/input"].shape == (T, 128)
    mask = rec["video/mask"].astype(bool)
    np.testing.assert_array_equal(rec["video/pasted"][~mask], inputs["video"].numpy()[~mask])
    fig = plot_arrays(rec)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 8
    assert "video: mask ratio" in fig.get_suptitle()


def test_visualize_tool(tmp_path, capsys, load_tool):
    model = _mae(mask_ratio=0.5)  # as the trainer builds it from masking.mask_ratio
    ckpt = avmae.save_checkpoint(
        model,
        tmp_path / "ckpt" / "model.safetensors",
        model_name="audiomae_tiny",
        config={
            "task": "pretrain",
            "model": {"name": "audiomae_tiny", "params": {}},
            "data": {"target_length": T, "num_mel_bins": 128, "norm": "esc50"},
            "masking": {"mask_ratio": 0.5},
        },
    )
    wav = save_audio(
        tmp_path / "clip.wav",
        synthesize_clip("chirp", torch.Generator().manual_seed(0), seconds=1.0).unsqueeze(0),
        16000,
    )
    out = tmp_path / "fig" / "recon.png"
    tool = load_tool("visualize")
    assert tool.main([str(wav), "--checkpoint", str(ckpt.parent), "--out", str(out), "--seed", "4"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "audio mask ratio 0.50" in capsys.readouterr().out  # the saved model's mask_ratio
    # a classifier checkpoint is refused with a clear message
    clf = avmae.save_checkpoint(
        avmae.create_model("audiomae_tiny_cls", target_length=T, num_classes=2),
        tmp_path / "clf.safetensors",
        model_name="audiomae_tiny_cls",
    )
    assert tool.main([str(wav), "-c", str(clf), "-o", str(tmp_path / "x.png")]) == 2
    assert "pretraining checkpoint" in capsys.readouterr().err


def test_visualize_tool_on_an_audio_visual_model(tmp_path, load_tool):
    av_demo = pytest.importorskip("avmae.data.av_demo")
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(8, 64, 64, 3, generator=g) * 255).to(torch.uint8)
    clip = av_demo.write_av_clip(tmp_path / "clip.mp4", frames, synthesize_clip("tone", g, seconds=0.8), fps=10)
    ckpt = avmae.save_checkpoint(
        avmae.create_model("avmae_tiny"),
        tmp_path / "av.safetensors",
        model_name="avmae_tiny",
        config={"model": {"name": "avmae_tiny", "params": {}}},
    )
    out = tmp_path / "av.png"
    assert load_tool("visualize").main([str(clip), "-c", str(ckpt), "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000


def test_short_clip_is_reconstructed_at_its_own_length(tmp_path, capsys, load_tool):
    from avmae.viz import reconstruction_length

    model = avmae.create_model("audiomae_tiny", target_length=1024)
    assert [reconstruction_length(model, f) for f in (30, 98, 1000, 3000)] == [
        32,
        128,
        1024,
        1024,
    ]  # whole 4-row windows
    assert reconstruction_length(avmae.create_model("audiomae_tiny", target_length=1024, decoder="global"), 98) == 112
    ckpt = avmae.save_checkpoint(_mae(), tmp_path / "model.safetensors", model_name="audiomae_tiny")
    wav = save_audio(
        tmp_path / "clip.wav",
        synthesize_clip("tone", torch.Generator().manual_seed(0), seconds=0.3).unsqueeze(0),
        16000,
    )
    assert load_tool("visualize").main([str(wav), "-c", str(ckpt), "-o", str(tmp_path / "r.png")]) == 0
    assert "reconstructed at 32 frames" in capsys.readouterr().err

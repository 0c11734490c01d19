"""CAV-MAE: release-layout checkpoints load strictly and the model equals the plain-math oracle
of the release's forward (tests/reference/official_cav_mae.py) on the same weights and noise."""

import pytest
import torch

import avmae
from avmae.checkpoint import CheckpointError, convert_state_dict
from avmae.layers.pos_embed import sincos_2d
from tests.reference.official_cav_mae import (
    make_official_cav_mae_state_dict,
    official_cav_mae_forward,
    official_cav_mae_ft_forward,
    official_sincos_2d,
)

TINY = dict(
    embed_dim=64,
    modality_specific_depth=1,
    total_depth=2,
    decoder_embed_dim=32,
    decoder_depth=2,
    audio_length=64,
    img_size=64,
)
TINY_HEADS = dict(num_heads=4, decoder_num_heads=4)
RTOL = 1e-4


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).abs().max() / ref.abs().max().clamp(min=1e-12)).item()


def _save(sd, tmp_path, name="audio_model.25.pth"):
    path = tmp_path / name
    torch.save(sd, path)  # the release saves the DataParallel state dict as is
    return path


def _inputs(B, T, img, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, 1, T, 128, generator=g)
    v = torch.randn(B, 1, 3, img, img, generator=g)
    noise = {"audio": torch.rand(B, T * 128 // 256, generator=g), "video": torch.rand(B, (img // 16) ** 2, generator=g)}
    return a, v, noise


def _compare_pretrain(model, sd, a, v, noise, heads, **kw):
    with torch.no_grad():
        out = model({"audio": a, "video": v}, noise=noise)
    ref = official_cav_mae_forward(
        sd, a[:, 0].double(), v[:, 0].double(), noise_a=noise["audio"], noise_v=noise["video"], **heads, **kw
    )
    assert torch.equal(out.mask["audio"], ref["mask_a"].float())
    assert torch.equal(out.mask["video"], ref["mask_v"].float())
    errs = {
        "pred_a": rel_err(out.pred["audio"], ref["pred_a"]),
        "pred_v": rel_err(out.pred["video"], ref["pred_v"]),
        "mae_a": rel_err(out.losses["mae_audio"], ref["loss_mae_a"]),
        "mae_v": rel_err(out.losses["mae_video"], ref["loss_mae_v"]),
        "loss_c": rel_err(out.losses["contrastive"] * kw.get("contrast_loss_weight", 0.01), ref["loss_c"]),
        "loss": rel_err(out.loss, ref["loss"]),
    }
    assert max(errs.values()) < RTOL, errs
    assert out.extras["contrastive_acc"].item() == pytest.approx(ref["c_acc"].item())
    return errs


@pytest.mark.parametrize(
    "options",
    [
        dict(norm_pix_loss=True),
        dict(norm_pix_loss=False, bidirect_contrast=True),
        dict(norm_pix_loss=True, mask_ratio_a=0.5, mask_ratio_v=0.9, contrast_loss_weight=0.1, mae_loss_weight=3.0),
    ],
)
def test_tiny_release_checkpoint_matches_oracle(tmp_path, options):
    sd = make_official_cav_mae_state_dict(**TINY, seed=1)
    assert all(k.startswith("module.") for k in sd)
    model = avmae.create_model("cav_mae_tiny", **options).eval()
    rep = avmae.load_checkpoint(model, _save(sd, tmp_path))
    assert rep.format == "cav-mae" and not rep.missing and not rep.unexpected
    assert rep.loaded == len(model.state_dict())
    # only the release's never-used norms are left out: audio/video norms of modality and decoder blocks
    assert rep.ignored and all(k.split(".")[2] in ("norm1_a", "norm1_v", "norm2_a", "norm2_v") for k in rep.ignored)
    assert all(k.startswith(("blocks_a.", "blocks_v.", "decoder_blocks.")) for k in rep.ignored)
    a, v, noise = _inputs(6, 64, 64, seed=2)
    _compare_pretrain(model, sd, a, v, noise, TINY_HEADS, **options)


def test_full_width_shallow_release_checkpoint_matches_oracle(tmp_path):
    """The release's widths, heads and token counts (1024 x 128 audio: 8 x 64 = 512 tokens;
    224^2 frames: 196 tokens), with one block per stage to stay fast."""
    cfg = dict(modality_specific_depth=1, total_depth=2, decoder_depth=1)
    sd = make_official_cav_mae_state_dict(**cfg, seed=3)
    model = avmae.create_model("cav_mae_base", depth=2, modality_specific_depth=1, decoder_depth=1).eval()
    avmae.load_checkpoint(model, _save(sd, tmp_path))
    a, v, noise = _inputs(2, 1024, 224, seed=4)
    out_errs = _compare_pretrain(model, sd, a, v, noise, dict(num_heads=12, decoder_num_heads=16), norm_pix_loss=True)
    assert max(out_errs.values()) < RTOL


def test_full_size_layout_and_parameter_count_match_the_release():
    model = avmae.create_model("cav_mae_base")
    # the release's log: "Total parameter number is : 191.036 million", trainable 190.130; it also
    # holds 4 never-used LayerNorms in each of the 22 modality and 8 decoder blocks
    unused = 22 * 4 * 2 * 768 + 8 * 4 * 2 * 512
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total + unused, trainable + unused) == (191_036_160, 190_129_920)
    sd = make_official_cav_mae_state_dict(lazy=True)
    assert sum(v.numel() for v in sd.values()) == 191_036_160
    fmt, mapped, ignored, _ = convert_state_dict(sd, model)
    own = model.state_dict()
    assert fmt == "cav-mae" and set(mapped) == set(own) and len(ignored) == 30 * 4 * 2
    assert all(mapped[k].shape == own[k].shape for k in own)
    assert len(model.modality_blocks["audio"]) == 11 and len(model.blocks) == 1 and len(model.decoder.blocks) == 8


def test_fixed_tables_equal_the_release_formula():
    for D, grid_a, grid_v in [(768, (8, 64), (14, 14)), (512, (8, 64), (14, 14)), (64, (8, 4), (4, 4))]:
        assert torch.equal(sincos_2d(D, grid_a), official_sincos_2d(D, *grid_a)[0])
        assert torch.equal(sincos_2d(D, grid_v), official_sincos_2d(D, *grid_v)[0])
    model = avmae.create_model("cav_mae_tiny")
    assert torch.equal(model.modalities["audio"].pos_embed, official_sincos_2d(64, 8, 4))
    assert torch.equal(model.modalities["video"].pos_embed, official_sincos_2d(64, 4, 4))
    assert torch.equal(model.decoder.pos_embed["audio"], official_sincos_2d(32, 8, 4))
    assert not model.modalities["audio"].pos_embed.requires_grad


@pytest.mark.parametrize("mode", ["multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly"])
def test_finetuned_release_checkpoint_matches_oracle(tmp_path, mode):
    sd = make_official_cav_mae_state_dict(**TINY, finetune=True, label_dim=7, seed=5)
    clf = avmae.create_model("cav_mae_tiny_ft", num_classes=7).eval()
    rep = avmae.load_checkpoint(clf, _save(sd, tmp_path))
    assert rep.format == "cav-mae" and not rep.reinitialized and not rep.missing
    a, v, _ = _inputs(3, 64, 64, seed=6)
    inputs = {"audio": a, "video": v}
    if mode in ("audioonly", "missingaudioonly"):
        inputs = {"audio": a}
    elif mode in ("videoonly", "missingvideoonly"):
        inputs = {"video": v}
    with torch.no_grad():
        logits = clf(inputs, mode=mode)
    ref = official_cav_mae_ft_forward(sd, a[:, 0].double(), v[:, 0].double(), mode, num_heads=4)
    assert logits.shape == (3, 7)
    assert rel_err(logits, ref) < RTOL


def test_pretrained_release_checkpoint_initialises_the_classifier(tmp_path):
    sd = make_official_cav_mae_state_dict(**TINY, seed=7)
    clf = avmae.create_model("cav_mae_tiny_ft", num_classes=5)
    rep = avmae.load_checkpoint(clf, _save(sd, tmp_path))
    assert set(rep.reinitialized) == {"mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.1.weight", "mlp_head.1.bias"}
    assert "module.decoder_embed.weight" not in rep.ignored and "decoder_embed.weight" in rep.ignored
    assert torch.equal(clf.blocks[0].modality_norm1["audio"].weight, sd["module.blocks_u.0.norm1_a.weight"])
    assert torch.equal(clf.modality_blocks["video"][0].attn.qkv.weight, sd["module.blocks_v.0.attn.qkv.weight"])
    assert torch.equal(clf.modalities["audio"].patch_embed.proj.weight, sd["module.patch_embed_a.proj.weight"])


def test_release_checkpoint_mismatches_fail_clearly(tmp_path):
    sd = make_official_cav_mae_state_dict(**TINY, seed=8)
    broken = dict(sd)
    del broken["module.blocks_u.0.norm1_v.weight"]
    with pytest.raises(CheckpointError, match="blocks.0.modality_norm1.video.weight"):
        avmae.load_checkpoint(avmae.create_model("cav_mae_tiny"), _save(broken, tmp_path, "missing.pth"))
    extra = dict(sd, **{"module.blocks_u.1.attn.qkv.weight": torch.zeros(192, 64)})
    with pytest.raises(CheckpointError, match="unexpected"):
        avmae.load_checkpoint(avmae.create_model("cav_mae_tiny"), _save(extra, tmp_path, "extra.pth"))
    with pytest.raises(CheckpointError, match="CAVMAE"):
        avmae.load_checkpoint(avmae.create_model("audiomae_tiny"), _save(sd, tmp_path))
    # another width: a shape error naming the tensor
    wide = make_official_cav_mae_state_dict(**{**TINY, "embed_dim": 128}, seed=8)
    with pytest.raises(CheckpointError, match="shape"):
        avmae.load_checkpoint(avmae.create_model("cav_mae_tiny"), _save(wide, tmp_path, "wide.pth"))

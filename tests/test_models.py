"""Decoders, the masked autoencoder and the classifier on tiny sizes."""

import pytest
import torch

import avmae
from avmae.layers import SwinBlock, shift_region_mask

T = 64  # 4 x 8 token grid keeps the tests fast


def _model(decoder, **kw):
    return avmae.create_model("audiomae_tiny", decoder=decoder, target_length=T, **kw)


@pytest.mark.parametrize("decoder", ["global", "swin", "hybrid"])
def test_every_decoder_shapes_and_contract(decoder):
    model = _model(decoder)
    x = torch.randn(3, 1, T, 128)
    out = model({"audio": x}, mask_ratio=0.75)
    L = (T // 16) * 8
    assert out.pred["audio"].shape == (3, L, 256)
    assert out.mask["audio"].shape == (3, L)
    assert out.mask["audio"].sum(1).tolist() == [L - int(L * 0.25)] * 3
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert set(out.losses) == {"mae_audio"}


@pytest.mark.parametrize("decoder", ["global", "swin", "hybrid"])
def test_every_decoder_loss_falls(decoder):
    torch.manual_seed(0)
    model = _model(decoder)
    x = torch.randn(4, 1, T, 128)
    noise = {"audio": torch.rand(4, (T // 16) * 8)}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    first = None
    for _ in range(15):
        loss = model({"audio": x}, noise=noise).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_noise_makes_masking_reproducible():
    model = _model("swin").eval()
    x = torch.randn(2, 1, T, 128)
    noise = {"audio": torch.rand(2, 32)}
    a, b = model({"audio": x}, noise=noise), model({"audio": x}, noise=noise)
    assert torch.equal(a.mask["audio"], b.mask["audio"]) and torch.allclose(a.loss, b.loss)
    assert torch.equal(a.mask["audio"], (torch.argsort(torch.argsort(noise["audio"], 1), 1) >= int(32 * 0.2)).float())


def test_other_input_lengths_work():
    for length in (128, 512):
        model = avmae.create_model("audiomae_tiny", target_length=length)
        out = model({"audio": torch.randn(1, 1, length, 128)})
        assert out.pred["audio"].shape == (1, length // 16 * 8, 256)


def test_vit_base_parameter_counts_match_the_release():
    model = avmae.create_model("audiomae_vit_base")
    enc = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("decoder."))
    dec = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n.startswith("decoder."))
    assert (enc, dec) == (85_254_144, 51_081_984)
    assert len(model.decoder.blocks) == 16
    shifts = [blk.shift for blk in model.decoder.blocks]
    assert shifts[0] == (0, 0) and shifts[1] == (2, 0) and shifts[15] == (2, 0)
    cls = avmae.create_model("audiomae_vit_base_cls")
    assert sum(p.numel() for p in cls.parameters() if p.requires_grad) == 85_659_407


def test_hybrid_has_local_then_global_blocks():
    model = avmae.create_model("audiomae_vit_base", decoder="hybrid", decoder_params={"global_depth": 3})
    kinds = [type(b).__name__ for b in model.decoder.blocks]
    assert kinds == ["SwinBlock"] * 13 + ["Block"] * 3


def test_swin_block_fused_equals_math():
    torch.manual_seed(0)
    for shift in [(0, 0), (2, 0), (2, 2)]:
        blk = SwinBlock(32, num_heads=4, grid=(8, 8), window=(4, 4), shift=shift).eval()
        with torch.no_grad():
            blk.attn.tau.uniform_(0.3, 1.5)
            for p in blk.attn.meta_mlp.parameters():
                p.normal_(0, 0.3)
        x = torch.randn(2, 64, 32)
        fused = blk(x)
        blk.attn.fused = False
        plain = blk(x)
        assert torch.allclose(fused, plain, atol=1e-5), shift


def test_shift_mask_separates_wrapped_rows():
    m = shift_region_mask((8, 4), (4, 4), (2, 0))
    assert m.shape == (2, 16, 16)
    assert torch.all(m[0] == 0)  # the first window never wraps
    # second window after the roll holds time rows 6,7 then the wrapped rows 0,1
    labels = torch.tensor([0] * 8 + [1] * 8)
    expect = torch.where(labels[:, None] == labels[None, :], 0.0, -100.0)
    assert torch.equal(m[1], expect)


def test_window_must_tile_grid():
    with pytest.raises(ValueError, match="does not tile"):
        SwinBlock(32, num_heads=4, grid=(6, 8), window=(4, 4))


def test_local_decoder_refuses_two_modalities():
    from avmae.decoders import SwinDecoder
    from avmae.structures import GridSpec

    specs = {"audio": GridSpec("audio", (4, 8), 256), "video": GridSpec("video", (1, 2, 2), 768)}
    with pytest.raises(ValueError, match="joint"):
        SwinDecoder(encoder_dim=32, specs=specs, has_cls=False, embed_dim=32, num_heads=4)


def test_missing_modality_input_is_a_clear_error():
    with pytest.raises(KeyError, match="expects \\['audio'\\]"):
        _model("global")({"video": torch.randn(1, 1, 1, 1)})


def test_classifier_shapes_and_structured_masking():
    clf = avmae.create_model("audiomae_tiny_cls", num_classes=5, target_length=T, mask_t_prob=0.25, mask_f_prob=0.25)
    x = torch.randn(2, 1, T, 128)
    clf.train()
    tokens = clf.forward_tokens({"audio": x})
    assert tokens.shape[1] == 1 + int(4 * 0.75) * int(8 * 0.75)
    clf.eval()
    assert clf.forward_tokens({"audio": x}).shape[1] == 1 + 32
    assert clf({"audio": x}).shape == (2, 5)


def test_features_without_masking_keep_every_token():
    model = _model("swin").eval()
    x = torch.randn(2, 1, T, 128)
    feats = model.forward_features({"audio": x})
    assert feats.shape == (2, 1 + 32, 64)
    ctx = model.forward_features({"audio": x}, contextual_from=0)
    assert ctx.shape == feats.shape

"""avmae against an independent plain-math implementation of the released AudioMAE.

State dicts in the official key layout and shapes are written as official checkpoints (with the
pickled argparse.Namespace), loaded through ``avmae.load_checkpoint`` and run on the same inputs and
masking noise as the oracle in tests/reference.
"""

import pytest
import torch

import avmae
from tests.reference import official_audiomae as ref

RTOL = 1e-4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


def _pretrain_pair(
    tmp_path,
    *,
    decoder_mode,
    T=1024,
    embed=64,
    depth=2,
    heads=4,
    dec_dim=64,
    dec_depth=2,
    dec_heads=4,
    swin_depth=4,
    swin_heads=4,
):
    sd = ref.make_official_pretrain_state_dict(
        embed_dim=embed,
        depth=depth,
        num_heads=heads,
        decoder_embed_dim=dec_dim,
        decoder_depth=dec_depth,
        decoder_num_heads=dec_heads,
        decoder_mode=decoder_mode,
        img_size=(T, 128),
        seed=3,
        swin_depth=swin_depth,
        swin_heads=swin_heads,
    )
    path = tmp_path / "pretrained.pth"
    ref.to_official_pretrain_checkpoint(sd, path)
    if decoder_mode == 1:
        decoder, dparams = "swin", dict(embed_dim=dec_dim, depth=swin_depth, num_heads=swin_heads)
    else:
        decoder, dparams = "global", dict(embed_dim=dec_dim, depth=dec_depth, num_heads=dec_heads)
    model = avmae.create_model(
        "audiomae_tiny",
        embed_dim=embed,
        depth=depth,
        num_heads=heads,
        decoder=decoder,
        decoder_params=dparams,
        target_length=T,
    ).eval()
    report = avmae.load_checkpoint(model, path)
    assert report.format == "audiomae-pretrain" and not report.missing and not report.unexpected
    return sd, model


@pytest.mark.parametrize("decoder_mode", [1, 0])
@pytest.mark.parametrize("T", [1024, 512])
def test_pretraining_model_matches_official(tmp_path, decoder_mode, T):
    sd, model = _pretrain_pair(tmp_path, decoder_mode=decoder_mode, T=T)
    torch.manual_seed(0)
    x = torch.randn(2, 1, T, 128)
    L = (T // 16) * 8
    noise = torch.rand(2, L)
    loss_ref, pred_ref, mask_ref = ref.official_pretrain_forward(
        sd, x, noise, mask_ratio=0.8, decoder_mode=decoder_mode, num_heads=4, decoder_num_heads=4, swin_heads=4
    )
    with torch.no_grad():
        out = model({"audio": x}, mask_ratio=0.8, noise={"audio": noise})
    assert torch.equal(out.mask["audio"], mask_ref.float())
    assert _rel(out.pred["audio"], pred_ref) < RTOL
    assert abs(out.loss.item() - loss_ref.item()) / abs(loss_ref.item()) < RTOL


def test_full_size_vit_base_swin_matches_official(tmp_path):
    """The released configuration itself: ViT-B encoder, 16 Swin blocks of 16 heads, 512-d."""
    sd, model = _pretrain_pair(
        tmp_path,
        decoder_mode=1,
        embed=768,
        depth=12,
        heads=12,
        dec_dim=512,
        dec_depth=8,
        dec_heads=16,
        swin_depth=16,
        swin_heads=16,
    )
    reference = avmae.create_model("audiomae_vit_base")
    assert sorted(reference.state_dict()) == sorted(model.state_dict())
    assert all(reference.state_dict()[k].shape == v.shape for k, v in model.state_dict().items())
    x = torch.randn(1, 1, 1024, 128)
    noise = torch.rand(1, 512)
    loss_ref, pred_ref, mask_ref = ref.official_pretrain_forward(
        sd, x, noise, decoder_mode=1, num_heads=12, swin_heads=16
    )
    with torch.no_grad():
        out = model({"audio": x}, noise={"audio": noise})
    assert torch.equal(out.mask["audio"], mask_ref.float())
    assert _rel(out.pred["audio"], pred_ref) < RTOL
    assert abs(out.loss.item() - loss_ref.item()) / abs(loss_ref.item()) < RTOL


@pytest.mark.parametrize("masked", [False, True])
def test_finetuning_model_matches_official(tmp_path, masked):
    sd = ref.make_official_finetune_state_dict(embed_dim=64, depth=2, num_heads=4, num_classes=7, seed=5)
    path = tmp_path / "finetuned.pth"
    ref.to_official_finetune_checkpoint(sd, path)
    model = avmae.create_model("audiomae_tiny_cls", num_classes=7, mask_t_prob=0.2, mask_f_prob=0.2).eval()
    report = avmae.load_checkpoint(model, path)
    assert report.format == "audiomae-finetune" and not report.missing and not report.unexpected
    x = torch.randn(2, 1, 1024, 128)
    if masked:
        nt, nf = torch.rand(2, 64), torch.rand(2, 8)
        want = ref.official_finetune_forward(
            sd, x, num_heads=4, mask_t_prob=0.2, mask_f_prob=0.2, noise_t=nt, noise_f=nf
        )
        with torch.no_grad():
            got = model.head(model.pool(model.forward_tokens({"audio": x}, mask=True, noise_t=nt, noise_f=nf)))
    else:
        want = ref.official_finetune_forward(sd, x, num_heads=4)
        with torch.no_grad():
            got = model({"audio": x})
    assert _rel(got, want) < RTOL


def test_pretrained_checkpoint_initialises_finetuning_like_official(tmp_path):
    """Official recipe: encoder from the pretraining file, fc_norm/head fresh, decoder ignored."""
    sd, _ = _pretrain_pair(tmp_path, decoder_mode=1)
    model = avmae.create_model("audiomae_tiny_cls", num_classes=4).eval()
    report = avmae.load_checkpoint(model, tmp_path / "pretrained.pth")
    assert {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"} <= set(report.reinitialized)
    assert "decoder_blocks.0.attn.tau" in report.ignored and "norm.weight" in report.ignored
    assert torch.equal(model.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
    ft = {k: v for k, v in sd.items() if not k.startswith(("decoder", "mask_token", "norm."))}
    ft["fc_norm.weight"], ft["fc_norm.bias"] = model.fc_norm.weight.detach(), model.fc_norm.bias.detach()
    ft["head.weight"], ft["head.bias"] = model.head.weight.detach(), model.head.bias.detach()
    x = torch.randn(1, 1, 1024, 128)
    with torch.no_grad():
        assert _rel(model({"audio": x}), ref.official_finetune_forward(ft, x, num_heads=4)) < RTOL

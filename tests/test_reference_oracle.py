"""Self-tests of the official-AudioMAE oracle in tests/reference (not of the avmae package).

The oracle's blocks are checked against timm's independent implementations (ViT ``Block``,
``SwinTransformerV2CrBlock``, ``VisionTransformer``) in float64, so a match means same semantics
rather than same rounding.
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reference import official_audiomae as ref  # noqa: E402

LN = partial(nn.LayerNorm, eps=1e-6)


def _code_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / torch.pow(10000.0, torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    ang = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def _block_params(sd, prefix):
    head = prefix + "."
    return {k[len(head) :]: v.clone() for k, v in sd.items() if k.startswith(head)}


def _tiny_swin_params(dim=32, heads=4, seed=0):
    sd = ref.make_official_pretrain_state_dict(
        embed_dim=dim,
        depth=0,
        num_heads=heads,
        decoder_embed_dim=dim,
        decoder_depth=0,
        decoder_num_heads=heads,
        decoder_mode=1,
        img_size=(64, 64),
        seed=seed,
        swin_depth=1,
        swin_heads=heads,
        meta_dim=384,  # timm's block fixes 384
    )
    return _block_params(sd, "decoder_blocks.0")


# ------------------------------------------------------------------------------------------------
# positional embedding
# ------------------------------------------------------------------------------------------------
def test_pos_embed_official_quirk():
    D = 64
    pe = ref.official_pos_embed(D, (8, 64))
    assert pe.shape == (1, 1 + 512, D) and pe.dtype == torch.float32
    assert torch.count_nonzero(pe[0, 0]) == 0
    k = torch.arange(512)
    want = torch.cat([_code_1d(D // 2, k % 64), _code_1d(D // 2, k // 64)], dim=1).float()
    torch.testing.assert_close(pe[0, 1:], want, atol=1e-6, rtol=0)
    # all 512 codes distinct even though they do not follow the (t, f) geometry
    assert torch.unique(pe[0, 1:], dim=0).shape[0] == 512


def test_state_dict_uses_swapped_patch_hw():
    sd = ref.make_official_pretrain_state_dict(
        embed_dim=32,
        depth=1,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=4,
        decoder_mode=0,
        img_size=(128, 64),
    )
    # img (T=128, F=64) -> patch_hw = (F/16, T/16) = (4, 8)
    torch.testing.assert_close(sd["pos_embed"], ref.official_pos_embed(32, (4, 8)), atol=0, rtol=0)
    torch.testing.assert_close(sd["decoder_pos_embed"], ref.official_pos_embed(16, (4, 8)), atol=0, rtol=0)


def test_official_shapes_vit_base():
    sd = ref.make_official_pretrain_state_dict(
        embed_dim=768,
        depth=1,
        num_heads=12,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        decoder_mode=1,
        swin_depth=2,
    )
    assert sd["pos_embed"].shape == (1, 513, 768)
    assert sd["decoder_pos_embed"].shape == (1, 513, 512)
    assert sd["patch_embed.proj.weight"].shape == (768, 1, 16, 16)
    assert sd["decoder_blocks.1.attn.tau"].shape == (16,)
    assert sd["decoder_blocks.1.attn.meta_mlp.fc1.weight"].shape == (384, 2)
    assert sd["decoder_blocks.1.attn.meta_mlp.fc2.weight"].shape == (16, 384)
    assert sd["decoder_blocks.1.mlp.fc1.weight"].shape == (2048, 512)
    assert sd["decoder_pred.weight"].shape == (256, 512)
    ft = ref.make_official_finetune_state_dict(embed_dim=768, depth=1, num_heads=12, num_classes=527)
    assert ft["head.weight"].shape == (527, 768) and "fc_norm.weight" in ft and "norm.weight" not in ft


# ------------------------------------------------------------------------------------------------
# blocks vs timm
# ------------------------------------------------------------------------------------------------
def test_vit_block_matches_timm():
    from timm.models.vision_transformer import Block

    sd = ref.make_official_pretrain_state_dict(
        embed_dim=32,
        depth=1,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=0,
        decoder_num_heads=4,
        decoder_mode=0,
        img_size=(64, 32),
        seed=1,
    )
    p = _block_params(sd, "blocks.0")
    blk = Block(32, 4, mlp_ratio=4.0, qkv_bias=True, norm_layer=LN)
    blk.load_state_dict(p, strict=True)
    blk = blk.double().eval()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    with torch.no_grad():
        want = blk(x)
    got = ref.official_vit_block({k: v.double() for k, v in p.items()}, x, num_heads=4)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def _timm_swin(p, feat, window, shift, want_shift, heads=4):
    """timm SwinTransformerV2CrBlock holding the oracle's weights, forced to the official shift.

    Differences from the AudioMAE-patched block, all accounted for here:
      * timm stores ``logit_scale = log(1/tau)`` (clamped at log(100), i.e. tau >= 0.01) instead of tau;
      * timm's ``_calc_window_shift`` replaces any non-zero requested shift by window // 2 on *both*
        axes, so the official (2, 0) becomes (2, 2); the official block keeps (2, 0). We set
        ``shift_size`` back and rebuild the mask. Its slice labelling is otherwise the same
        (with a zero component the slices along that axis degenerate identically);
      * timm's cosine uses F.normalize (eps 1e-12 per vector) vs the product of norms clamped at
        1e-6, identical for non-degenerate q, k; meta-MLP dropout (0.125 vs 0.1) is off in eval;
      * timm zero-initialises the norm weights (init_values=0): overwritten by the copy;
      * timm takes [B, H, W, C] and pads to window multiples (a no-op on divisible grids).
    """
    from timm.models.swin_transformer_v2_cr import SwinTransformerV2CrBlock

    blk = SwinTransformerV2CrBlock(
        dim=32, num_heads=heads, feat_size=feat, window_size=window, shift_size=shift, norm_layer=LN
    )
    if tuple(blk.shift_size) != tuple(want_shift):
        blk.shift_size = tuple(want_shift)
        blk.register_buffer(
            "attn_mask", blk.get_attn_mask(device=torch.device("cpu"), dtype=torch.float32), persistent=False
        )
    timm_sd = {k: v for k, v in p.items() if k != "attn.tau"}
    timm_sd["attn.logit_scale"] = torch.log(1.0 / p["attn.tau"])
    blk.load_state_dict(timm_sd, strict=True)
    return blk.double().eval()


@pytest.mark.parametrize(
    "feat,window,shift",
    [
        ((8, 8), (4, 4), (0, 0)),
        ((8, 8), (4, 4), (2, 0)),  # the official odd-block shift, time only
        ((8, 8), (4, 4), (2, 2)),
        ((8, 4), (4, 4), (2, 0)),  # official-like non-square grid (time longer)
        ((4, 8), (4, 4), (2, 2)),  # window covers the rows: shift clamps to (0, 2)
        ((8, 2), (4, 4), (2, 2)),  # window clamps to (4, 2), shift to (2, 0)
    ],
)
def test_swin_block_matches_timm(feat, window, shift):
    p = _tiny_swin_params(seed=hash((feat, shift)) % 1000)
    p["attn.tau"][1] = 0.004  # below the 0.01 clamp
    win, want_shift = ref.official_swin_window_and_shift(feat, window, shift)
    blk = _timm_swin(p, feat, window, shift, want_shift)
    assert tuple(blk.window_size) == win and tuple(blk.shift_size) == want_shift
    x = torch.randn(2, feat[0] * feat[1], 32, dtype=torch.float64)
    with torch.no_grad():
        want = blk(x.reshape(2, feat[0], feat[1], 32)).reshape(2, -1, 32)
    got = ref.official_swin_block(
        {k: v.double() for k, v in p.items()}, x, grid=feat, num_heads=4, window=window, shift=shift
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # float32 oracle stays close to the float64 one
    got32 = ref.official_swin_block(p, x.float(), grid=feat, num_heads=4, window=window, shift=shift)
    torch.testing.assert_close(got32.double(), want, atol=1e-4, rtol=0)


def test_timm_default_shift_is_not_the_official_one():
    """Documents why the override above exists: timm turns the requested (2, 0) into (2, 2)."""
    from timm.models.swin_transformer_v2_cr import SwinTransformerV2CrBlock

    probe = SwinTransformerV2CrBlock(dim=32, num_heads=4, feat_size=(8, 8), window_size=(4, 4), shift_size=(2, 0))
    if tuple(probe.shift_size) == (2, 0):
        pytest.skip("this timm keeps the requested shift")
    assert tuple(probe.shift_size) == (2, 2)
    p = _tiny_swin_params(seed=7)
    blk = _timm_swin(p, (8, 8), (4, 4), (2, 0), want_shift=(2, 2))
    x = torch.randn(1, 64, 32, dtype=torch.float64)
    p64 = {k: v.double() for k, v in p.items()}
    with torch.no_grad():
        timm_out = blk(x.reshape(1, 8, 8, 32)).reshape(1, 64, 32)
    official = ref.official_swin_block(p64, x, grid=(8, 8), num_heads=4, shift=(2, 0))
    both = ref.official_swin_block(p64, x, grid=(8, 8), num_heads=4, shift=(2, 2))
    torch.testing.assert_close(timm_out, both, atol=1e-6, rtol=0)  # timm builds its coords in float32
    assert (official - both).abs().max() > 1e-2


def test_region_labels_time_only_shift():
    labels = ref.official_swin_region_labels((8, 4), (4, 4), (2, 0))
    # freq slices collapse (slice(-4, -0) is empty, slice(-0, None) is everything): labels vary by row only
    want = torch.tensor([2] * 4 + [5] * 2 + [8] * 2)[:, None].expand(8, 4)
    assert torch.equal(labels, want)
    labels = ref.official_swin_region_labels((8, 8), (4, 4), (2, 2))
    assert torch.equal(labels[0], torch.tensor([0, 0, 0, 0, 1, 1, 2, 2]))
    assert torch.equal(labels[7], torch.tensor([6, 6, 6, 6, 7, 7, 8, 8]))


# ------------------------------------------------------------------------------------------------
# whole models
# ------------------------------------------------------------------------------------------------
TINY = dict(
    embed_dim=32,
    depth=2,
    num_heads=4,
    decoder_embed_dim=32,
    decoder_depth=2,
    decoder_num_heads=4,
    img_size=(128, 64),
    swin_depth=2,
    swin_heads=4,
    meta_dim=32,
)


@pytest.mark.parametrize("decoder_mode", [0, 1])
@pytest.mark.parametrize("ratio", [0.75, 0.8])
def test_tiny_pretrain_forward(decoder_mode, ratio):
    sd = ref.make_official_pretrain_state_dict(decoder_mode=decoder_mode, seed=2, **TINY)
    imgs = torch.randn(2, 1, 128, 64)
    L = (128 // 16) * (64 // 16)
    noise = torch.rand(2, L, generator=torch.Generator().manual_seed(3))
    loss, pred, mask = ref.official_pretrain_forward(
        sd, imgs, noise, mask_ratio=ratio, decoder_mode=decoder_mode, num_heads=4, decoder_num_heads=4, swin_heads=4
    )
    keep = int(L * (1 - ratio))
    assert keep == {0.75: 8, 0.8: 6}[ratio]
    assert pred.shape == (2, L, 256) and mask.shape == (2, L)
    assert torch.isfinite(loss) and loss.ndim == 0 and loss > 0
    assert torch.equal(mask.sum(dim=1), torch.full((2,), float(L - keep)))
    for b in range(2):
        kept = torch.argsort(noise[b])[:keep]
        assert torch.equal(torch.nonzero(mask[b] == 0).flatten().sort().values, kept.sort().values)
    # float64 run agrees with float32
    loss64, pred64, _ = ref.official_pretrain_forward(
        sd,
        imgs.double(),
        noise,
        mask_ratio=ratio,
        decoder_mode=decoder_mode,
        num_heads=4,
        decoder_num_heads=4,
        swin_heads=4,
    )
    torch.testing.assert_close(pred.double(), pred64, atol=1e-4, rtol=0)


def test_loss_counts_masked_patches_only():
    imgs = torch.randn(2, 1, 64, 32)
    target = ref.official_patchify(imgs)
    mask = (torch.rand(2, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    mask[:, 0] = 1.0
    pred = torch.randn(2, 8, 256)
    loss = ref.official_forward_loss(imgs, pred, mask, norm_pix_loss=True)
    pred2 = pred + 5.0 * (1 - mask)[..., None]  # only visible patches change
    assert torch.equal(loss, ref.official_forward_loss(imgs, pred2, mask, norm_pix_loss=True))
    mean = target.mean(-1, keepdim=True)
    var = target.var(-1, keepdim=True)  # unbiased
    t = (target - mean) / (var + 1e-6) ** 0.5
    want = (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, want)
    # patchify: token k = t*(F/16) + f, pixel dt*16 + df
    assert target[1, 1 * 2 + 1, 3 * 16 + 5] == imgs[1, 0, 16 + 3, 16 + 5]


def test_finetune_matches_timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    sd = ref.make_official_finetune_state_dict(
        embed_dim=32, depth=2, num_heads=4, num_classes=5, img_size=(128, 64), seed=4
    )
    vit = VisionTransformer(
        img_size=(128, 64),
        patch_size=16,
        in_chans=1,
        num_classes=5,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=4.0,
        qkv_bias=True,
        global_pool="avg",
        fc_norm=True,
        norm_layer=LN,
    )
    vit.load_state_dict(sd, strict=True)
    vit = vit.double().eval()
    imgs = torch.randn(2, 1, 128, 64, dtype=torch.float64)
    with torch.no_grad():
        want = vit(imgs)
    got = ref.official_finetune_forward(sd, imgs, num_heads=4)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_finetune_2d_masking():
    sd = ref.make_official_finetune_state_dict(
        embed_dim=32, depth=1, num_heads=4, num_classes=3, img_size=(128, 64), seed=5
    )
    imgs = torch.randn(2, 1, 128, 64, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    nt, nf = torch.rand(2, 8, generator=g), torch.rand(2, 4, generator=g)
    # 0.25 / 0.5 keeps int(8*0.75)=6 rows x int(4*0.5)=2 columns, the lowest-noise ones
    x = torch.arange(32, dtype=torch.float64).reshape(1, 32, 1).expand(2, 32, 1)
    kept = ref._finetune_mask_2d(x, (8, 4), 0.25, 0.5, nt, nf)
    assert kept.shape == (2, 12, 1)
    for b in range(2):
        rows = torch.argsort(nt[b])[:6]
        cols = torch.argsort(nf[b])[:2]
        assert kept[b, :, 0].long().tolist() == [int(r) * 4 + int(c) for r in rows for c in cols]
    masked = ref.official_finetune_forward(
        sd, imgs, num_heads=4, mask_t_prob=0.25, mask_f_prob=0.5, noise_t=nt, noise_f=nf
    )
    # the same token selection done with timm's modules
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=(128, 64),
        patch_size=16,
        in_chans=1,
        num_classes=3,
        embed_dim=32,
        depth=1,
        num_heads=4,
        mlp_ratio=4.0,
        qkv_bias=True,
        global_pool="avg",
        fc_norm=True,
        norm_layer=LN,
    )
    vit.load_state_dict(sd, strict=True)
    vit = vit.double().eval()
    want = []
    with torch.no_grad():
        for b in range(2):
            tokens = vit.patch_embed(imgs[b : b + 1]) + vit.pos_embed[:, 1:]
            tokens = tokens[:, kept[b, :, 0].long()]
            cls = vit.cls_token + vit.pos_embed[:, :1]
            h = vit.blocks(torch.cat([cls, tokens], dim=1))
            want.append(vit.head(vit.fc_norm(h[:, 1:].mean(dim=1))))
    torch.testing.assert_close(masked, torch.cat(want, dim=0), atol=1e-10, rtol=0)
    plain = ref.official_finetune_forward(sd, imgs, num_heads=4)
    assert masked.shape == (2, 3) and not torch.allclose(masked, plain)
    # either prob > 0 takes the 2-D path; a zero f-prob keeps every column
    only_t = ref.official_finetune_forward(sd, imgs, num_heads=4, mask_t_prob=0.25, noise_t=nt, noise_f=nf)
    assert only_t.shape == (2, 3) and not torch.allclose(only_t, plain)


def test_official_checkpoint_container(tmp_path):
    sd = ref.make_official_pretrain_state_dict(decoder_mode=1, **TINY)
    path = tmp_path / "checkpoint-3.pth"
    ref.to_official_pretrain_checkpoint(sd, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals([argparse.Namespace]):
        ck = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ck) == {"model", "optimizer", "epoch", "scaler", "args"}
    assert ck["epoch"] == 3 and isinstance(ck["args"], argparse.Namespace) and ck["args"].decoder_mode == 1
    assert list(ck["model"]) == list(sd)
    assert all(torch.equal(ck["model"][k], sd[k]) for k in sd)
    assert math.isclose(ck["args"].mask_ratio, 0.8)

"""The video modality: patch order, round trips, embeddings, tube masking, bad inputs."""

import pytest
import torch

import avmae
from avmae.layers.pos_embed import sincos_2d, sincos_3d
from avmae.masking import build_masker
from avmae.modalities import VideoModality


def test_registered_as_video():
    assert "video" in avmae.list_modalities()
    assert avmae.get_modality("video") is VideoModality


def test_single_frame_patchify_is_mae_image_order():
    mod = VideoModality(embed_dim=16, num_frames=1, image_size=32)
    assert mod.grid == (2, 2) and mod.patch_dim == 768 and mod.pos_embed_kind == "sincos2d"
    x = torch.randn(2, 1, 3, 32, 32)
    p = mod.patchify(x)
    # MAE: imgs.reshape(N, 3, h, p, w, p) -> einsum('nchpwq->nhwpqc') -> (N, h*w, p*p*3)
    img = x[:, 0]
    mae = torch.einsum("nchpwq->nhwpqc", img.reshape(2, 3, 2, 16, 2, 16)).reshape(2, 4, 768)
    assert torch.equal(p, mae)
    assert torch.equal(mod.unpatchify(p), x)


def test_tubelet_patch_order_and_round_trip():
    mod = VideoModality(embed_dim=16, num_frames=4, image_size=(32, 48), tubelet=2)
    assert mod.grid == (2, 2, 3) and mod.patch_dim == 2 * 16 * 16 * 3
    x = torch.randn(2, 4, 3, 32, 48)
    p = mod.patchify(x)
    assert p.shape == (2, 12, 1536)
    for k in range(12):
        t, rest = divmod(k, 6)
        h, w = divmod(rest, 3)
        block = x[:, 2 * t : 2 * t + 2, :, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16]  # [B, u, c, p, q]
        assert torch.equal(p[:, k], block.permute(0, 1, 3, 4, 2).reshape(2, -1))  # (u p q c)
    assert torch.equal(mod.unpatchify(p), x)


def test_frames_without_tubelets_round_trip():
    mod = VideoModality(embed_dim=16, num_frames=3, image_size=32, tubelet=1)
    assert mod.grid == (3, 2, 2) and mod.default_masking == "random" and mod.default_mask_ratio == 0.75
    x = torch.randn(1, 3, 3, 32, 32)
    assert torch.equal(mod.unpatchify(mod.patchify(x)), x)
    # per-frame Conv2d: token (t, h, w) depends only on frame t
    tokens = mod.embed(x) - mod.pos_embed
    y = x.clone()
    y[:, 1] = 0
    other = mod.embed(y) - mod.pos_embed
    assert torch.allclose(tokens[:, :4], other[:, :4]) and torch.allclose(tokens[:, 8:], other[:, 8:])
    assert not torch.allclose(tokens[:, 4:8], other[:, 4:8])


@pytest.mark.parametrize("frames,tubelet", [(1, 1), (2, 1), (4, 2)])
def test_embedding_is_a_linear_map_of_the_patches(frames, tubelet):
    mod = VideoModality(embed_dim=16, num_frames=frames, image_size=32, tubelet=tubelet)
    x = torch.randn(2, frames, 3, 32, 32)
    w = mod.patch_embed.proj.weight  # [D, c, (u,) p, q]
    if tubelet == 1:
        w = w.permute(0, 2, 3, 1)  # -> [D, p, q, c]
    else:
        w = w.permute(0, 2, 3, 4, 1)  # -> [D, u, p, q, c]
    expect = mod.patchify(x) @ w.reshape(16, -1).t() + mod.patch_embed.proj.bias + mod.pos_embed
    assert torch.allclose(mod.embed(x), expect, atol=1e-5)


def test_positional_tables():
    one = VideoModality(embed_dim=32, num_frames=1, image_size=64)
    assert torch.equal(one.pos_embed[0], sincos_2d(32, (4, 4)))
    clip = VideoModality(embed_dim=32, num_frames=4, image_size=64, tubelet=2)
    assert clip.pos_embed_kind == "sincos3d" and torch.equal(clip.pos_embed[0], sincos_3d(32, (2, 4, 4)))
    assert not clip.pos_embed.requires_grad
    assert len({tuple(r) for r in clip.pos_embed[0].tolist()}) == 32
    assert VideoModality(embed_dim=32, image_size=64, pos_trainable=True).pos_embed.requires_grad


def test_tube_masking_keeps_whole_tubes():
    mod = VideoModality(embed_dim=16, num_frames=8, image_size=64, tubelet=2)
    assert mod.default_masking == "tube" and mod.default_mask_ratio == 0.9
    masker = build_masker(mod.default_masking)
    T, n = 4, 16
    noise = masker.noise(5, mod.grid, 0.9, generator=torch.Generator().manual_seed(3))
    _, mask, _, ids_keep = masker(torch.zeros(5, T * n, 1), mod.grid, 0.9, noise)
    m = mask.reshape(5, T, n)
    assert torch.equal(m, m[:, :1].expand_as(m))  # the same spatial positions in every time step
    assert (m[:, 0] == 0).sum(1).tolist() == [n - int(0.9 * n)] * 5  # VideoMAE's count per step
    # whole tubes for the ViT-B geometry as well (MAE's int(L * (1 - r)) alone would split one)
    big = VideoModality(embed_dim=16, num_frames=16, image_size=224, tubelet=2)
    assert masker.keep_count(big.grid, 0.9) == 8 * (196 - int(0.9 * 196)) == 160
    assert masker.keep_count(big.grid, 0.0) == 8 * 196
    # a one-step (frames) grid is masked at random, MAE's count
    frames = VideoModality(embed_dim=16)
    assert (
        masker.keep_count(frames.grid, 0.75) == int(196 * 0.25)
        and build_masker(frames.default_masking).__class__.__name__ == "RandomMasker"
    )


def test_tube_noise_differs_per_sample_and_is_reproducible():
    mod = VideoModality(embed_dim=16, num_frames=4, image_size=64, tubelet=2)
    masker = build_masker("tube")
    a = masker.noise(3, mod.grid, 0.9, generator=torch.Generator().manual_seed(1))
    b = masker.noise(3, mod.grid, 0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    assert a.shape == (3, 32) and a.min() >= 0 and a.max() < 1


def test_bad_configs_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match="multiple of tubelet"):
        VideoModality(embed_dim=16, num_frames=3, tubelet=2)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VideoModality(embed_dim=16, image_size=100)
    with pytest.raises(ValueError, match="registered masker"):
        VideoModality(embed_dim=16, masking="block")
    mod = VideoModality(embed_dim=16, num_frames=2, image_size=32)
    with pytest.raises(ValueError, match=r"video input must be \[B, 2, 3, 32, 32\]"):
        mod.embed(torch.randn(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match="video input"):
        mod.embed(torch.randn(1, 3, 32, 32))

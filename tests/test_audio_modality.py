import pytest
import torch

from avmae.layers.pos_embed import audiomae_sincos_2d, sincos_1d, sincos_2d
from avmae.modalities import AudioModality


def test_patch_order_is_time_major_and_round_trips():
    mod = AudioModality(embed_dim=32, target_length=64, num_mel_bins=32)
    assert mod.grid == (4, 2)
    x = torch.randn(2, 1, 64, 32)
    p = mod.patchify(x)
    assert p.shape == (2, 8, 256)
    # token k = t * (F/16) + f; pixel index inside a patch = dt * 16 + df
    for k in range(8):
        t, f = divmod(k, 2)
        patch = x[:, 0, t * 16 : (t + 1) * 16, f * 16 : (f + 1) * 16].reshape(2, 256)
        assert torch.equal(p[:, k], patch)
    assert torch.equal(mod.unpatchify(p), x)


def test_patch_embedding_order_matches_patchify():
    mod = AudioModality(embed_dim=8, target_length=64, num_mel_bins=32)
    x = torch.randn(1, 1, 64, 32)
    w = mod.patch_embed.proj.weight.reshape(8, 256)
    expect = mod.patchify(x) @ w.t() + mod.patch_embed.proj.bias
    assert torch.allclose(mod.patch_embed(x), expect, atol=1e-5)


def test_audiomae_table_quirk():
    D, T, F = 16, 64, 8
    table = audiomae_sincos_2d(D, (T, F))
    k = torch.arange(T * F)
    assert torch.allclose(table[:, : D // 2], sincos_1d(D // 2, k % T).float())
    assert torch.allclose(table[:, D // 2 :], sincos_1d(D // 2, k // T).float())
    assert len({tuple(r) for r in table.tolist()}) == T * F


def test_grid_table_encodes_true_geometry():
    D = 16
    table = sincos_2d(D, (4, 3))
    k = torch.arange(12)
    assert torch.allclose(table[:, : D // 2], sincos_1d(D // 2, k % 3).float())
    assert torch.allclose(table[:, D // 2 :], sincos_1d(D // 2, k // 3).float())


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="target_length=100"):
        AudioModality(embed_dim=32, target_length=100)
    mod = AudioModality(embed_dim=32, target_length=64, num_mel_bins=32)
    with pytest.raises(ValueError, match=r"audio input must be \[B, 1, T, 32\].*multiple of 16 \(64 as built\)"):
        mod.embed(torch.randn(2, 1, 32, 64))
    with pytest.raises(ValueError, match="multiple of 16"):
        mod.embed(torch.randn(2, 1, 40, 32))

import pytest
import torch

from avmae.masking import TubeMasker, num_kept, random_masking, structured_time_freq_mask


def test_random_masking_follows_mae_semantics():
    B, L, D = 3, 20, 4
    x = torch.arange(B * L * D, dtype=torch.float32).reshape(B, L, D)
    noise = torch.rand(B, L)
    kept, mask, ids_restore, ids_keep = random_masking(x, 0.75, noise)
    k = int(L * (1 - 0.75))
    assert kept.shape == (B, k, D) and mask.shape == (B, L)
    # the kept tokens are those with the k smallest noise values, in ascending-noise order
    expect = torch.argsort(noise, dim=1)[:, :k]
    assert torch.equal(ids_keep, expect)
    assert torch.equal(kept, torch.gather(x, 1, expect[..., None].expand(-1, -1, D)))
    # mask: 0 exactly at kept positions
    assert torch.equal(mask.sum(1), torch.full((B,), float(L - k)))
    for b in range(B):
        assert set(torch.nonzero(mask[b] == 0).flatten().tolist()) == set(expect[b].tolist())
    # ids_restore inverts the shuffle
    shuffled = torch.gather(x, 1, torch.argsort(noise, 1)[..., None].expand(-1, -1, D))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, D)), x)


def test_keep_count_matches_audiomae():
    assert num_kept(512, 0.8) == 102
    with pytest.raises(ValueError, match="mask ratio"):
        num_kept(10, 1.0)


def test_noise_shape_is_checked():
    with pytest.raises(ValueError, match="noise must have shape"):
        random_masking(torch.zeros(2, 8, 3), 0.5, torch.rand(2, 7))


def test_structured_masking_keeps_whole_rows_and_columns():
    B, T, F, D = 2, 8, 4, 3
    t = torch.arange(T).view(1, T, 1).expand(B, T, F)
    f = torch.arange(F).view(1, 1, F).expand(B, T, F)
    x = torch.stack([t, f, torch.zeros_like(t)], -1).reshape(B, T * F, D).float()
    nt, nf = torch.rand(B, T), torch.rand(B, F)
    kept, removed = structured_time_freq_mask(x, (T, F), 0.25, 0.5, nt, nf)
    kt, kf = int(T * 0.75), int(F * 0.5)
    assert kept.shape == (B, kt * kf, D)
    for b in range(B):
        rows = set(torch.argsort(nt[b])[:kt].tolist())
        cols = set(torch.argsort(nf[b])[:kf].tolist())
        got = {(int(a), int(c)) for a, c in kept[b, :, :2].tolist()}
        assert got == {(r, c) for r in rows for c in cols}
        grid = removed[b].reshape(T, F)
        for r in range(T):
            for c in range(F):
                assert grid[r, c] == (0 if (r in rows and c in cols) else 1)


def test_tube_noise_masks_whole_tubes():
    noise = TubeMasker().noise(2, (4, 3, 3), 0.0)
    x = torch.zeros(2, 36, 1)
    _, mask, _, _ = random_masking(x, 1 - 4 * 2 / 36, noise)  # keep 8 = 2 tubes of 4 frames
    m = mask.reshape(2, 4, 9)
    assert torch.equal(m, m[:, :1].expand_as(m))  # same spatial pattern in every frame
    assert (m[:, 0] == 0).sum(1).tolist() == [2, 2]

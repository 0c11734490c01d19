"""BalancedSampler: deterministic per (seed, epoch), ranks partition the epoch's draw, draw
frequency follows the weights; weights from avmae.sampling.balanced_weights."""

import pytest
import torch

from avmae.sampling import balanced_weights
from avmae.train.samplers import BalancedSampler


def test_same_seed_and_epoch_same_draw_other_epoch_differs():
    w = torch.rand(100, generator=torch.Generator().manual_seed(0))
    a = BalancedSampler(w, 40, seed=7)
    b = BalancedSampler(w, 40, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and len(list(a)) == 40
    b.set_epoch(4)
    assert list(a) != list(b)
    c = BalancedSampler(w, 40, seed=8)
    c.set_epoch(3)
    assert list(c) != list(a)


@pytest.mark.parametrize("replacement", [False, True])
def test_ranks_partition_the_epoch(replacement):
    w = torch.rand(50, generator=torch.Generator().manual_seed(1)) + 0.1
    world = 3
    full = BalancedSampler(w, 31, replacement=replacement, seed=2, global_batch=world)  # 31 -> 30
    full.set_epoch(5)
    shares = []
    for rank in range(world):
        s = BalancedSampler(w, 31, replacement=replacement, seed=2, num_replicas=world, rank=rank)
        s.set_epoch(5)
        shares.append(list(s))
    assert {len(x) for x in shares} == {10}
    merged = [shares[i % world][i // world] for i in range(30)]  # rank r holds indices[r::world]
    assert merged == list(full)
    if not replacement:
        assert len(set(merged)) == 30  # no item twice


def test_without_replacement_never_repeats_and_skips_zero_weights():
    w = torch.ones(20)
    w[:5] = 0
    s = BalancedSampler(w, 15, replacement=False, seed=0)
    for epoch in range(3):
        s.set_epoch(epoch)
        got = list(s)
        assert sorted(got) == list(range(5, 20))
    with pytest.raises(ValueError, match="without replacement"):
        BalancedSampler(w, 16, replacement=False)


def test_frequency_follows_weights():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s = BalancedSampler(w, 20000, replacement=True, seed=0)
    counts = torch.bincount(torch.tensor(list(s)), minlength=4).double()
    assert torch.allclose(counts / counts.sum(), w.double() / w.sum(), atol=0.01)
    # without replacement a part of the set: heavier items are drawn more often over epochs
    w = torch.tensor([1.0] * 10 + [10.0] * 10)
    s = BalancedSampler(w, 5, replacement=False, seed=0)
    hits = torch.zeros(20)
    for epoch in range(200):
        s.set_epoch(epoch)
        for i in s:
            hits[i] += 1
    assert hits[10:].sum() > 5 * hits[:10].sum()


def test_resume_position_and_epoch_pairs():
    s = BalancedSampler(torch.ones(12), 8, seed=0, global_batch=4, with_epoch=True)
    s.set_position(2)
    pairs = list(s)
    assert len(pairs) == 8 and all(e == 2 for e, _ in pairs)
    s.set_position(2, start=4)
    assert list(s) == pairs[4:] and len(s) == 4
    assert BalancedSampler(torch.ones(12), 10, global_batch=4).items_per_epoch == 8


def test_weights_from_balanced_weights_favour_rare_labels():
    items = [{"wav": f"{i}.wav", "labels": "/m/common"} for i in range(18)] + [
        {"wav": f"r{i}.wav", "labels": "/m/rare"} for i in range(2)
    ]
    w = balanced_weights(items, ["/m/common", "/m/rare"])
    s = BalancedSampler(w, 4000, replacement=True, seed=0)
    rare = sum(1 for i in s if i >= 18)
    assert 0.4 < rare / 4000 < 0.6  # the two classes are drawn about equally often

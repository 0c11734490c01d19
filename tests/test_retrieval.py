"""Audio <-> video retrieval recall against a brute-force computation."""

import pytest
import torch

from avmae.retrieval import partner_ranks, retrieval_recall


def brute_force(audio, video, ks):
    def recall(q, g, k):
        hits = 0
        for i in range(q.shape[0]):
            sims = [torch.nn.functional.cosine_similarity(q[i], g[j], dim=0).item() for j in range(g.shape[0])]
            better = sum(1 for j in range(len(sims)) if j != i and sims[j] >= sims[i])
            hits += better < k
        return hits / q.shape[0]

    out = {}
    for name, q, g in (("a2v", audio, video), ("v2a", video, audio)):
        for k in ks:
            out[f"{name}_r{k}"] = recall(q, g, k)
    return out


def test_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(40, 8, generator=g)
    audio = video + 1.2 * torch.randn(40, 8, generator=g)  # noisy partners
    got = retrieval_recall(audio, video, ks=(1, 5, 10))
    want = brute_force(audio, video, (1, 5, 10))
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert 0 < got["a2v_r1"] < got["a2v_r5"] <= got["a2v_r10"] < 1
    assert got["a2v_medr"] >= 1


def test_perfect_constant_and_chunked():
    x = torch.randn(25, 6)
    perfect = retrieval_recall(x, 3 * x, ks=(1,))
    assert perfect == {"a2v_r1": 1.0, "a2v_medr": 1.0, "v2a_r1": 1.0, "v2a_medr": 1.0}
    const = retrieval_recall(torch.ones(10, 4), torch.ones(10, 4), ks=(1, 10))
    assert const["a2v_r1"] == 0.0 and const["a2v_r10"] == 1.0  # ties count against the query
    q, gal = torch.randn(50, 5), torch.randn(50, 5)
    assert torch.equal(partner_ranks(q, gal, chunk_size=7), partner_ranks(q, gal))
    with pytest.raises(ValueError):
        retrieval_recall(torch.randn(3, 4), torch.randn(4, 4))

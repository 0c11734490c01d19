"""Audio <-> video retrieval metrics on paired embeddings (CAV-MAE's zero-shot retrieval).

Row i of ``audio_emb`` and row i of ``video_emb`` come from the same clip. Embeddings are
compared by cosine similarity. For a query, the rank of its true partner is the number of
other candidates scoring at least as high (ties count against the query, so a constant
embedding scores 0, not 100); recall@k is the fraction of queries with rank < k.
"""

from __future__ import annotations

from typing import Dict, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["retrieval_recall", "partner_ranks"]


def partner_ranks(query: torch.Tensor, gallery: torch.Tensor, *, chunk_size: int = 1024) -> torch.Tensor:
    """``query, gallery: [N, D]`` paired row by row -> ``[N]`` int64 zero-based rank of each
    query's partner among all gallery rows (cosine similarity, ties counted against)."""
    if query.dim() != 2 or query.shape != gallery.shape:
        raise ValueError(f"expected two [N, D] tensors of one shape, got {list(query.shape)} and {list(gallery.shape)}")
    q = F.normalize(query.detach().double(), dim=1)
    g = F.normalize(gallery.detach().double().to(q.device), dim=1)
    n = q.shape[0]
    ranks = torch.empty(n, dtype=torch.long, device=q.device)
    for start in range(0, n, chunk_size):
        sim = q[start : start + chunk_size] @ g.T  # [n_chunk, N]
        rows = torch.arange(sim.shape[0], device=q.device)
        own = sim[rows, rows + start].unsqueeze(1)
        ranks[start : start + sim.shape[0]] = (sim >= own).sum(1) - 1  # minus the partner itself
    return ranks.cpu()


def retrieval_recall(
    audio_emb: torch.Tensor, video_emb: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> Dict[str, Union[int, float]]:
    """Recall@k both ways for paired ``audio_emb, video_emb: [N, D]`` ->
    ``{"a2v_r1": ..., "v2a_r1": ..., ..., "a2v_medr": ..., "v2a_medr": ...}``.

    Recalls are fractions in [0, 1] (multiply by 100 for the percentages papers report);
    ``*_medr`` is the median one-based rank of the partner (an int: the lower middle for even N).
    ``a2v``: audio queries, video gallery.
    """
    if len(ks) == 0 or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    out: Dict[str, Union[int, float]] = {}
    for name, query, gallery in (("a2v", audio_emb, video_emb), ("v2a", video_emb, audio_emb)):
        ranks = partner_ranks(query, gallery)
        for k in ks:
            out[f"{name}_r{int(k)}"] = float((ranks < int(k)).double().mean())
        out[f"{name}_medr"] = int((ranks + 1).median())  # torch's median is an element: a whole rank
    return out

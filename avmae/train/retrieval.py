"""Audio <-> video retrieval of a pretraining model on the eval split (CAV-MAE's zero-shot retrieval).

``retrieval_metrics(model, loader, accelerator)`` embeds every eval clip twice (mean-pooled
audio-only and video-only passes through the joint blocks, nothing masked) and returns
recall@1/5/10 both ways (``avmae.retrieval.retrieval_recall``); empty for a model without both
modalities.
"""

from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch
from torch import nn

from ..retrieval import retrieval_recall

__all__ = ["pooled_embeddings", "supports_retrieval", "retrieval_metrics"]


def _modalities(model: nn.Module) -> Dict[str, nn.Module]:
    mods = getattr(model, "modalities", None)
    return dict(mods.items()) if isinstance(mods, (Mapping, nn.ModuleDict)) else {}


@torch.no_grad()
def pooled_embeddings(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``{modality: [B, D]}``: each modality alone, unmasked, through its blocks and the joint
    blocks, mean-pooled (the features the contrastive loss compares)."""
    zero = {m: 0.0 for m in model.modalities}
    noise = {m: model._identity_noise(inputs[m], mod) for m, mod in model.modalities.items()}
    tokens, _ = model.embed_and_mask(inputs, mask_ratio=zero, noise=noise)
    return {m: model.single_modality(m, t).mean(dim=1).float() for m, t in tokens.items()}


def supports_retrieval(model: nn.Module) -> bool:
    return {"audio", "video"} <= set(_modalities(model)) and all(
        hasattr(model, a) for a in ("embed_and_mask", "single_modality", "_identity_noise")
    )


@torch.no_grad()
def retrieval_metrics(model: nn.Module, loader, accelerator, ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """Recall@k audio -> video and video -> audio over every clip of ``loader`` (gathered
    across processes) -> ``{"retrieval/a2v_r1": ..., ...}``; empty for a model without both."""
    inner = accelerator.unwrap_model(model, keep_torch_compile=False)
    if not supports_retrieval(inner):
        return {}
    was_training = inner.training
    inner.eval()
    audio, video = [], []
    try:
        for batch in loader:
            emb = pooled_embeddings(inner, {"audio": batch["audio"], "video": batch["video"]})
            a, v = accelerator.gather_for_metrics((emb["audio"], emb["video"]))
            audio.append(a.cpu())
            video.append(v.cpu())
    finally:
        inner.train(was_training)
    if not audio:
        return {}
    n = sum(x.shape[0] for x in audio)
    ks = [k for k in ks if k <= n] or [1]
    return {f"retrieval/{k}": v for k, v in retrieval_recall(torch.cat(audio), torch.cat(video), ks).items()}

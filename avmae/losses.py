"""Losses: masked-patch MSE (MAE) and InfoNCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["normalize_patches", "masked_mse", "info_nce"]


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalisation of MAE's ``norm_pix_loss`` (unbiased variance). [B, L, P]."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    """Mean squared error over the removed patches only.

    pred, target: [B, L, P]; mask: [B, L], 1 = removed. Computed in float32.
    """
    target = target.float()
    if norm_pix:
        target = normalize_patches(target)
    loss = (pred.float() - target).pow(2).mean(dim=-1)
    mask = mask.float()
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05, bidirectional: bool = False) -> torch.Tensor:
    """InfoNCE between paired rows of a [N, D] and b [N, D] (positives on the diagonal).

    Like CAV-MAE, the default direction normalises over the first axis (``log_softmax(dim=0)``)
    of ``a @ b.T / temperature``; ``bidirectional`` averages both directions.
    """
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits.t(), target)  # == -mean(diag(log_softmax(logits, dim=0)))
    if bidirectional:
        loss = 0.5 * (loss + F.cross_entropy(logits, target))
    return loss

"""Losses: masked-patch MSE (MAE) and InfoNCE.

Contrastive negatives across processes: with ``gather=True`` and an initialised
``torch.distributed`` process group, ``info_nce`` first all-gathers both sides from every process
(``torch.distributed.nn.functional.all_gather``, which back-propagates) and computes the loss on the
global batch, so each process sees all ``world_size * B`` negatives and returns the same loss a
single process would on the whole batch. Gradients reaching each process's local rows are then
``world_size`` times the global-loss gradient; data-parallel gradient averaging divides that
factor out again, so the parameter update is that of the global-batch loss. (CAV-MAE trained under
``DataParallel``, where each GPU's replica only contrasted its own sub-batch, e.g. 12 of 48.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "normalize_patches",
    "masked_mse",
    "info_nce",
    "info_nce_from_logits",
    "contrastive_logits",
    "accuracy_from_logits",
    "gather_with_grad",
]


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


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] on each process -> [world_size * B, ...] in rank order, differentiable.

    Returns ``x`` unchanged when ``torch.distributed`` is unavailable, uninitialised or has one
    process. Every process must pass the same shape.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def contrastive_logits(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05, gather: bool = False
) -> torch.Tensor:
    """Cosine similarities of the rows of a [N, D] and b [N, D] over temperature, in float32.
    -> [N, N] (or [world_size * N]^2 with ``gather`` under ``torch.distributed``)."""
    if gather:
        a, b = gather_with_grad(a), gather_with_grad(b)
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    return a @ b.t() / temperature


def info_nce_from_logits(logits: torch.Tensor, bidirectional: bool = False) -> torch.Tensor:
    """InfoNCE with positives on the diagonal of ``logits`` [N, N] (rows a, columns b).

    Default direction, as CAV-MAE: ``-mean(diag(log_softmax(logits, dim=0)))`` (each b picks its a
    among all a); ``bidirectional`` averages it with the row-wise direction.
    """
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits.t(), target)  # == -mean(diag(log_softmax(logits, dim=0)))
    if bidirectional:
        loss = 0.5 * (loss + F.cross_entropy(logits, target))
    return loss


@torch.no_grad()
def accuracy_from_logits(logits: torch.Tensor, bidirectional: bool = False) -> torch.Tensor:
    """CAV-MAE's ``c_acc``: the share of columns j whose best row is j; ``bidirectional``
    averages it with the share of rows whose best column is the diagonal one. Scalar tensor."""
    target = torch.arange(logits.shape[0], device=logits.device)
    acc = (logits.argmax(dim=0) == target).float().mean()
    if bidirectional:
        acc = 0.5 * (acc + (logits.argmax(dim=1) == target).float().mean())
    return acc


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.05, bidirectional: bool = False, gather: bool = False
) -> torch.Tensor:
    """InfoNCE between paired rows of a [N, D] and b [N, D] (positives on the diagonal).

    Like CAV-MAE, the default direction normalises over the first axis (``log_softmax(dim=0)``)
    of ``a @ b.T / temperature``; ``bidirectional`` averages both directions. ``gather``: use the
    rows of every process as negatives when ``torch.distributed`` is initialised (see the module
    docstring).
    """
    return info_nce_from_logits(contrastive_logits(a, b, temperature, gather), bidirectional)

"""Optimizer pieces: parameter groups (weight decay, layer-wise lr decay) and the lr schedule.

- ``scaled_lr``: MAE's linear scaling rule, ``lr = blr * effective_batch / 256``.
- ``param_groups``: AdamW groups without weight decay for biases, 1-D params (norms) and the
  names a model lists in ``no_weight_decay()``; frozen params (``requires_grad=False``, e.g. the
  fixed sin-cos tables) are left out. With ``layer_decay < 1`` each group also carries AudioMAE's
  ``lr_scale = layer_decay ** (num_layers - layer_id)``.
- ``lr_at`` / ``set_lr``: per-iteration linear warm-up then half-cycle cosine to ``min_lr``;
  every group's lr is ``lr * lr_scale``.
- ``resolve_fused`` / ``build_optimizer(fused=...)`` / ``set_fused``: torch's fused AdamW kernels
  (one kernel over all tensors of a device; ~12 % of a ViT-B step on one CPU core) where torch
  has them for the training device (``optim.fused``).
- ``skips_on_found_inf`` / ``step_unless``: the fused kernels take GradScaler's ``found_inf`` flag
  and leave parameters, moments and step counts untouched where it is 1, so a step can be skipped
  on a device flag without the host reading it.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, Collection, Dict, Iterable, List, Optional, Union

import torch
import torch.nn as nn

from ..config import ConfigError

__all__ = [
    "scaled_lr",
    "no_weight_decay_names",
    "encoder_depth",
    "layer_id",
    "param_groups",
    "fused_adamw_devices",
    "resolve_fused",
    "build_optimizer",
    "set_fused",
    "skips_on_found_inf",
    "step_unless",
    "lr_at",
    "set_lr",
]


def scaled_lr(blr: float, effective_batch: int) -> float:
    """MAE/AudioMAE: ``lr = blr * effective_batch / 256``."""
    return blr * effective_batch / 256


def no_weight_decay_names(model: nn.Module) -> set:
    fn = getattr(model, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def _skips_decay(name: str, param: torch.Tensor, skip: Collection[str]) -> bool:
    # timm's rule: 1-D params (norm weights, biases) and listed names; a listed name also covers
    # the entries below it (``modality_embed.audio`` for ``modality_embed``)
    return param.ndim <= 1 or name.endswith(".bias") or any(name == s or name.startswith(s + ".") for s in skip)


def encoder_depth(model: nn.Module) -> int:
    """Encoder blocks on the longest path: modality-specific blocks + joint ``blocks``."""
    specific = getattr(model, "modality_blocks", None)
    n_specific = max((len(b) for b in specific.values()), default=0) if specific is not None else 0
    return n_specific + len(getattr(model, "blocks", ()))


_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_MOD_BLOCK = re.compile(r"^modality_blocks\.[^.]+\.(\d+)\.")


def layer_id(name: str, num_layers: int, num_specific: int = 0) -> int:
    """AudioMAE's layer id (``util/lr_decay.py``): embeddings 0, encoder block i -> i + 1, rest
    (final norms, head, decoder) -> ``num_layers``. Joint blocks come after ``num_specific``
    modality-specific blocks."""
    if name in ("cls_token", "cls_pos_embed", "pos_embed") or name.startswith(
        ("patch_embed.", "modality_embed.", "modalities.")
    ):
        return 0  # embeddings: patch embed and pos tables live under modalities.<m>.
    m = _MOD_BLOCK.match(name)
    if m:
        return int(m.group(1)) + 1
    m = _BLOCK.match(name)
    if m:
        return num_specific + int(m.group(1)) + 1
    return num_layers


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    layer_decay: float = 1.0,
    no_weight_decay: Optional[Iterable[str]] = None,
) -> List[Dict[str, Any]]:
    """AdamW parameter groups of ``model``'s trainable params.

    Groups are keyed by (layer, decay / no decay); each has ``params``, ``weight_decay``,
    ``lr_scale`` and a ``group`` label such as ``"layer_3_decay"``. With ``layer_decay == 1``
    there are just two groups, ``decay`` and ``no_decay``, both with ``lr_scale = 1``.
    """
    skip = set(no_weight_decay) if no_weight_decay is not None else no_weight_decay_names(model)
    use_layers = layer_decay != 1.0
    if use_layers:
        specific = getattr(model, "modality_blocks", None)
        num_specific = max((len(b) for b in specific.values()), default=0) if specific is not None else 0
        num_layers = encoder_depth(model) + 1
    groups: Dict[str, Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not _skips_decay(name, p, skip)
        kind = "decay" if decay else "no_decay"
        if use_layers:
            lid = layer_id(name, num_layers, num_specific)
            key = f"layer_{lid}_{kind}"
            scale = layer_decay ** (num_layers - lid)
        else:
            key, scale = kind, 1.0
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale,
                "group": key,
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def fused_adamw_devices() -> frozenset:
    """Device types for which this torch has fused AdamW kernels (CUDA; CPU from torch 2.4)."""
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return frozenset()
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without the helper has the CUDA kernels only
        return frozenset({"cuda"})
    return frozenset(_get_fused_kernels_supported_devices())


def resolve_fused(choice: Union[str, bool], devices: Iterable[Union[str, torch.device]]) -> bool:
    """``optim.fused`` for parameters that step on ``devices``: "auto" -> fused where torch has the
    kernels for every one of them; "true" -> fused, or a ``ConfigError`` where it has not;
    "false" -> the default implementation. ``True`` / ``False`` are accepted as "true" / "false"."""
    choice = str(choice).lower()
    if choice not in ("auto", "true", "false"):
        raise ConfigError("optim.fused", f"must be one of ['auto', 'true', 'false'], got {choice!r}")
    if choice == "false":
        return False
    types = {torch.device(d).type for d in devices}
    missing = sorted(types - fused_adamw_devices())
    if choice == "true" and missing:
        raise ConfigError(
            "optim.fused", f"torch {torch.__version__} has no fused AdamW for {', '.join(missing)}; use auto or false"
        )
    return not missing


def build_optimizer(
    groups: List[Dict[str, Any]],
    *,
    lr: float,
    betas=(0.9, 0.95),
    eps: float = 1e-8,
    fused: Union[str, bool] = "auto",
    devices: Optional[Iterable[Union[str, torch.device]]] = None,
) -> torch.optim.AdamW:
    """AdamW over ``groups`` (initial lr set per group from ``lr_scale``).

    ``fused``: a bool already resolved (``resolve_fused``), or ``optim.fused``'s "auto" / "true" /
    "false", resolved for ``devices``, the devices the parameters will step on (default: where
    they are now; the trainer resolves for its device, as the model moves there only after the
    optimizer is built). Fused AdamW takes real floating-point parameters only: "auto" falls back
    to the default implementation for others.
    """
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    if isinstance(fused, bool):
        use_fused = fused
    else:
        use_fused = resolve_fused(fused, devices if devices is not None else {p.device for p in params})
        if use_fused and str(fused).lower() == "auto" and not all(torch.is_floating_point(p) for p in params):
            use_fused = False
    kwargs = {"fused": True} if use_fused else {}
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kwargs)
    set_lr(opt, lr)
    return opt


def set_fused(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """Switch an AdamW (also inside accelerate's wrapper) to the fused or the default
    implementation, with each ``step`` state where that implementation keeps it (fused: float32 on
    the parameter's device; default: on the CPU). A resumed run uses this run's ``optim.fused``,
    whatever implementation wrote the loaded state."""
    inner = getattr(optimizer, "optimizer", optimizer)
    inner.defaults["fused"] = bool(fused) or None
    # GradScaler hands found_inf / grad_scale to an optimizer with this flag: the fused one only
    inner._step_supports_amp_scaling = bool(fused)
    for group in inner.param_groups:
        group["fused"] = bool(fused) or None
        if fused:
            group["foreach"] = None
        for p in group["params"]:
            state = inner.state.get(p)
            step = state.get("step") if state else None
            if not torch.is_tensor(step):
                continue
            if fused:
                state["step"] = step.to(dtype=torch.float32, device=p.device)
            elif not group.get("capturable", False):
                state["step"] = step.to(device="cpu")


def skips_on_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` (also inside accelerate's wrapper) is a fused Adam / AdamW: its
    ``step`` reads a ``found_inf`` attribute (the flag ``GradScaler`` hands to optimizers with
    ``_step_supports_amp_scaling``) and skips the whole update where it is 1."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return (
        isinstance(inner, (torch.optim.Adam, torch.optim.AdamW))
        and bool(getattr(inner, "_step_supports_amp_scaling", False))
        and bool(inner.param_groups)
        and all(g.get("fused") for g in inner.param_groups)
    )


def step_unless(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """``optimizer.step()``, a no-op where ``found_inf`` is 1: parameters, moments and step counts
    stay as they were, as if ``step`` had not been called (besides creating the zero state of
    parameters never stepped). ``found_inf``: a 0-dim float32 tensor holding exactly 0.0 or 1.0
    (the kernels compare it with 1 and subtract it from the step counts), on the parameters'
    device; it is decided there, nothing is read on the host. Only for optimizers where
    ``skips_on_found_inf`` holds."""
    inner = getattr(optimizer, "optimizer", optimizer)
    inner.found_inf = found_inf
    try:
        optimizer.step()
    finally:
        del inner.found_inf


def lr_at(step: float, *, base_lr: float, min_lr: float, warmup_steps: float, total_steps: float) -> float:
    """lr of optimizer step ``step`` (0-based; fractions allowed), as MAE's ``adjust_learning_rate``:
    ``base_lr * step / warmup_steps`` during warm-up, then a half cosine from ``base_lr`` at
    ``warmup_steps`` to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    span = max(total_steps - warmup_steps, 1e-12)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float, epoch: Optional[float] = None) -> None:
    """Set every group's lr to ``lr * group["lr_scale"]``. A group with ``frozen_epochs`` (fine-tuning
    frozen, then unfrozen) gets 0 until ``epoch`` (the run's progress in epochs) reaches it, then its
    lr ramped up linearly over one epoch."""
    for g in optimizer.param_groups:
        scale = g.get("lr_scale", 1.0)
        frozen = g.get("frozen_epochs")
        if frozen and epoch is not None:
            scale *= min(max(epoch - frozen, 0.0), 1.0)
        g["lr"] = lr * scale

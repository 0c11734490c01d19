"""The training precision: ``train.mixed_precision`` ("auto", "no", "bf16", "fp16") for a device."""

from __future__ import annotations

import torch

from ..config import ConfigError

__all__ = ["cpu_has_fast_bf16", "resolve_mixed_precision"]


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16() -> bool:
    """True where bf16 matrix products run on native tiles (x86 AMX, Sapphire Rapids and later).

    Without AMX, oneDNN runs bf16 products through AVX-512 conversions at about half the fp32 rate
    (measured: 164 vs 298 GFLOP/s on 2 cores of an AVX512-BF16 Xeon), so autocast would slow training.
    """
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    return "amx_bf16" in _cpu_flags()


def resolve_mixed_precision(choice: str, device: torch.device) -> str:
    """"auto" -> "bf16" on GPUs that support it ("fp16" on older ones) and on CPUs with native bf16
    matrix units (AMX); fp32 ("no") on other CPUs, where bf16 autocast is slower than fp32."""
    if choice == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "no"
        return "no"
    if choice == "fp16" and device.type != "cuda":
        raise ConfigError("train.mixed_precision", f"fp16 needs a GPU (loss scaling); use bf16 or no on {device.type}")
    return choice

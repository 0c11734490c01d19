"""CAV-MAE's frame transform: decoded frames ``[Tv, H, W, 3]`` uint8 -> model frames
``[Tv, 3, size, size]`` float32, ImageNet-normalised (see ``avmae.data.video``). Public through
``avmae.data.video``."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "transform_frames"]

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------ transform
def _random_resized_box(
    h: int, w: int, scale: Tuple[float, float], ratio: Tuple[float, float], generator: Optional[torch.Generator]
) -> Tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` on ``generator`` -> (top, left, height, width)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand(1, generator=generator)))
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * float(torch.rand(1, generator=generator)))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            return top, left, ch, cw
    in_ratio = w / h  # fallback: centre crop at the nearest allowed aspect
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def transform_frames(
    frames: torch.Tensor,
    size: int = 224,
    *,
    short_side: Optional[int] = None,
    crop: str = "center",
    scale: Tuple[float, float] = (0.2, 1.0),
    ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = False,
    generator: Optional[torch.Generator] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """``frames: [Tv, H, W, 3]`` uint8 -> ``[Tv, 3, size, size]`` float32, normalised.

    ``crop="center"``: resize the short side to ``short_side`` (default ``size``), centre crop.
    ``crop="random_resized"``: one random box (area fraction ``scale``, aspect ``ratio``) shared by
    all frames, resized to ``size``. ``flip``: horizontal flip with probability 1/2.
    """
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [Tv, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if crop not in ("center", "random_resized"):
        raise ValueError(f"crop must be 'center' or 'random_resized', got {crop!r}")
    short_side = size if short_side is None else int(short_side)
    if short_side < size:
        raise ValueError(f"short_side={short_side} is smaller than the crop size={size}")
    x = frames.permute(0, 3, 1, 2)  # [Tv, 3, H, W]
    h, w = x.shape[-2:]
    bicubic = InterpolationMode.BICUBIC
    if crop == "center":
        if min(h, w) != short_side:
            x = TF.resize(x, short_side, interpolation=bicubic, antialias=True)
        x = TF.center_crop(x, [size, size])
    else:
        top, left, ch, cw = _random_resized_box(h, w, scale, ratio, generator)
        x = TF.resized_crop(x, top, left, ch, cw, [size, size], interpolation=bicubic, antialias=True)
    if flip and float(torch.rand(1, generator=generator)) < 0.5:
        x = x.flip(-1)
    x = x.float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()

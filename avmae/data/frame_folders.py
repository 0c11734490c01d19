"""CAV-MAE's frame folders, ``root/frame_{i}/{video_id}.jpg``: writing one from a video
(``extract_frame_folder``) and reading frames back (``load_frame_folder``); the rules are in
``avmae.data.video``. Public through ``avmae.data.video``."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..files import atomic_path
from .frame_transforms import IMAGENET_MEAN, IMAGENET_STD, transform_frames
from .io import MediaError, _source_name
from .video_decode import MediaSource, decode_frames, sample_times

_logger = logging.getLogger(__name__)

__all__ = ["frame_folder_path", "frame_folder_indices", "load_frame_folder", "extract_frame_folder"]


# ------------------------------------------------------------------------------------ frame folders
def frame_folder_path(root: Union[str, os.PathLike], video_id: str, index: int) -> Path:
    """``root/frame_{index}/{video_id}.jpg`` (CAV-MAE's layout)."""
    return Path(root) / f"frame_{int(index)}" / f"{video_id}.jpg"


def frame_folder_indices(
    num_frames: int,
    num_total: int = 10,
    *,
    train: bool = False,
    generator: Optional[torch.Generator] = None,
) -> List[int]:
    """Frame indices to read from a folder of ``num_total`` frames: segment centres for
    evaluation (one frame: ``num_total // 2``, CAV-MAE's frame 5 of 10), a uniform index inside
    each segment for training (one frame: ``randint(0, num_total - 1)``)."""
    if not 1 <= num_frames <= num_total:
        raise ValueError(f"need 1 <= num_frames <= num_total, got {num_frames} and {num_total}")
    times = sample_times(float(num_total), num_frames, "random" if train else "uniform", generator)
    return [min(int(math.floor(t)), num_total - 1) for t in times]


def _read_jpeg(path: Path, name: str) -> torch.Tensor:
    try:
        with Image.open(path) as img:  # PIL, as CAV-MAE's loader
            array = np.asarray(img.convert("RGB"))
    except Exception as err:
        raise MediaError(name, f"unreadable image {path} ({type(err).__name__}: {err})") from err
    return torch.from_numpy(array.copy())  # [H, W, 3]


def load_frame_folder(
    root: Union[str, os.PathLike],
    video_id: str,
    num_frames: int = 1,
    *,
    num_total: int = 10,
    frame_index: Optional[Union[int, Sequence[int]]] = None,
    train: bool = False,
    generator: Optional[torch.Generator] = None,
    size: int = 224,
    short_side: Optional[int] = None,
    crop: str = "center",
    flip: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Pre-extracted frames ``root/frame_{i}/{video_id}.jpg`` -> ``[Tv, 3, size, size]``.

    Indices come from ``frame_index`` (an int or one per frame, e.g. CAV-MAE's 10-frame
    evaluation ensemble) or ``frame_folder_indices``. A missing file is replaced by the nearest
    lower index that exists; none at all is a ``MediaError`` naming ``root/frame_*/video_id.jpg``.
    """
    name = os.fspath(frame_folder_path(root, video_id, 0)).replace("frame_0", "frame_*", 1)
    if frame_index is None:
        indices = frame_folder_indices(num_frames, num_total, train=train, generator=generator)
    else:
        indices = [int(frame_index)] * num_frames if isinstance(frame_index, int) else [int(i) for i in frame_index]
        if len(indices) != num_frames:
            raise ValueError(f"got {len(indices)} frame indices for num_frames={num_frames}")
    images = []
    for idx in indices:
        k = idx
        while k >= 1 and not frame_folder_path(root, video_id, k).is_file():
            k -= 1
        path = frame_folder_path(root, video_id, k)
        if not path.is_file():
            raise MediaError(name, f"no frame at index {idx} or below")
        if k != idx:
            _logger.debug("%s: frame %d missing, using frame %d", name, idx, k)
        images.append(_read_jpeg(path, name))
    h, w = images[0].shape[:2]
    images = [
        im if im.shape[:2] == (h, w) else TF.resize(im.permute(2, 0, 1), [h, w], antialias=True).permute(1, 2, 0)
        for im in images
    ]
    return transform_frames(
        torch.stack(images), size, short_side=short_side, crop=crop, flip=flip, generator=generator, mean=mean, std=std
    )


def extract_frame_folder(
    path: MediaSource,
    root: Union[str, os.PathLike],
    video_id: Optional[str] = None,
    *,
    num_frames: int = 10,
    size: int = 224,
    quality: int = 95,
) -> List[Path]:
    """Write CAV-MAE's frame folder for one video: ``num_frames`` frames at the segment centres
    of the clip, short side resized to ``size`` and centre-cropped, as
    ``root/frame_{i}/{video_id}.jpg`` (``video_id`` defaults to the file name without suffix).

    CAV-MAE's extractor takes the frames at the segment starts of the first 10 s
    (``int(i * total / 10)``); the centres used here match what ``load_frames`` samples.
    """
    name = _source_name(path)
    video_id = video_id if video_id is not None else Path(name).stem
    raw = decode_frames(path, num_frames)
    x = raw.permute(0, 3, 1, 2)
    if min(x.shape[-2:]) != size:
        x = TF.resize(x, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [size, size])
    written = []
    for i in range(num_frames):
        out = frame_folder_path(root, video_id, i)
        with atomic_path(out) as tmp:
            Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(tmp, format="JPEG", quality=quality)
        written.append(out)
    return written

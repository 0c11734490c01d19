"""Video frames with PyAV: seek-based frame sampling, CAV-MAE's frame folders, frame transforms.

Shapes: decoded frames ``[Tv, H, W, 3]`` uint8 (RGB); model frames ``[Tv, 3, size, size]``
float32, ImageNet-normalised (the ``"video"`` input of the models, batched to ``[B, Tv, 3, H, W]``).

Sampling. A clip of duration D is cut into ``num_frames`` equal segments; evaluation takes the
frame shown at each segment's centre, ``t_i = (i + 0.5) * D / n``, training a uniformly jittered
time inside each segment, ``t_i = (i + u_i) * D / n``. "The frame shown at t" is the last frame
whose presentation time is <= t (the first frame for t before it; the last for t past the end).
With one frame per clip this is CAV-MAE's choice: the middle frame for evaluation, any frame
for training.

Decoding. Each target time is reached by ``container.seek`` to the keyframe at or before it and
decoding forward to the target's pts, so a long file is never decoded whole. Consecutive
targets less than ``seek_threshold`` seconds apart are reached by decoding on instead of seeking
again (with long GOPs a seek would land on the same keyframe and decode the same frames twice).

Frame folders (CAV-MAE's offline layout, ``root/frame_{i}/{video_id}.jpg``, ``i`` in
``0..num_total-1``, written by ``extract_frame_folder``): evaluation reads the middle frame
``num_total // 2`` (or ``frame_index``), training a uniformly random one; a missing file falls
back to the next lower index, as CAV-MAE's loader does.

Transform (CAV-MAE's, for files and folders alike): resize the short side to ``short_side``
(default ``size``; bicubic, antialiased), centre crop ``size`` x ``size``, scale to [0, 1], subtract
the ImageNet mean and divide by its std. For training, ``crop="random_resized"`` takes one random
resized crop per clip (the same box for every frame) instead; ``flip=True`` adds a random
horizontal flip.

Every failure raises :class:`~avmae.data.io.MediaError` naming the file and the reason; so does
decoding that takes longer than ``timeout`` seconds (per call, checked between packets and passed
to FFmpeg for blocking reads; ``None`` disables it), as ``load_audio`` does.

The decoder lives in ``avmae.data.video_decode``, the transform in ``avmae.data.frame_transforms``
and the frame folders in ``avmae.data.frame_folders``; every public name is importable from here.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .frame_folders import extract_frame_folder, frame_folder_indices, frame_folder_path, load_frame_folder
from .frame_transforms import IMAGENET_MEAN, IMAGENET_STD, transform_frames
from .io import DEFAULT_DECODE_TIMEOUT, load_audio
from .video_decode import (
    MediaSource,
    VideoInfo,
    _Cursor,  # noqa: F401  (the seek cursor: tests watch its seeks through this module)
    decode_all_frames,
    decode_frames,
    probe_video,
    sample_times,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VideoInfo",
    "probe_video",
    "sample_times",
    "decode_frames",
    "decode_all_frames",
    "transform_frames",
    "load_frames",
    "load_av",
    "frame_folder_path",
    "frame_folder_indices",
    "load_frame_folder",
    "extract_frame_folder",
]


# ------------------------------------------------------------------------------------ public loaders
def load_frames(
    path: MediaSource,
    num_frames: int,
    *,
    times: Optional[Sequence[float]] = None,
    mode: str = "uniform",
    generator: Optional[torch.Generator] = None,
    size: int = 224,
    short_side: Optional[int] = None,
    crop: str = "center",
    flip: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seek: bool = True,
    seek_threshold: float = 1.0,
    timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT,
) -> torch.Tensor:
    """``num_frames`` frames of ``path`` -> ``[Tv, 3, size, size]`` float32, ImageNet-normalised.

    Frames are taken at ``times`` (seconds from the clip start) when given, else at segment
    centres (``mode="uniform"``, evaluation) or random times inside the segments
    (``mode="random"``, training; draws from ``generator``, which also drives a random crop).
    """
    raw = decode_frames(
        path,
        num_frames,
        times=times,
        mode=mode,
        generator=generator,
        seek=seek,
        seek_threshold=seek_threshold,
        timeout=timeout,
    )
    return transform_frames(
        raw, size, short_side=short_side, crop=crop, flip=flip, generator=generator, mean=mean, std=std
    )


def load_av(
    path: MediaSource,
    num_frames: int,
    sample_rate: int = 16000,
    *,
    max_seconds: Optional[float] = None,
    timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT,
    **frame_kwargs,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sound and pictures of one file -> ``(waveform [1, N] at sample_rate, frames [Tv, 3, S, S])``.

    The waveform is the whole first audio track (``load_audio``); ``frame_kwargs`` go to
    ``load_frames``. A file without an audio stream is a ``MediaError``. ``timeout`` bounds each of
    the two decodes.
    """
    frames = load_frames(path, num_frames, timeout=timeout, **frame_kwargs)
    wave = load_audio(path, sample_rate, max_seconds=max_seconds, timeout=timeout)
    return wave, frames

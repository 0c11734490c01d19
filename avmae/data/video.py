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
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple, Union

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..files import atomic_path
from .io import (
    DEFAULT_DECODE_TIMEOUT,
    MediaError,
    _decode_in_caller,
    _open_media,
    _source_name,
    _time_limit,
    load_audio,
    media_errors,
)

_logger = logging.getLogger(__name__)

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

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

MediaSource = Union[str, os.PathLike, BinaryIO]

_EPS = 1e-6  # seconds; absorbs rounding of pts * time_base
_DURATION_TAG = re.compile(r"^(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")


# ------------------------------------------------------------------------------------ probing
@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (``duration`` in seconds, or None)."""

    duration: Optional[float]
    fps: Optional[float]
    num_frames: Optional[int]
    width: int
    height: int
    codec: str
    has_audio: bool


def _open(source: MediaSource, name: str, timeout: Optional[float] = None):
    """Open ``source`` for reading (a file object from its start); a path is checked first so that the reason is
    precise.
    """
    return _open_media(source, name, timeout, rewind=True)


def _video_stream(container, name: str):
    if len(container.streams.video) == 0:
        raise MediaError(name, "no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        codec = getattr(getattr(stream, "codec", None), "name", None) or "unknown"  # no `codec` in some PyAV versions
        raise MediaError(name, f"no decoder for video codec {codec!r}")
    _decode_in_caller(stream)
    return stream


def _stream_duration(container, stream) -> Optional[float]:
    """Seconds of video, from (in order) the stream header, Matroska's DURATION tag, the frame
    count over the frame rate, the container header."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")
    match = _DURATION_TAG.match(tag.strip()) if isinstance(tag, str) else None
    if match:
        h, m, s = match.groups()
        seconds = int(h) * 3600 + int(m) * 60 + float(s)
        if seconds > 0:
            return seconds
    rate = stream.average_rate or stream.guessed_rate
    if stream.frames and rate:
        return float(stream.frames / rate)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def probe_video(path: MediaSource) -> VideoInfo:
    """Read the headers of ``path`` (nothing is decoded) -> :class:`VideoInfo`."""
    name = _source_name(path)
    container = _open(path, name)
    with media_errors(name, None, "unreadable video headers"), container:
        stream = _video_stream(container, name)
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            duration=_stream_duration(container, stream),
            fps=float(rate) if rate else None,
            num_frames=int(stream.frames) or None,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            codec=stream.codec_context.name,
            has_audio=len(container.streams.audio) > 0,
        )


# ------------------------------------------------------------------------------------ sampling
def sample_times(
    duration: float,
    num_frames: int,
    mode: str = "uniform",
    generator: Optional[torch.Generator] = None,
) -> List[float]:
    """``num_frames`` times in ``[0, duration)``: segment centres (``"uniform"``) or one uniform
    draw inside each segment (``"random"``, from ``generator``)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if mode not in ("uniform", "random"):
        raise ValueError(f"mode must be 'uniform' or 'random', got {mode!r}")
    duration = max(float(duration), 0.0)
    seg = duration / num_frames
    if mode == "uniform":
        return [(i + 0.5) * seg for i in range(num_frames)]
    u = torch.rand(num_frames, generator=generator, dtype=torch.float64)
    return [(i + float(u[i])) * seg for i in range(num_frames)]


# ------------------------------------------------------------------------------------ decoding
_END = object()


def _frame_time(frame, stream, start: float, count: int, rate: Optional[Fraction]) -> float:
    """Presentation time of ``frame`` in seconds from the stream start."""
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base) - start
    if frame.pts is not None and stream.time_base is not None:
        return float(frame.pts * stream.time_base) - start
    return count / float(rate) if rate else float(count)  # no timestamps: assume constant rate


class _Cursor:
    """Decodes the video stream forward from where the last seek left it."""

    def __init__(
        self, container, stream, name: str, timeout: Optional[float] = None, deadline: Optional[float] = None
    ) -> None:
        self.container, self.stream, self.name = container, stream, name
        self.timeout, self.deadline = timeout, deadline
        self.time_base = stream.time_base
        self.start = (
            float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
        )
        self.rate = stream.average_rate or stream.guessed_rate
        self.seeks = 0
        self.decoded = 0
        self._iter: Optional[Iterator] = None

    def _frames(self):
        count = 0
        for packet in self.container.demux(self.stream):
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise _time_limit(self.name, self.timeout)
            for frame in packet.decode():
                t = _frame_time(frame, self.stream, self.start, count, self.rate)
                count += 1
                self.decoded += 1
                yield t, frame

    def rewind(self) -> None:
        """Decode from the start without seeking (a freshly opened container)."""
        self._iter = self._frames()

    def seek(self, t: float) -> None:
        """Position the demuxer at the keyframe at or before ``t`` seconds."""
        if self.time_base is None:
            raise _SeekFailed("stream has no time base")
        offset = int(math.floor((t + self.start) / self.time_base))
        self.container.seek(max(offset, 0), backward=True, any_frame=False, stream=self.stream)
        self.seeks += 1
        self._iter = self._frames()

    def next(self):
        assert self._iter is not None
        return next(self._iter, _END)

    def close(self) -> None:
        """End the decoding generator now. It and this cursor refer to each other; left to the
        cyclic garbage collector, the decoder they hold would be freed whenever (the decoder runs
        in the calling thread, ``_decode_in_caller``, so there are no decoder threads to join)."""
        if self._iter is not None:
            self._iter.close()
            self._iter = None


def _collect(cursor: _Cursor, times: Sequence[float], seek: bool, seek_threshold: float) -> list:
    """The frame shown at each of ``times`` (any order; repeats allowed) -> list of frames."""
    order = sorted(range(len(times)), key=lambda i: times[i])
    out: list = [None] * len(times)
    prev = None  # last decoded (time, frame) at or before the previous target
    nxt = None  # first decoded (time, frame) after it, or _END
    for i in order:
        t = float(times[i])
        if cursor._iter is None:
            if seek and t > seek_threshold:
                cursor.seek(t)
            else:
                cursor.rewind()
            nxt = cursor.next()
        elif seek and isinstance(nxt, tuple) and t - nxt[0] > seek_threshold:
            cursor.seek(t)  # far ahead: jump to the keyframe before t
            prev, nxt = None, cursor.next()
        while isinstance(nxt, tuple) and nxt[0] <= t + _EPS:
            prev, nxt = nxt, cursor.next()
        chosen = prev if prev is not None else (nxt if isinstance(nxt, tuple) else None)
        if chosen is None:
            raise _SeekFailed(t)
        out[i] = chosen[1]
    return out


class _SeekFailed(Exception):
    """A seek produced no frame at all (bad index, unseekable input)."""


def _to_rgb(frames: list) -> torch.Tensor:
    """Decoded frames -> ``[Tv, H, W, 3]`` uint8 RGB, converted by a scaler of this call, in this thread.

    Why not ``frame.to_ndarray(format="rgb24")``: PyAV (18 here, on FFmpeg 8) keeps one swscale
    context per thread for it, made with ``threads=0``, which gives it a pool of slice threads
    (one per usable core). A DataLoader worker forked after the parent had converted a frame
    inherits that context without its threads, and its first conversion waits for them forever:
    ``tests/test_av_dataset.py`` hung in ``loader(2)`` on every machine with 2 usable cores (not
    with 1: ``taskset -c 0``; turning FFmpeg's AVX2 / AVX-512 paths off did not change it). A
    single-threaded context per call, freed on return, leaves nothing to inherit. Its cost is
    within noise: ``decode_frames`` of 8 frames 7.1 -> 7.3 ms at 32x32, 160 -> 155 ms at 224x224
    (Xeon, 2 cores, best of 7).
    """
    scaler = VideoReformatter()
    arrays = [torch.from_numpy(scaler.reformat(f, format="rgb24", threads=1).to_ndarray()) for f in frames]
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:  # resolution changes mid-stream: bring every frame to the first's size
        h, w = arrays[0].shape[:2]
        arrays = [
            a if a.shape[:2] == (h, w) else TF.resize(a.permute(2, 0, 1), [h, w], antialias=True).permute(1, 2, 0)
            for a in arrays
        ]
    return torch.stack(arrays)


def _check_times(num_frames: Optional[int], times: Optional[Sequence[float]]) -> Optional[List[float]]:
    if times is None:
        if num_frames is None or num_frames < 1:
            raise ValueError(f"give num_frames >= 1 or times, got num_frames={num_frames!r}")
        return None
    times = [float(t) for t in times]
    if num_frames is not None and len(times) != num_frames:
        raise ValueError(f"got {len(times)} times for num_frames={num_frames}")
    if not times:
        raise ValueError("times must not be empty")
    if any(not math.isfinite(t) or t < 0 for t in times):
        raise ValueError(f"times must be finite and >= 0, got {times}")
    return times


def _resolve_times(
    container, stream, name: str, num_frames: Optional[int], times, mode: str, generator
) -> Tuple[List[float], Optional[float]]:
    if times is not None:
        return times, None
    duration = _stream_duration(container, stream)
    if duration is None:
        raise MediaError(name, "video duration unknown (no duration in the headers)")
    return sample_times(duration, num_frames, mode, generator), duration


def decode_frames(
    path: MediaSource,
    num_frames: Optional[int] = None,
    *,
    times: Optional[Sequence[float]] = None,
    mode: str = "uniform",
    generator: Optional[torch.Generator] = None,
    seek: bool = True,
    seek_threshold: float = 1.0,
    timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT,
) -> torch.Tensor:
    """Decode the frames shown at ``times`` (seconds from the clip start), or at ``num_frames``
    times sampled by ``mode`` (see ``sample_times``), of the first video stream of ``path``
    -> ``[Tv, H, W, 3]`` uint8 RGB, in the order of ``times``.

    ``seek=False`` decodes from the start in one pass (for inputs that cannot seek); a seek that
    yields nothing falls back to that too. ``path`` may be a seekable binary file object.
    """
    if mode not in ("uniform", "random"):
        raise ValueError(f"mode must be 'uniform' or 'random', got {mode!r}")
    times = _check_times(num_frames, times)
    name = _source_name(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    container = _open(path, name, timeout)
    with media_errors(name, timeout, "corrupt or truncated video"):
        try:
            with container:
                stream = _video_stream(container, name)
                targets, _ = _resolve_times(container, stream, name, num_frames, times, mode, generator)
                cursor = _Cursor(container, stream, name, timeout, deadline)
                try:
                    frames = _collect(cursor, targets, seek, seek_threshold)
                except av.error.ExitError:
                    raise
                except (_SeekFailed, av.error.FFmpegError) as err:
                    if not seek:
                        raise
                    _logger.debug("%s: seeking failed (%s); decoding from the start", name, err)
                    frames = None
                finally:
                    cursor.close()
                if frames is not None:
                    _logger.debug(
                        "%s: %d frames by %d seeks, %d decoded", name, len(frames), cursor.seeks, cursor.decoded
                    )
                    return _to_rgb(frames)
            return _decode_sequential(path, name, targets, timeout, deadline)
        except _SeekFailed as err:
            raise MediaError(name, "no video frames decoded") from err


def _decode_sequential(
    path: MediaSource,
    name: str,
    targets: List[float],
    timeout: Optional[float] = None,
    deadline: Optional[float] = None,
) -> torch.Tensor:
    container = _open(path, name, timeout)
    with container:
        cursor = _Cursor(container, _video_stream(container, name), name, timeout, deadline)
        try:
            return _to_rgb(_collect(cursor, targets, False, math.inf))
        finally:
            cursor.close()


def decode_all_frames(
    path: MediaSource, *, timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every frame of the first video stream, in presentation order ->
    ``(frames [N, H, W, 3] uint8, times [N] float64 seconds from the stream start)``."""
    name = _source_name(path)
    container = _open(path, name, timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    with media_errors(name, timeout, "corrupt or truncated video"), container:
        cursor = _Cursor(container, _video_stream(container, name), name, timeout, deadline)
        cursor.rewind()
        pairs = []
        try:
            while (item := cursor.next()) is not _END:
                pairs.append(item)
        finally:
            cursor.close()
    if not pairs:
        raise MediaError(name, "no video frames decoded")
    pairs.sort(key=lambda p: p[0])
    times = torch.tensor([t for t, _ in pairs], dtype=torch.float64)
    return _to_rgb([f for _, f in pairs]), times


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

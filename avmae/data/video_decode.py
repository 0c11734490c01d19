"""Decoding video frames with PyAV: probing a file, the sampling times of a clip, and seek-based
frame decoding (see ``avmae.data.video`` for the sampling and seeking rules). Public through
``avmae.data.video``."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple, Union

import av
import torch
from av.video.reformatter import VideoReformatter
from torchvision.transforms.v2 import functional as TF

from .io import (
    DEFAULT_DECODE_TIMEOUT,
    MediaError,
    _decode_in_caller,
    _open_media,
    _source_name,
    _time_limit,
    media_errors,
)

_logger = logging.getLogger(__name__)

__all__ = ["VideoInfo", "probe_video", "sample_times", "decode_frames", "decode_all_frames"]

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

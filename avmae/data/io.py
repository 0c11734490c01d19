"""Audio decoding with PyAV (FFmpeg): any container/codec FFmpeg reads, to mono float32.

``load_audio`` turns every failure into one exception type, :class:`MediaError`, whose message
names the file and the reason, so datasets can skip unreadable items by policy.

Resampling: ``torchaudio.functional.resample`` (band-limited sinc interpolation, Hann window,
``lowpass_filter_width=6``, ``rolloff=0.99``). It is exact for the reduced rational ratio of the
two rates and deterministic across platforms. Its kernel grows with the reduced ratio, so for odd
rate pairs (reduced source rate > ``_MAX_SINC_RATIO``, e.g. 44101 -> 16000) libswresample
(``av.AudioResampler``) is used instead; every common rate (8k, 11.025k, 22.05k, 24k, 32k,
44.1k, 48k, 88.2k, 96k, ...) takes the torchaudio path.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

import av
import numpy as np
import torch
import torchaudio.functional as AF

_logger = logging.getLogger(__name__)

__all__ = ["MediaError", "load_audio", "save_audio", "MAX_SAMPLE_RATE"]

MAX_SAMPLE_RATE = 768_000
DEFAULT_DECODE_TIMEOUT = 60.0  # seconds per item; a decoder stuck longer than this is treated as broken
_MAX_SINC_RATIO = 2_000  # reduced source rate above which the sinc kernel gets too large

MediaSource = Union[str, os.PathLike, BinaryIO]

# integer sample formats -> full-scale value; packed and planar variants share the entry
_INT_SCALE = {"s16": 2.0**15, "s32": 2.0**31, "s64": 2.0**63}


class MediaError(Exception):
    """A media file that cannot be read. ``str(err) == f"{path}: {reason}"``.

    Built either as ``MediaError(path, reason)`` or from one message ``"path: reason"`` (the
    form DataLoader workers use when they re-raise an exception in the main process).
    """

    def __init__(self, path: Union[str, os.PathLike, None], reason: Optional[str] = None) -> None:
        if reason is None:
            message = str(path)
            head, sep, tail = message.partition(": ")
            if sep and "\n" not in head:
                path, reason = head, tail
            else:
                path, reason = None, message
        else:
            message = f"{path}: {reason}"
        super().__init__(message)
        self.path: Optional[str] = None if path is None else str(path)
        self.reason: str = reason

    def __reduce__(self):  # keep path and reason across pickling (DataLoader workers)
        return (type(self), (self.path, self.reason))


def _source_name(source: MediaSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "<stream>"))


def _time_limit(name: str, timeout: Optional[float]) -> MediaError:
    return MediaError(name, f"decoding took longer than {timeout:g} s (time limit per item)")


@contextlib.contextmanager
def media_errors(name: str, timeout: Optional[float], what: str, *, with_type: bool = True) -> Iterator[None]:
    """The one place where what PyAV raises becomes a ``MediaError`` naming the file: inside the
    block, a ``MediaError`` passes unchanged, FFmpeg's interrupt (``av.error.ExitError``, raised
    when ``timeout`` passed) becomes the time-limit error, and any other exception
    ``"<what> (<type>: <message>)"`` (``with_type=False``: ``"<what> (<message>)"``)."""
    try:
        yield
    except MediaError:
        raise
    except Exception as err:  # FFmpegError, OSError, ValueError of a broken stream, ...
        if isinstance(err, av.error.ExitError) and timeout is not None:
            raise _time_limit(name, timeout) from err
        detail = f"{type(err).__name__}: {err}" if with_type else str(err)
        raise MediaError(name, f"{what} ({detail})") from err


def _open_media(source: MediaSource, name: str, timeout: Optional[float] = None, *, rewind: bool = False):
    """Open ``source`` with PyAV for reading; a path is checked first so that the reason is precise.

    ``rewind``: seek a file object back to its start first. Failures are ``MediaError``s.
    """
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.exists():
            raise MediaError(name, "file not found")
        if p.is_dir():
            raise MediaError(name, "is a directory, not a media file")
        if p.stat().st_size == 0:
            raise MediaError(name, "empty file")
        source = os.fspath(p)
    elif rewind and hasattr(source, "seek"):
        source.seek(0)
    with media_errors(name, timeout, "not a readable media file", with_type=False):  # no known format
        return av.open(source, mode="r", metadata_errors="ignore", timeout=timeout)


def _decode_in_caller(stream) -> None:
    """Make ``stream``'s decoder run in the calling thread (before its first packet is decoded).

    PyAV's default (``thread_count=0``) gives every decoder a pool of FFmpeg threads that lives
    until the decoder is freed. A forked DataLoader worker inherits such a decoder without its
    threads (a decoder left to the garbage collector, a generator not yet closed), and freeing or
    using it there waits for them forever. One decoder thread costs nothing here: PyAV enables
    only slice threading, which a one-slice stream (x264's default) does not use, and the
    DataLoader workers are the parallelism.
    """
    ctx = stream.codec_context
    if ctx is not None and not ctx.is_open:
        ctx.thread_count = 1


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Decoded frame of any sample format -> float32 mono ``[samples]`` (channel mean)."""
    fmt = frame.format.name
    base = fmt[:-1] if fmt.endswith("p") else fmt
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: [1, samples * channels], interleaved
        data = data.reshape(-1, channels).T
    data = data[:, : frame.samples]
    if base in ("flt", "dbl"):
        data = data.astype(np.float64, copy=False)
    elif base == "u8":
        data = (data.astype(np.float64) - 128.0) / 128.0
    elif base in _INT_SCALE:
        data = data.astype(np.float64) / _INT_SCALE[base]
    else:
        raise ValueError(f"unsupported sample format {fmt!r}")
    return data.mean(axis=0).astype(np.float32)


def _resample(wave: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    """``wave: [1, N]`` at ``src`` Hz -> ``[1, M]`` at ``dst`` Hz."""
    if src == dst:
        return wave
    if src // math.gcd(src, dst) <= _MAX_SINC_RATIO:
        return AF.resample(wave, src, dst)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=dst)
    frame = av.AudioFrame.from_ndarray(wave.numpy().reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = src
    frame.pts = None
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return torch.from_numpy(np.concatenate(out) if out else np.zeros(0, np.float32)).reshape(1, -1)


def _decode_mono(container, name: str, max_seconds: Optional[float], timeout: Optional[float] = None) -> tuple:
    streams = container.streams.audio
    if len(streams) == 0:
        raise MediaError(name, "no audio stream")
    stream = streams[0]
    if stream.codec_context is None:
        codec = getattr(getattr(stream, "codec", None), "name", None) or "unknown"  # no `codec` in some PyAV versions
        raise MediaError(name, f"no decoder for audio codec {codec!r}")
    _decode_in_caller(stream)
    src_rate: Optional[int] = None
    limit: Optional[int] = None
    chunks, total = [], 0
    deadline = None if timeout is None else time.monotonic() + timeout
    for packet in container.demux(stream):
        if deadline is not None and time.monotonic() > deadline:
            raise _time_limit(name, timeout)
        for frame in packet.decode():
            rate = int(frame.sample_rate or 0)
            if src_rate is None:
                if rate <= 0 or rate > MAX_SAMPLE_RATE:
                    raise MediaError(name, f"implausible sample rate {rate} Hz")
                src_rate = rate
                if max_seconds is not None:
                    limit = max(1, int(round(max_seconds * src_rate)))
            elif rate != src_rate:
                raise MediaError(name, f"sample rate changes mid-stream ({src_rate} -> {rate} Hz)")
            mono = _frame_to_mono(frame)
            chunks.append(mono)
            total += mono.shape[0]
            if limit is not None and total >= limit:
                break
        if limit is not None and total >= limit:
            break
    if total == 0 or src_rate is None:
        raise MediaError(name, "no audio samples decoded")
    wave = np.concatenate(chunks)
    if limit is not None:
        wave = wave[:limit]
    return torch.from_numpy(wave).reshape(1, -1), src_rate


def load_audio(
    path: MediaSource,
    sample_rate: int = 16000,
    *,
    max_seconds: Optional[float] = None,
    timeout: Optional[float] = DEFAULT_DECODE_TIMEOUT,
) -> torch.Tensor:
    """Decode the first audio stream of ``path`` -> ``[1, N]`` float32 mono at ``sample_rate``.

    Channels are averaged. Integer sources are scaled to [-1, 1); float sources are passed
    through unscaled (as ``torchaudio.load`` does), so lossy decoders may overshoot 1 slightly.
    ``max_seconds`` stops decoding after that much audio (measured at the source rate).
    ``path`` may also be a binary file object (e.g. a member of a tar shard).
    ``timeout`` bounds the time spent decoding one item (seconds, checked between packets, and
    passed to FFmpeg for blocking reads); ``None`` disables it.
    Raises :class:`MediaError` (naming the file and the reason) for anything unreadable.
    """
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
    name = _source_name(path)
    container = _open_media(path, name, timeout)
    with media_errors(name, timeout, "corrupt or truncated data"), container:
        wave, src_rate = _decode_mono(container, name, max_seconds, timeout)
    if not bool(torch.isfinite(wave).all()):
        raise MediaError(name, "decoded samples contain NaN or inf")
    try:
        wave = _resample(wave, src_rate, int(sample_rate))
    except Exception as err:
        raise MediaError(name, f"resampling {src_rate} -> {sample_rate} Hz failed ({err})") from err
    if src_rate != sample_rate:
        _logger.debug("%s: resampled %d -> %d Hz", name, src_rate, sample_rate)
    return wave.contiguous()


_CODEC_BY_SUFFIX = {
    ".wav": "pcm_s16le",
    ".flac": "flac",
    ".mp3": "libmp3lame",
    ".ogg": "libvorbis",
    ".oga": "libvorbis",
    ".opus": "libopus",
    ".m4a": "aac",
    ".aac": "aac",
}
_CODEC_FALLBACK = {"libvorbis": "vorbis", "libmp3lame": "mp3", "libopus": "opus"}


def save_audio(
    path: Union[str, os.PathLike],
    waveform: torch.Tensor,
    sample_rate: int,
    *,
    codec: Optional[str] = None,
    bit_rate: Optional[int] = None,
) -> Path:
    """Encode ``waveform: [C, N]`` (or ``[N]``) float in [-1, 1] to ``path`` with PyAV.

    The codec is chosen from the file suffix unless given (``.wav`` 16-bit PCM, ``.flac``,
    ``.mp3``, ``.ogg`` Vorbis, ``.opus``, ``.m4a`` AAC). The encoder must support
    ``sample_rate`` (Opus: 8/12/16/24/48 kHz).
    """
    path = Path(path)
    wave = torch.as_tensor(waveform, dtype=torch.float32).detach().cpu()
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2 or wave.shape[0] not in (1, 2):
        raise ValueError(f"waveform must be [N], [1, N] or [2, N], got {tuple(wave.shape)}")
    codec = codec or _CODEC_BY_SUFFIX.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: cannot infer a codec from suffix {path.suffix!r}; pass codec=")
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        if codec not in _CODEC_FALLBACK:
            raise
        codec = _CODEC_FALLBACK[codec]
    if codec == "vorbis" and wave.shape[0] == 1:  # FFmpeg's native Vorbis encoder is stereo-only
        wave = wave.expand(2, -1)
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=int(sample_rate), layout=layout)
        if codec == "vorbis":  # FFmpeg's native Vorbis encoder is flagged experimental
            stream.codec_context.options = {"strict": "experimental"}
        if bit_rate is not None:
            stream.codec_context.bit_rate = int(bit_rate)
        frame = av.AudioFrame.from_ndarray(wave.clamp(-1.0, 1.0).numpy(), format="fltp", layout=layout)
        frame.sample_rate = int(sample_rate)
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path

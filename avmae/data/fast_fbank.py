"""Batched Kaldi-compatible log-mel filterbank in plain torch, for CPU or accelerator.

``BatchedFbank`` computes, for a batch of waveforms ``[B, N]`` with per-item valid lengths, what
``torchaudio.compliance.kaldi.fbank`` computes for each item alone with AudioMAE's arguments
(``htk_compat=True, use_energy=False, window_type='hanning', dither=0.0, frame_shift=10``; Kaldi
defaults otherwise: 25 ms frames, ``snip_edges=True``, per-frame DC removal, pre-emphasis 0.97,
FFT size rounded up to a power of two, power spectrum, mel bins from 20 Hz to Nyquist, log with
float32 epsilon). The operations and their order are Kaldi's, so results agree to float rounding.

``BatchedAudioFrontend`` adds the rest of AudioMAE's dataset steps (remove each waveform's mean,
zero-pad or crop to ``target_length`` frames, ``(x - mean) / (2 * std)``) and equals stacking
``AudioFrontend`` outputs item by item. It lets DataLoader workers only decode (cheap, parallel)
while the fbank of a whole batch runs in one pass in the main process or on the GPU.

``decode_audio`` is ``avmae.data.load_audio`` with less Python work per decoded frame (the
samples of all frames are converted at once); it returns the same values and falls back to
``load_audio`` for anything it does not handle itself (resampling, unusual sample formats, errors).

Shapes: waves ``[B, N]`` (zero-padded at the end), lengths ``[B]`` valid samples per item;
frames ``[B, M, W]`` (M frames of W samples); features ``[B, M, F]``.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Tuple, Union

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.compliance import kaldi

from .audio import FRAME_LENGTH_MS, FRAME_SHIFT_MS, NORM_STATS, AudioFrontend
from .augment import mixup_waveforms
from .datasets import AudioDataset, item_generator
from .io import _decode_in_caller, load_audio

__all__ = [
    "BatchedFbank",
    "BatchedAudioFrontend",
    "WaveformDataset",
    "pad_waveforms",
    "collate_waveforms",
    "decode_audio",
]

_EPS = torch.finfo(torch.float32).eps  # Kaldi's floor before the log


_INT_SCALE = {"s16": 2.0**15, "s32": 2.0**31}
_DTYPES = {"s16": np.int16, "s32": np.int32, "flt": np.float32, "dbl": np.float64}


def _decode_same_rate(source, sample_rate: int, max_seconds: Optional[float]) -> Optional[torch.Tensor]:
    """Decode at the stream's own rate; None when the fast path does not apply."""
    with av.open(source, mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        _decode_in_caller(stream)
        limit = None if max_seconds is None else max(1, int(round(max_seconds * sample_rate)))
        chunks, fmt, total = [], None, 0
        for frame in container.decode(stream):
            if frame.sample_rate != sample_rate:
                return None
            if fmt is None:
                fmt = frame.format.name
            elif frame.format.name != fmt:
                return None
            dtype = _DTYPES.get(fmt[:-1] if fmt.endswith("p") else fmt)
            if dtype is None:
                return None
            n, ch = frame.samples, len(frame.layout.channels)
            if frame.format.is_planar:
                data = np.stack([np.frombuffer(p, dtype=dtype, count=n) for p in frame.planes[:ch]])
            else:  # packed: interleaved channels in one plane
                data = np.frombuffer(frame.planes[0], dtype=dtype, count=n * ch).reshape(n, ch).T
            chunks.append(data)
            total += frame.samples
            if limit is not None and total >= limit:
                break
    if not chunks:
        return None
    base = fmt[:-1] if fmt.endswith("p") else fmt
    data = np.concatenate(chunks, axis=1)
    if limit is not None:
        data = data[:, :limit]
    if data.shape[0] == 1 and base == "s16":
        mono = data[0].astype(np.float32) * np.float32(1.0 / _INT_SCALE[base])  # exact: 16-bit / 2^15
    elif data.shape[0] == 1 and base == "flt":
        mono = np.ascontiguousarray(data[0], dtype=np.float32)
    elif base in _INT_SCALE:  # as load_audio: float64 scale and channel mean, then float32
        mono = (data.astype(np.float64) / _INT_SCALE[base]).mean(axis=0).astype(np.float32)
    elif base in ("flt", "dbl"):
        mono = data.astype(np.float64).mean(axis=0).astype(np.float32)
    else:
        return None
    wave = torch.from_numpy(mono).reshape(1, -1)
    if base in ("flt", "dbl") and not bool(torch.isfinite(wave).all()):
        return None  # load_audio raises the MediaError
    return wave


def decode_audio(
    source: Union[str, os.PathLike, BinaryIO], sample_rate: int = 16000, *, max_seconds: Optional[float] = None
) -> torch.Tensor:
    """Same result as ``load_audio(source, sample_rate, max_seconds=...)`` -> ``[1, N]``, faster for
    media already at ``sample_rate``; raises ``MediaError`` for anything unreadable."""
    pos = source.tell() if hasattr(source, "tell") else None
    try:
        src = os.fspath(source) if isinstance(source, (str, os.PathLike)) else source
        wave = _decode_same_rate(src, int(sample_rate), max_seconds)
    except Exception:  # load_audio names the file and the reason
        wave = None
    if wave is not None:
        return wave
    if pos is not None:
        source.seek(pos)
    return load_audio(source, sample_rate, max_seconds=max_seconds)


def pad_waveforms(waves: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """List of ``[1, N_i]`` or ``[N_i]`` waveforms -> (``[B, max N_i]`` zero-padded, lengths ``[B]``)."""
    flat = [w.reshape(-1) for w in waves]
    if not flat:
        raise ValueError("pad_waveforms needs at least one waveform")
    lengths = torch.tensor([w.numel() for w in flat], dtype=torch.long)
    out = torch.zeros(len(flat), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(flat):
        out[i, : w.numel()] = w
    return out, lengths


def collate_waveforms(items: Sequence[dict]) -> dict:
    """DataLoader ``collate_fn`` for items ``{"wave": [1, N_i], "label": [C], "index": int, ...}``.

    Returns ``{"wave": [B, N], "length": [B], "label": [B, C], "index": [B]}`` (other keys as lists),
    ready for ``BatchedAudioFrontend``.
    """
    waves, lengths = pad_waveforms([it["wave"] for it in items])
    out = {"wave": waves, "length": lengths}
    for key in items[0]:
        if key == "wave":
            continue
        vals = [it[key] for it in items]
        if isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], (int, float)):
            out[key] = torch.tensor(vals)
        else:
            out[key] = vals
    return out


class BatchedFbank(nn.Module):
    """Kaldi fbank of a batch: waves ``[B, N]`` (+ lengths ``[B]``) -> log-mel ``[B, M, F]``.

    ``M = frames(max length)``; frames past an item's own frame count are set to ``pad_value``.
    An item shorter than one frame yields one frame of its zero-padded samples (as ``avmae.data.fbank``).

    Args:
        sample_rate: Hz.
        num_mel_bins: F.
        frame_length_ms: Kaldi frame length (25 ms).
        frame_shift_ms: Kaldi frame shift (10 ms).
        preemphasis: pre-emphasis coefficient (0.97).
        low_freq: low end of the mel range in Hz.
        high_freq: high end of the mel range in Hz (``<= 0`` is an offset from Nyquist).
        pad_value: value of the frames past each item's end.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        *,
        frame_length_ms: float = FRAME_LENGTH_MS,
        frame_shift_ms: float = FRAME_SHIFT_MS,
        preemphasis: float = 0.97,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        pad_value: float = 0.0,
    ) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.num_mel_bins = int(num_mel_bins)
        self.window_size = int(sample_rate * frame_length_ms / 1000)
        self.window_shift = int(sample_rate * frame_shift_ms / 1000)
        assert self.window_size >= 2 and self.window_shift > 0, "frame length/shift too short for the sample rate"
        self.fft_size = 1 << (self.window_size - 1).bit_length()
        self.preemphasis = float(preemphasis)
        self.pad_value = float(pad_value)
        # Kaldi's "hanning": 0.5 - 0.5 cos(2 pi n / (N - 1))
        self.register_buffer("window", torch.hann_window(self.window_size, periodic=False), persistent=False)
        banks, _ = kaldi.get_mel_banks(
            self.num_mel_bins, self.fft_size, float(sample_rate), low_freq, high_freq, 100.0, -500.0, 1.0
        )  # [F, fft/2]; the Nyquist bin gets weight 0
        self.register_buffer("mel_t", F.pad(banks, (0, 1)).t().contiguous(), persistent=False)  # [fft/2+1, F]

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames per item for ``lengths`` samples (snip_edges; at least 1)."""
        lengths = lengths.clamp(min=self.window_size)
        return 1 + torch.div(lengths - self.window_size, self.window_shift, rounding_mode="floor")

    def samples_for(self, frames: int) -> int:
        """Samples needed for ``frames`` frames."""
        return (frames - 1) * self.window_shift + self.window_size

    def frames(self, waves: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` -> windowed, pre-emphasised frames ``[B, M, fft_size]`` (Kaldi's ``_get_window``,
        same arithmetic, written into one zero-padded buffer to keep memory passes few)."""
        if waves.shape[-1] < self.window_size:
            waves = F.pad(waves, (0, self.window_size - waves.shape[-1]))
        x = waves.unfold(-1, self.window_size, self.window_shift)  # [B, M, W] view
        out = x.new_zeros(*x.shape[:-1], self.fft_size)
        d = out[..., : self.window_size]
        torch.sub(x, x.mean(dim=-1, keepdim=True), out=d)  # DC removal per frame
        if self.preemphasis != 0.0:
            # y[j] = d[j] - a * d[j - 1], y[0] = d[0] - a * d[0]
            prev = d[..., :-1] * self.preemphasis
            d[..., 1:] -= prev
            d[..., :1] -= d[..., :1] * self.preemphasis
        d *= self.window.to(d.dtype)
        return out

    def log_mel(self, waves: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` -> log-mel of every full frame ``[B, M, F]`` (no lengths)."""
        with torch.autocast(waves.device.type, enabled=False):  # float32 throughout, as Kaldi
            spec = torch.fft.rfft(self.frames(waves.float()))  # [B, M, fft/2+1]
            power = spec.real.square() + spec.imag.square()
            return (power @ self.mel_t).clamp_min(_EPS).log()

    def forward(
        self,
        waves: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        *,
        max_frames: Optional[int] = None,
        center: bool = False,
        per_item: Optional[bool] = None,
    ) -> torch.Tensor:
        """waves ``[B, N]`` float (zero-padded); lengths ``[B]`` valid samples (default: all N);
        max_frames: compute at most this many frames per item; center: first remove each item's
        mean over its valid samples (as ``avmae.data.fbank``); per_item: loop over items (default
        on CPU, where it keeps each item in cache) instead of one batched pass (default elsewhere).
        -> log-mel ``[B, M, F]`` float32."""
        if waves.dim() == 1:
            waves = waves.unsqueeze(0)
        assert waves.dim() == 2, f"waves must be [B, N], got {tuple(waves.shape)}"
        waves = waves.float()
        B, N = waves.shape
        M = int(self.num_frames(torch.tensor(N)))
        if max_frames is not None:
            M = min(M, int(max_frames))
        if per_item if per_item is not None else waves.device.type == "cpu":
            return self._forward_per_item(waves, lengths, M, center)
        if lengths is None:
            lengths = torch.full((B,), N, dtype=torch.long, device=waves.device)
        lengths = lengths.to(waves.device)
        valid = torch.arange(N, device=waves.device)[None, :] < lengths[:, None]
        if center:  # float64 sum: the correctly rounded mean, whatever the reduction order
            total = (waves.double() * valid).sum(-1, keepdim=True)
            waves = waves - (total / lengths.clamp(min=1)[:, None]).float()
        waves = waves * valid  # padding stays zero, also after centring
        mel = self.log_mel(waves[:, : self.samples_for(M)])
        frame_ok = torch.arange(M, device=mel.device)[None, :] < self.num_frames(lengths)[:, None]
        return torch.where(frame_ok[..., None], mel, torch.full_like(mel, self.pad_value))

    def _forward_per_item(
        self, waves: torch.Tensor, lengths: Optional[torch.Tensor], M: int, center: bool
    ) -> torch.Tensor:
        # CPU: one item at a time, so its frames (~2 MB for 10 s) stay in cache through every
        # step and only its own valid frames are computed. Each item's mean is the same
        # reduction as ``w.mean()`` on the item alone, so results are bit-identical to the
        # per-item path (low-energy mel bins are sensitive to last-bit changes of the waveform).
        B, N = waves.shape
        sizes = [N] * B if lengths is None else [min(int(n), N) for n in lengths.tolist()]
        out = waves.new_full((B, M, self.num_mel_bins), self.pad_value)
        for i, n in enumerate(sizes):
            m = min(int(self.num_frames(torch.tensor(n))), M)
            w = waves[i : i + 1, : min(n, self.samples_for(m))]
            if center:
                w = waves[i : i + 1, : max(n, 1)]
                w = (w - w.mean())[:, : self.samples_for(m)]
            out[i, :m] = self.log_mel(w)[0]
        return out

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}, num_mel_bins={self.num_mel_bins}, fft_size={self.fft_size}"


class BatchedAudioFrontend(nn.Module):
    """AudioMAE's frontend on a batch: waves ``[B, N]`` + lengths -> normalised ``[B, 1, T, F]``.

    Equals ``torch.stack([AudioFrontend(...)(w[:, :n]) for w, n in ...])`` for the same settings:
    each waveform's mean (over its valid samples) is removed, padding stays zero, the fbank is
    zero-padded at the end or cropped to ``target_length`` frames, then ``(x - mean) / (2 * std)``.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        target_length: int = 1024,
        mean: float = NORM_STATS["audioset"][0],
        std: float = NORM_STATS["audioset"][1],
        *,
        center: bool = True,
    ) -> None:
        super().__init__()
        assert target_length > 0, f"target_length must be > 0, got {target_length}"
        assert std > 0, f"std must be > 0, got {std}"
        self.fbank = BatchedFbank(sample_rate, num_mel_bins)
        self.sample_rate = int(sample_rate)
        self.num_mel_bins = int(num_mel_bins)
        self.target_length = int(target_length)
        self.mean = float(mean)
        self.std = float(std)
        self.center = center

    @classmethod
    def from_frontend(cls, frontend: AudioFrontend, **kwargs) -> BatchedAudioFrontend:
        """The batched twin of an ``AudioFrontend`` (which must have a fixed ``target_length``)."""
        if frontend.target_length is None:
            raise ValueError("BatchedAudioFrontend needs a fixed target_length")
        return cls(
            frontend.sample_rate, frontend.num_mel_bins, frontend.target_length, frontend.mean, frontend.std, **kwargs
        )

    def forward(
        self, waves: Union[torch.Tensor, List[torch.Tensor]], lengths: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """waves ``[B, N]`` (or a list of ``[1, N_i]``), lengths ``[B]`` -> ``[B, 1, target_length, F]``."""
        if isinstance(waves, (list, tuple)):
            waves, lengths = pad_waveforms(waves)
        mel = self.fbank(waves, lengths, max_frames=self.target_length, center=self.center)  # zeros past each end
        if mel.shape[1] < self.target_length:
            mel = F.pad(mel, (0, 0, 0, self.target_length - mel.shape[1]))
        return ((mel - self.mean) / (2 * self.std)).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"target_length={self.target_length}, mean={self.mean}, std={self.std}, center={self.center}"


class WaveformDataset(AudioDataset):
    """``AudioDataset`` that stops before the fbank, for decoding in DataLoader workers and a
    batched fbank afterwards (``collate_waveforms`` + ``BatchedAudioFrontend(center=False)``).

    Items: ``{"wave": [1, N] float32 (mean removed; roll/gain/mixup applied when train=True),
    "label": [C], "index": int}``. Audio is read with ``decode_audio``. SpecAugment and fbank
    noise act on the fbank, so they are not available here.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.train and (self.augment["freqm"] or self.augment["timem"] or self.augment["noise"]):
            raise ValueError("WaveformDataset applies waveform augmentations only; freqm/timem/noise act on the fbank")

    def _read_wave(self, path: str) -> torch.Tensor:
        """``AudioDataset``'s reader, through the faster ``decode_audio`` (same result)."""
        return decode_audio(path, self.sample_rate, max_seconds=self.max_seconds)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        g = item_generator(self.seed, self.epoch, index)
        replace = item_generator(self.seed, self.epoch, index, stream=1)
        index, wave = self._load_readable(index, replace)
        label = self.label(index)
        if self.train:  # the same draws, in the same order, as AudioDataset
            wave = self._augment_wave(wave, g)
            if self.augment["mixup"] > 0 and float(torch.rand(1, generator=g)) < self.augment["mixup"]:
                partner = int(torch.randint(0, len(self), (1,), generator=g))
                partner, wave2 = self._load_readable(partner, replace)
                wave2 = self._augment_wave(wave2, g)
                wave, label, _ = mixup_waveforms(
                    wave, wave2, label, self.label(partner), g, alpha=self.augment["mixup_alpha"]
                )
        return {"wave": wave.float(), "label": label, "index": index}

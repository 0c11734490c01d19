"""AudioMAE's audio frontend: Kaldi-compatible log-mel filterbank, pad/crop, normalise.

Shapes: waveform ``[1, N]`` (mono, N samples); fbank ``[T, F]`` (T frames of 10 ms, F mel bins);
frontend output ``[1, T, F]`` with ``T = target_length``.

The steps follow the official AudioMAE dataset exactly: subtract the waveform's mean, call
``torchaudio.compliance.kaldi.fbank`` with AudioMAE's arguments (all others Kaldi defaults:
25 ms frames, pre-emphasis 0.97, ``snip_edges=True``, log with float epsilon, so silence is
finite), zero-pad at the end (in log-mel, before normalisation) or keep the first
``target_length`` frames, then ``(x - mean) / (2 * std)``.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.compliance import kaldi

__all__ = ["NORM_STATS", "FBANK_STYLES", "fbank", "beats_fbank", "pad_or_crop", "AudioFrontend", "num_frames"]

# (mean, std) of the un-normalised fbank per dataset, as released with AudioMAE / CAV-MAE
NORM_STATS: Dict[str, Tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
    "cavmae": (-5.081, 4.4849),
}

FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0


def num_frames(num_samples: int, sample_rate: int = 16000) -> int:
    """Number of fbank frames for ``num_samples`` (Kaldi ``snip_edges=True``; >= 1)."""
    window = int(sample_rate * FRAME_LENGTH_MS / 1000)
    shift = int(sample_rate * FRAME_SHIFT_MS / 1000)
    return 1 + (max(num_samples, window) - window) // shift


def _as_mono(waveform: torch.Tensor) -> torch.Tensor:
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.dim() != 2 or waveform.shape[0] != 1:
        raise ValueError(f"expected a mono waveform [1, N] or [N], got {tuple(waveform.shape)}")
    return waveform.float()


def fbank(
    waveform: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128, *, center: bool = True
) -> torch.Tensor:
    """``waveform: [1, N]`` -> un-normalised log-mel fbank ``[T, num_mel_bins]``.

    The waveform's mean is removed first (``center=False`` for a waveform already centred, as
    the dataset's augmentations leave it, so it is not centred twice). A clip shorter than one
    25 ms frame is zero-padded to one frame so that every clip yields at least one frame.
    """
    waveform = _as_mono(waveform)
    if center:
        waveform = waveform - waveform.mean()
    window = int(sample_rate * FRAME_LENGTH_MS / 1000)
    if waveform.shape[1] < window:
        waveform = F.pad(waveform, (0, window - waveform.shape[1]))
    return kaldi.fbank(
        waveform,
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=FRAME_SHIFT_MS,
    )


FBANK_STYLES = ("audiomae", "beats")


def beats_fbank(waveform: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128) -> torch.Tensor:
    """BEATs' fbank: ``waveform: [1, N]`` (in [-1, 1]) times 2^15, Kaldi fbank with torchaudio's
    defaults (povey window, no HTK compatibility, DC removed per frame, no dither), 25 / 10 ms
    frames -> ``[T, num_mel_bins]``, un-normalised. A clip shorter than one frame is zero-padded."""
    waveform = _as_mono(waveform)
    window = int(sample_rate * FRAME_LENGTH_MS / 1000)
    if waveform.shape[1] < window:
        waveform = F.pad(waveform, (0, window - waveform.shape[1]))
    return kaldi.fbank(
        waveform * 2**15,
        num_mel_bins=num_mel_bins,
        sample_frequency=sample_rate,
        frame_length=FRAME_LENGTH_MS,
        frame_shift=FRAME_SHIFT_MS,
    )


def pad_or_crop(features: torch.Tensor, target_length: int) -> torch.Tensor:
    """``[T, F]`` -> ``[target_length, F]``: zeros appended at the end, or the first frames kept."""
    p = target_length - features.shape[0]
    if p > 0:
        return F.pad(features, (0, 0, 0, p))
    return features[:target_length]


class AudioFrontend(nn.Module):
    """Waveform ``[1, N]`` -> normalised fbank ``[1, target_length, num_mel_bins]``.

    ``target_length=None`` keeps every frame (variable length, e.g. for feature extraction).
    ``style``: "audiomae" (AudioMAE / AST / EAT: ``fbank``) or "beats" (``beats_fbank``).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        target_length: Optional[int] = 1024,
        mean: float = NORM_STATS["audioset"][0],
        std: float = NORM_STATS["audioset"][1],
        style: str = "audiomae",
    ) -> None:
        super().__init__()
        if style not in FBANK_STYLES:
            raise ValueError(f"unknown fbank style {style!r}; valid: {', '.join(FBANK_STYLES)}")
        self.style = style
        assert sample_rate > 0, f"sample_rate must be > 0, got {sample_rate}"
        assert num_mel_bins > 0, f"num_mel_bins must be > 0, got {num_mel_bins}"
        assert target_length is None or target_length > 0, f"bad target_length {target_length}"
        assert std > 0, f"std must be > 0, got {std}"
        self.sample_rate = int(sample_rate)
        self.num_mel_bins = int(num_mel_bins)
        self.target_length = None if target_length is None else int(target_length)
        self.mean = float(mean)
        self.std = float(std)

    @classmethod
    def for_dataset(cls, name: str, **kwargs) -> AudioFrontend:
        """Frontend with the normalisation stats of a named dataset (a key of ``NORM_STATS``)."""
        if name not in NORM_STATS:
            raise KeyError(f"unknown dataset {name!r}; known: {sorted(NORM_STATS)}")
        mean, std = NORM_STATS[name]
        return cls(mean=mean, std=std, **kwargs)

    def raw_fbank(self, waveform: torch.Tensor, *, center: bool = True) -> torch.Tensor:
        """``[1, N]`` -> un-normalised fbank ``[T, F]`` of every frame, in this frontend's style
        (``center`` concerns AudioMAE's style only; BEATs' removes each frame's DC itself)."""
        if self.style == "beats":
            return beats_fbank(waveform, self.sample_rate, self.num_mel_bins)
        return fbank(waveform, self.sample_rate, self.num_mel_bins, center=center)

    def compute_fbank(self, waveform: torch.Tensor, *, center: bool = True) -> torch.Tensor:
        """``[1, N]`` -> un-normalised, padded/cropped fbank ``[T, F]`` (SpecAugment goes here)."""
        x = self.raw_fbank(waveform, center=center)
        if self.target_length is not None:
            x = pad_or_crop(x, self.target_length)
        return x

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / (2 * self.std)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.compute_fbank(waveform)).unsqueeze(0)

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, num_mel_bins={self.num_mel_bins}, "
            f"target_length={self.target_length}, mean={self.mean}, std={self.std}"
            + (f", style={self.style!r}" if self.style != "audiomae" else "")
        )

"""Fine-tuning augmentations of the AudioMAE dataset, with explicit random generators.

Every function draws from the ``generator`` it is given (or torch's global RNG when it is
``None``); nothing uses numpy or Python ``random``, so a per-item ``torch.Generator`` makes the
result independent of DataLoader worker count.

Shapes: waveform ``[1, N]``; fbank ``[T, F]`` (time frames, mel bins); labels ``[C]``.

Differences from the released code, on purpose:
- ``random_roll`` really rolls; the official ``roll_mag_aug`` calls ``np.roll`` with
  ``randint(len(waveform))`` on a ``[1, N]`` array, which is always 0 (AudioMAE issue #26). It is
  circular, so it splits short clips (a word ends up half at the end, half at the start);
  ``random_time_shift`` moves a clip within its padding (or a crop within a long clip) instead.
- Beta samples come from ``sample_beta`` (Marsaglia-Tsang gamma ratio on the given generator)
  instead of ``np.random.beta``; the distribution is the same.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = [
    "sample_beta",
    "mask_along_axis",
    "spec_augment",
    "mixup_waveforms",
    "random_gain",
    "random_roll",
    "random_time_shift",
    "fbank_noise",
]


def _rand(generator: Optional[torch.Generator]) -> float:
    return float(torch.rand(1, generator=generator))


def _sample_gamma(shape: float, generator: Optional[torch.Generator]) -> float:
    """One draw of Gamma(shape, 1), Marsaglia & Tsang (2000)."""
    if shape < 1.0:  # boost: Gamma(a) = Gamma(a + 1) * U^(1/a)
        u = _rand(generator)
        return _sample_gamma(shape + 1.0, generator) * u ** (1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = float(torch.randn(1, generator=generator))
        v = (1.0 + c * x) ** 3
        if v <= 0.0:
            continue
        u = _rand(generator)
        if u > 0.0 and math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v


def sample_beta(a: float, b: float, generator: Optional[torch.Generator] = None) -> float:
    """One draw of Beta(a, b) as X / (X + Y), X ~ Gamma(a), Y ~ Gamma(b)."""
    assert a > 0 and b > 0, f"Beta parameters must be > 0, got ({a}, {b})"
    x = _sample_gamma(a, generator)
    y = _sample_gamma(b, generator)
    return x / (x + y)


def mask_along_axis(
    spec: torch.Tensor,
    mask_param: int,
    axis: int,
    mask_value: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Mask ``[start, start + width)`` along ``axis`` of ``spec``.

    Same draws as ``torchaudio.functional.mask_along_axis`` (width ~ U(0, mask_param),
    start ~ U(0, size - width), both floored), but on ``generator``; with ``generator=None`` it
    consumes the global RNG exactly as torchaudio's ``FrequencyMasking``/``TimeMasking`` do.
    """
    if mask_param < 1:
        return spec
    size = spec.shape[axis]
    value = torch.rand(1, generator=generator) * mask_param
    min_value = torch.rand(1, generator=generator) * (size - value)
    start = int(min_value.long())
    end = start + int(value.long())
    idx = torch.arange(size, device=spec.device)
    mask = (idx >= start) & (idx < end)
    shape = [1] * spec.dim()
    shape[axis] = size
    return spec.masked_fill(mask.reshape(shape), mask_value)


def spec_augment(
    fbank: torch.Tensor,
    freqm: int = 0,
    timem: int = 0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """SpecAugment on an un-normalised ``fbank: [T, F]`` with mask value 0 -> ``[T, F]``.

    One frequency mask (width < ``freqm``) then one time mask (width < ``timem``), each only
    when its parameter is non-zero, as the official dataset applies
    ``FrequencyMasking``/``TimeMasking`` to the ``[1, F, T]`` view.
    """
    if freqm:
        fbank = mask_along_axis(fbank, freqm, axis=1, generator=generator)
    if timem:
        fbank = mask_along_axis(fbank, timem, axis=0, generator=generator)
    return fbank


def mixup_waveforms(
    wave1: torch.Tensor,
    wave2: torch.Tensor,
    label1: torch.Tensor,
    label2: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    alpha: float = 10.0,
) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Waveform mixup -> ``(wave [1, N1], label [C], lam)``.

    ``lam ~ Beta(alpha, alpha)``; ``wave2`` is zero-padded or cut to ``wave1``'s length; the
    mix is re-centred (mean removed); label = ``lam * label1 + (1 - lam) * label2``.
    """
    n1, n2 = wave1.shape[-1], wave2.shape[-1]
    if n2 < n1:
        wave2 = torch.nn.functional.pad(wave2, (0, n1 - n2))
    else:
        wave2 = wave2[..., :n1]
    lam = sample_beta(alpha, alpha, generator)
    mixed = lam * wave1 + (1.0 - lam) * wave2
    mixed = mixed - mixed.mean()
    label = lam * label1 + (1.0 - lam) * label2
    return mixed, label, lam


def random_gain(wave: torch.Tensor, generator: Optional[torch.Generator] = None, alpha: float = 10.0) -> torch.Tensor:
    """``wave * g`` with ``g = Beta(alpha, alpha) + 0.5`` (AudioMAE's magnitude augmentation)."""
    return wave * (sample_beta(alpha, alpha, generator) + 0.5)


def random_speed(wave: torch.Tensor, amount: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Speed perturbation: ``wave: [..., N]`` played ``f`` times faster, ``f`` uniform in
    ``[1 - amount, 1 + amount]``: pitch and tempo change together (Kaldi's 0.9 / 1.0 / 1.1 speed
    perturbation of speech, drawn continuously), by linear interpolation to ``round(N / f)``
    samples. A voice or an instrument not in the training clips sits higher or lower; this moves
    the training clips' formants and harmonics by up to ``amount`` (``amount`` 0: unchanged)."""
    if amount <= 0 or wave.shape[-1] < 2:
        return wave
    factor = 1.0 + amount * (2.0 * float(torch.rand(1, generator=generator)) - 1.0)
    n = max(2, int(round(wave.shape[-1] / factor)))
    lead = wave.shape[:-1]
    flat = wave.reshape(1, -1, wave.shape[-1]).float()
    out = torch.nn.functional.interpolate(flat, size=n, mode="linear", align_corners=True)
    return out.reshape(*lead, n).to(wave.dtype)


def random_roll(wave: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Circularly shift ``wave: [..., N]`` along samples by a uniform offset in ``[0, N)``."""
    n = wave.shape[-1]
    if n < 2:
        return wave
    shift = int(torch.randint(0, n, (1,), generator=generator))
    return torch.roll(wave, shifts=shift, dims=-1)


def random_time_shift(
    fbank: torch.Tensor, target_length: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Move a clip in time without cutting it in two: ``fbank [T, F]`` (un-normalised, not padded)
    -> ``[target_length, F]``.

    A clip shorter than ``target_length`` is placed at a uniform offset in ``[0, target_length - T]``
    with zeros (the frontend's log-mel padding) before and after it; a longer one is cut to the
    window starting at a uniform offset in ``[0, T - target_length]``. Unlike ``random_roll`` nothing
    wraps around, so a word or an event is never split between the end and the start.
    """
    T, F_ = fbank.shape
    room = abs(target_length - T)
    offset = int(torch.randint(0, room + 1, (1,), generator=generator)) if room else 0
    if T >= target_length:
        return fbank[offset : offset + target_length]
    out = fbank.new_zeros(target_length, F_)
    out[offset : offset + T] = fbank
    return out


def fbank_noise(fbank: torch.Tensor, generator: Optional[torch.Generator] = None, max_shift: int = 10) -> torch.Tensor:
    """Official ``noise`` option on a normalised ``fbank: [T, F]``: add
    ``U(0,1)[T, F] * U(0,1) / 10``, then roll in time by ``randint(-max_shift, max_shift)`` frames.
    """
    noise = torch.rand(fbank.shape, generator=generator, dtype=fbank.dtype)
    fbank = fbank + noise * _rand(generator) / 10
    shift = int(torch.randint(-max_shift, max_shift, (1,), generator=generator))
    return torch.roll(fbank, shifts=shift, dims=0)

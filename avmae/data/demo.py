"""A small synthetic labelled audio dataset, generated once and cached, for CPU demos and tests.

Six classes of sound with real structure (harmonic tones, chirps, band-passed noise bursts,
click trains, AM tones, FM tones), each with random pitch, timing, loudness and background
noise. Written as 16 kHz mono FLAC with an AudioMAE-format manifest, so the demo runs the same
code path as AudioSet:

    root/
      train.json, eval.json          {"data": [{"wav": "audio/train_tone_000.flac", "labels": "/demo/tone"}, ...]}
      class_labels_indices.csv       index,mid,display_name
      audio/*.flac
      .complete                      marker (JSON of the generation parameters)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from ..files import to_json
from .datasets import item_generator, write_label_csv, write_manifest
from .io import save_audio

_logger = logging.getLogger(__name__)

__all__ = ["DEMO_CLASSES", "synthesize_clip", "ensure_demo_audio", "default_demo_root"]

DEMO_VERSION = 1
_MARKER = ".complete"

# (name, display name); the mid of a class is f"/demo/{name}"
DEMO_CLASSES: List[Tuple[str, str]] = [
    ("tone", "Harmonic tone"),
    ("chirp", "Chirp"),
    ("noise_burst", "Noise burst"),
    ("clicks", "Click train"),
    ("am_tone", "AM tone"),
    ("fm_tone", "FM tone"),
]


# ---------------------------------------------------------------------------- random helpers
def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _log_uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return math.exp(_uniform(g, math.log(lo), math.log(hi)))


def _envelope(n: int, sr: int, g: torch.Generator, min_frac: float = 0.35) -> torch.Tensor:
    """``[n]`` gate: silent, random onset, sustained with 10-50 ms fades, random offset."""
    length = int(n * _uniform(g, min_frac, 0.9))
    onset = int((n - length) * float(torch.rand(1, generator=g)))
    fade = max(1, int(sr * _uniform(g, 0.01, 0.05)))
    env = torch.zeros(n)
    ramp = torch.linspace(0.0, 1.0, min(fade, length // 2) + 1)[1:]
    seg = torch.ones(length)
    seg[: ramp.numel()] = ramp
    seg[length - ramp.numel() :] = ramp.flip(0)
    env[onset : onset + length] = seg
    return env


def _bandpass_noise(n: int, sr: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    spec = torch.fft.rfft(torch.randn(n, generator=g))
    freqs = torch.fft.rfftfreq(n, 1.0 / sr)
    spec = spec * ((freqs >= lo) & (freqs <= hi))
    return torch.fft.irfft(spec, n)


def _phase(freq: torch.Tensor, sr: int) -> torch.Tensor:
    """Instantaneous frequency ``[n]`` in Hz -> phase ``[n]`` in radians."""
    return 2 * math.pi * torch.cumsum(freq, 0) / sr


def _harmonics(phase: torch.Tensor, g: torch.Generator, max_harmonic: int = 6) -> torch.Tensor:
    k_max = int(torch.randint(1, max_harmonic + 1, (1,), generator=g))
    out = torch.zeros_like(phase)
    for k in range(1, k_max + 1):
        out += _uniform(g, 0.3, 1.0) / k * torch.sin(k * phase + _uniform(g, 0, 2 * math.pi))
    return out


# ---------------------------------------------------------------------------- classes
def _tone(n, sr, g):
    f0 = _log_uniform(g, 110.0, 880.0)
    return _harmonics(_phase(torch.full((n,), f0), sr), g) * _envelope(n, sr, g)


def _chirp(n, sr, g):
    lo, hi = _log_uniform(g, 150.0, 600.0), _log_uniform(g, 1500.0, 5000.0)
    a, b = (lo, hi) if float(torch.rand(1, generator=g)) < 0.5 else (hi, lo)
    env = _envelope(n, sr, g, min_frac=0.4)
    active = env > 0
    m = int(active.sum())
    freq = torch.full((n,), a)
    freq[active] = a * (b / a) ** torch.linspace(0.0, 1.0, m)  # exponential sweep over the event
    return torch.sin(_phase(freq, sr)) * env


def _noise_burst(n, sr, g):
    fc = _log_uniform(g, 300.0, 4000.0)
    width = _uniform(g, 1.2, 2.0)
    out = torch.zeros(n)
    for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
        out += _bandpass_noise(n, sr, fc / width, fc * width, g) * _envelope(n, sr, g, min_frac=0.1)
    return out


def _clicks(n, sr, g):
    rate = _uniform(g, 4.0, 25.0)
    env = _envelope(n, sr, g, min_frac=0.5)
    decay = _uniform(g, 0.001, 0.004)
    k = torch.arange(int(sr * 0.02))
    click = torch.randn(k.numel(), generator=g) * torch.exp(-k / (decay * sr))
    impulses = torch.zeros(n)
    step = sr / rate
    t = _uniform(g, 0.0, step)
    while t < n:
        impulses[int(t)] = 1.0
        t += step * _uniform(g, 0.9, 1.1)
    train = torch.nn.functional.conv1d(
        impulses.view(1, 1, -1), click.flip(0).view(1, 1, -1), padding=click.numel() - 1
    ).view(-1)[:n]
    return train * env


def _am_tone(n, sr, g):
    fc = _log_uniform(g, 300.0, 2000.0)
    fm = _uniform(g, 3.0, 12.0)
    depth = _uniform(g, 0.7, 1.0)
    t = torch.arange(n) / sr
    mod = 1.0 - depth * 0.5 * (1.0 + torch.cos(2 * math.pi * fm * t + _uniform(g, 0, 2 * math.pi)))
    return torch.sin(_phase(torch.full((n,), fc), sr)) * mod * _envelope(n, sr, g)


def _fm_tone(n, sr, g):
    fc = _log_uniform(g, 300.0, 2000.0)
    rate = _uniform(g, 3.0, 10.0)
    dev = fc * _uniform(g, 0.05, 0.2)
    t = torch.arange(n) / sr
    freq = fc + dev * torch.sin(2 * math.pi * rate * t + _uniform(g, 0, 2 * math.pi))
    return _harmonics(_phase(freq, sr), g, max_harmonic=3) * _envelope(n, sr, g)


_SYNTHS: Dict[str, Callable[[int, int, torch.Generator], torch.Tensor]] = {
    "tone": _tone,
    "chirp": _chirp,
    "noise_burst": _noise_burst,
    "clicks": _clicks,
    "am_tone": _am_tone,
    "fm_tone": _fm_tone,
}


def synthesize_clip(
    cls: Union[str, int], generator: torch.Generator, sample_rate: int = 16000, seconds: float = 2.6
) -> torch.Tensor:
    """One clip of class ``cls`` (a name or index of ``DEMO_CLASSES``) -> ``[N]`` float32.

    The event is peak-normalised to a random level (-20 to -3 dBFS) over background noise
    (-60 to -40 dBFS); the result stays within [-1, 1].
    """
    name = DEMO_CLASSES[cls][0] if isinstance(cls, int) else cls
    if name not in _SYNTHS:
        raise KeyError(f"unknown demo class {cls!r}; known: {[c for c, _ in DEMO_CLASSES]}")
    n = int(round(sample_rate * seconds))
    event = _SYNTHS[name](n, sample_rate, generator)
    event = event / event.abs().max().clamp_min(1e-8)
    level = 10 ** (_uniform(generator, -20.0, -3.0) / 20)
    noise = torch.randn(n, generator=generator)
    noise = noise / noise.abs().max() * 10 ** (_uniform(generator, -60.0, -40.0) / 20)
    clip = level * event + noise
    return (clip / clip.abs().max().clamp_min(1.0)).float()


# ---------------------------------------------------------------------------- dataset on disk
def _cache_dir(name: str) -> Path:
    """``$AVMAE_CACHE/name``, or ``~/.cache/avmae/name`` when the variable is unset."""
    cache = os.environ.get("AVMAE_CACHE")
    base = Path(cache) if cache else Path.home() / ".cache" / "avmae"
    return base / name


def default_demo_root() -> Path:
    return _cache_dir(f"demo_audio_v{DEMO_VERSION}")


def _write_class_csv(out: Path) -> None:
    """``out/class_labels_indices.csv`` for ``DEMO_CLASSES`` (mid ``/demo/<name>``)."""
    write_label_csv(out / "class_labels_indices.csv", [(f"/demo/{name}", display) for name, display in DEMO_CLASSES])


def _ensure_generated(root: Path, params: dict, write: Callable[[Path], None]) -> Path:
    """Return ``root`` if its marker records ``params``; else ``write`` a fresh folder and rename it into place.

    ``write(out)`` fills the new folder ``out``; the marker (JSON of ``params``) is added after it, so an
    interrupted run never leaves half a dataset. A folder made with other parameters is replaced; if
    another process completes ``root`` first, its copy is kept.
    """

    def complete() -> bool:
        try:
            return json.loads((root / _MARKER).read_text(encoding="utf-8")) == params
        except (OSError, ValueError):
            return False

    if complete():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write(tmp / "data")
        (tmp / "data" / _MARKER).write_text(to_json(params, sort_keys=True), encoding="utf-8")
        if root.exists():  # stale, partial or made with other parameters
            if complete():  # another process finished first
                return root
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / "data")
        try:
            os.replace(tmp / "data", root)
        except OSError:
            if not complete():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for old in root.parent.glob(f".{root.name}.old-*"):
            shutil.rmtree(old, ignore_errors=True)
    return root


def _write_dataset(out: Path, num_per_class: Dict[str, int], seed: int, seconds: float, sr: int) -> None:
    (out / "audio").mkdir(parents=True)
    _write_class_csv(out)
    for split_id, (split, count) in enumerate(num_per_class.items()):
        items = []
        for c, (name, _) in enumerate(DEMO_CLASSES):
            for k in range(count):
                g = item_generator(seed, split_id, c, k)
                wave = synthesize_clip(name, g, sr, seconds)
                rel = f"audio/{split}_{name}_{k:03d}.flac"
                save_audio(out / rel, wave.unsqueeze(0), sr)
                items.append({"wav": rel, "labels": f"/demo/{name}"})
        write_manifest(out / f"{split}.json", items)


def ensure_demo_audio(
    root: Optional[Union[str, os.PathLike]] = None,
    *,
    num_train_per_class: int = 40,
    num_eval_per_class: int = 10,
    seconds: float = 2.6,
    seed: int = 0,
    sample_rate: int = 16000,
) -> Path:
    """Return the demo dataset folder, generating it first if needed (deterministic in ``seed``).

    Default ``root``: ``$AVMAE_CACHE/demo_audio_v1`` or ``~/.cache/avmae/demo_audio_v1``.
    The defaults (6 classes x 50 clips of 2.6 s -> 258 fbank frames, cropped to a demo
    ``target_length`` of 256) take a few seconds to generate. Generation goes to a temporary
    folder that is renamed into place, so an interrupted run never leaves half a dataset; a
    folder made with other parameters is replaced.
    """
    root = Path(root) if root is not None else default_demo_root()
    params = {
        "version": DEMO_VERSION,
        "num_train_per_class": int(num_train_per_class),
        "num_eval_per_class": int(num_eval_per_class),
        "seconds": float(seconds),
        "seed": int(seed),
        "sample_rate": int(sample_rate),
    }

    def write(out: Path) -> None:
        _logger.info("generating demo audio in %s", root)
        _write_dataset(out, {"train": num_train_per_class, "eval": num_eval_per_class}, seed, seconds, sample_rate)

    return _ensure_generated(root, params, write)

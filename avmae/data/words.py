"""Generated "spoken words": a short-clip classification task in the class-per-folder layout.

Each clip's class is an ordered pair of syllables, so the order matters (a circular time roll that
splits a clip turns "AB" into something like "BA"): a low voiced tone (A), a high voiced tone (B), a
hiss (C, band noise 2.5-5 kHz) and a rising glide (D); words AB, BA, AC, CA, BD, DB. A clip is
0.55-1.0 s long; each has its own pitch (120-220 Hz), syllable length and gap; the word starts at
a random time over faint noise. Bag-of-spectra features (the mean and max log-mel over time) with a
linear classifier reach about 50 % (the order is invisible to them); chance is 1/6.

    write_word_folders("words", {"train": 40, "test": 15})   # words/train/AB/000.wav, ...
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict

import torch

from .io import save_audio

__all__ = ["WORDS", "word_clip", "write_word_folders"]

SR = 16000
WORDS = ["AB", "BA", "AC", "CA", "BD", "DB"]


def _rand(g, lo, hi):
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _syllable(kind: str, n: int, pitch: float, g: torch.Generator) -> torch.Tensor:
    t = torch.arange(n) / SR
    env = torch.sin(math.pi * torch.linspace(0, 1, n)).clamp_min(0.0) ** 0.5
    if kind == "C":
        spec = torch.fft.rfft(torch.randn(n, generator=g))
        freqs = torch.fft.rfftfreq(n, 1 / SR)
        return torch.fft.irfft(spec * ((freqs > 2500) & (freqs < 5000)), n) * env * 3
    if kind == "D":
        f = pitch * 2 * (1 + 1.5 * t / t[-1])
    else:
        f = torch.full((n,), pitch * (1.0 if kind == "A" else 2.6))
    phase = 2 * math.pi * torch.cumsum(f, 0) / SR
    return sum(torch.sin(k * phase) / k for k in range(1, 5)) * env


def word_clip(word: str, g: torch.Generator) -> torch.Tensor:
    """One clip ``[1, N]`` of ``word`` (two syllable letters)."""
    seconds = _rand(g, 0.55, 1.0)
    n = int(seconds * SR)
    pitch = _rand(g, 120, 220)
    syl = int(_rand(g, 0.17, 0.24) * SR)
    gap = int(_rand(g, 0.0, 0.05) * SR)
    length = 2 * syl + gap
    onset = int(_rand(g, 0, max(1, n - length)))
    out = torch.randn(n, generator=g) * 10 ** (_rand(g, -55, -45) / 20)
    level = 10 ** (_rand(g, -12, -3) / 20)
    for i, kind in enumerate(word):
        start = onset + i * (syl + gap)
        seg = _syllable(kind, syl, pitch, g)
        out[start : start + syl] += level * seg / seg.abs().max()
    return (out / out.abs().max().clamp_min(1.0)).unsqueeze(0)


def write_word_folders(root, per_class: Dict[str, int], *, words=WORDS, seed: int = 0) -> Dict[str, Path]:
    """``root/<split>/<word>/<k>.wav`` (16 kHz), ``per_class[split]`` clips of each word, made
    with ``seed`` -> {split: folder}."""
    root = Path(root)
    out = {}
    for s, (split, count) in enumerate(per_class.items()):
        for c, word in enumerate(words):
            g = torch.Generator().manual_seed(seed * 1_000_003 + s * 1000 + c)
            for k in range(count):
                save_audio(root / split / word / f"{k:03d}.wav", word_clip(word, g), SR)
        out[split] = root / split
    return out

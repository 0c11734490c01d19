"""Generated labelled sets in the class-per-subfolder layout, for measuring ``avmae finetune``.

Two kinds, each ``root/{train,test}/<class>/<k>.wav`` (16 kHz mono):

- **spoken words** (``write_spoken_words``): words said by speech synthesisers installed on the
  machine (``espeak-ng``, ``flite``; Debian packages of those names), each clip with its own voice,
  speed and pitch, trimmed, placed at a random onset over background noise at a drawn SNR. The
  test clips are said by voices the training clips never use (``TRAIN_VOICES`` / ``TEST_VOICES``
  are disjoint), so held-out accuracy measures words, not speakers. A synthesiser that is not
  installed raises ``SynthesiserMissing`` naming the package to install.
- **sound events** (``write_sound_events``): short non-speech sounds made here (no external
  program): a plucked string, a struck bell, a drum hit, hand claps, a whistle, a buzz, knocks and
  a bowed note, each with drawn pitch, timbre (partial weights, decay, brightness), length, onset,
  level and background noise.

Both are deterministic in ``seed``; ``ensure_*`` variants write once into a folder and reuse it
while its parameters are unchanged (the demo's cache rule).
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

from .demo import _ensure_generated
from .io import load_audio, save_audio

_logger = logging.getLogger(__name__)

__all__ = [
    "SR",
    "DIGITS",
    "COMMANDS",
    "EVENTS",
    "SynthesiserMissing",
    "Voice",
    "TRAIN_VOICES",
    "TEST_VOICES",
    "available_synthesisers",
    "speak",
    "event_clip",
    "add_noise",
    "write_spoken_words",
    "write_sound_events",
    "ensure_spoken_words",
    "ensure_sound_events",
]

SR = 16000
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COMMANDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
EVENTS = ["pluck", "bell", "drum", "claps", "whistle", "buzz", "knocks", "bowed"]
# the Debian package that provides each synthesiser's program
PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite"}


class SynthesiserMissing(RuntimeError):
    """A speech synthesiser the set needs is not installed (the message names the package)."""


@dataclass(frozen=True)
class Voice:
    """One synthesiser voice: ``synth`` (``espeak-ng`` / ``flite``) and its voice name."""

    synth: str
    name: str


def _espeak(langs: Sequence[str], variants: Sequence[str]) -> List[Voice]:
    return [Voice("espeak-ng", f"{lang}+{v}") for lang in langs for v in variants]


# disjoint accents and variants: no test voice is a training voice, and none shares its accent or its variant
TRAIN_VOICES: Dict[str, List[Voice]] = {
    "espeak-ng": _espeak(["en-us", "en-gb", "en-gb-scotland"], ["m1", "m3", "f1", "f3", "adam", "linda"]),
    "flite": [Voice("flite", v) for v in ("kal16", "awb", "rms")],
}
TEST_VOICES: Dict[str, List[Voice]] = {
    "espeak-ng": _espeak(["en-029", "en-gb-x-rp", "en-us-nyc"], ["m2", "m4", "f2", "f4", "steph", "david"]),
    "flite": [Voice("flite", v) for v in ("slt", "kal")],
}


def available_synthesisers() -> Dict[str, bool]:
    """{synthesiser: whether its program is on PATH}."""
    return {name: shutil.which(name) is not None for name in PACKAGES}


def _require(synth: str) -> str:
    exe = shutil.which(synth)
    if exe is None:
        raise SynthesiserMissing(
            f"{synth} is not installed (Debian/Ubuntu: apt-get install {PACKAGES[synth]}); the spoken-word sets need it"
        )
    return exe


def speak(voice: Voice, text: str, *, speed: float = 1.0, pitch: float = 0.5) -> torch.Tensor:
    """``text`` said by ``voice`` -> ``[N]`` at 16 kHz, leading and trailing silence trimmed.
    ``speed``: a rate factor (1 = the voice's own); ``pitch`` in [0, 1] (0.5 = the voice's own)."""
    exe = _require(voice.synth)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "say.wav"
        if voice.synth == "espeak-ng":
            cmd = [
                exe,
                "-v",
                voice.name,
                "-s",
                str(int(175 * speed)),
                "-p",
                str(int(100 * pitch)),
                "-w",
                str(out),
                text,
            ]
        else:
            f0 = {"slt": 170.0, "kal": 105.0}.get(voice.name, 110.0) * (0.75 + 0.5 * pitch)
            cmd = [exe, "-voice", voice.name, "-t", text, "-o", str(out)]
            cmd += ["--setf", f"duration_stretch={1.0 / speed:.3f}", "--setf", f"int_f0_target_mean={f0:.1f}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0 or not out.is_file():
            raise SynthesiserMissing(f"{' '.join(cmd)} failed: {done.stderr.strip()[:200]}")
        wave = load_audio(out, SR)[0]
    loud = (wave.abs() > 0.02 * wave.abs().max().clamp_min(1e-6)).nonzero().flatten()
    if len(loud) == 0:
        raise SynthesiserMissing(f"{voice.synth} voice {voice.name} said nothing for {text!r}")
    return wave[int(loud[0]) : int(loud[-1]) + 1]


# ------------------------------------------------------------------------------ noise


def _rand(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _coloured_noise(n: int, g: torch.Generator, exponent: float) -> torch.Tensor:
    """Noise of power spectrum ~ 1 / f^exponent (0 white, 1 pink, 2 brown)."""
    spec = torch.fft.rfft(torch.randn(n, generator=g))
    f = torch.fft.rfftfreq(n, 1 / SR).clamp_min(20.0)
    return torch.fft.irfft(spec / f ** (exponent / 2), n)


def _background(n: int, g: torch.Generator) -> torch.Tensor:
    """One of: white, pink, brown noise, mains hum with harmonics over pink noise, band noise."""
    kind = int(torch.randint(5, (1,), generator=g))
    if kind < 3:
        return _coloured_noise(n, g, float(kind))
    if kind == 3:
        t = torch.arange(n) / SR
        f0 = 50.0 if _rand(g, 0, 1) < 0.5 else 60.0
        hum = sum(torch.sin(2 * math.pi * f0 * k * t + _rand(g, 0, 6.3)) / k for k in range(1, 6))
        return hum + 0.3 * _coloured_noise(n, g, 1.0) / _coloured_noise(n, g, 1.0).std()
    spec = torch.fft.rfft(torch.randn(n, generator=g))
    f = torch.fft.rfftfreq(n, 1 / SR)
    lo = _rand(g, 200, 3000)
    return torch.fft.irfft(spec * ((f > lo) & (f < lo * _rand(g, 1.5, 3.0))), n)


def add_noise(signal: torch.Tensor, snr_db: float, g: torch.Generator) -> torch.Tensor:
    """``signal: [N]`` plus a drawn background at ``snr_db`` (power of the non-silent signal)."""
    noise = _background(signal.numel(), g)
    active = signal[signal.abs() > 0.01 * signal.abs().max()]
    p_sig = active.pow(2).mean() if active.numel() else signal.pow(2).mean()
    p_noise = noise.pow(2).mean().clamp_min(1e-12)
    return signal + noise * torch.sqrt(p_sig / p_noise / 10 ** (snr_db / 10))


def _place(sound: torch.Tensor, g: torch.Generator, pad: Tuple[float, float]) -> torch.Tensor:
    """``sound`` at a random onset in a clip ``pad`` seconds (drawn) longer."""
    n = sound.numel() + int(_rand(g, *pad) * SR)
    out = torch.zeros(n)
    onset = int(_rand(g, 0, n - sound.numel()))
    out[onset : onset + sound.numel()] = sound
    return out


def _finish(wave: torch.Tensor, g: torch.Generator, snr: Tuple[float, float]) -> torch.Tensor:
    wave = add_noise(wave, _rand(g, *snr), g)
    return (wave / wave.abs().max() * 10 ** (_rand(g, -12, -1) / 20)).unsqueeze(0)


# ------------------------------------------------------------------------------ spoken words


def write_spoken_words(
    root,
    per_class: Dict[str, int],
    *,
    words: Sequence[str] = DIGITS,
    synths: Sequence[str] = ("espeak-ng",),
    snr: Tuple[float, float] = (35.0, 45.0),
    seed: int = 0,
) -> Dict[str, Path]:
    """``root/<split>/<word>/<k>.wav``: ``per_class[split]`` clips of each word. The split named
    ``train`` draws its voices from ``TRAIN_VOICES`` of ``synths``, every other split from
    ``TEST_VOICES``; each clip has a drawn speed (0.75-1.35), pitch, onset (0.1-0.4 s of extra
    length) and background at an SNR drawn from ``snr`` (dB). -> {split: folder}."""
    for synth in synths:
        _require(synth)
    root = Path(root)
    out = {}
    for s, (split, count) in enumerate(per_class.items()):
        voices = [v for synth in synths for v in (TRAIN_VOICES if split == "train" else TEST_VOICES)[synth]]
        for c, word in enumerate(words):
            g = torch.Generator().manual_seed(seed * 1_000_003 + s * 1000 + c)
            for k in range(count):
                # synthesisers alternate so that each class has as many clips of each
                pool = [v for v in voices if v.synth == synths[k % len(synths)]]
                voice = pool[int(torch.randint(len(pool), (1,), generator=g))]
                said = speak(voice, word, speed=_rand(g, 0.75, 1.35), pitch=_rand(g, 0.2, 0.8))
                save_audio(root / split / word / f"{k:03d}.wav", _finish(_place(said, g, (0.1, 0.4)), g, snr), SR)
        out[split] = root / split
    return out


def _ensure_set(kind: str, write, root, per_class: Dict[str, int], kw: Dict[str, Any]) -> Dict[str, Path]:
    """``write(out, per_class, **kw)`` once into ``root``, kept while ``kind`` and the parameters stay
    the same -> {split: folder}."""
    params = {"kind": kind, "version": 1, "per_class": per_class}
    params.update({k: list(v) if isinstance(v, (tuple, list)) else v for k, v in kw.items()})
    _ensure_generated(Path(root), params, lambda out: write(out, per_class, **kw))
    return {split: Path(root) / split for split in per_class}


def ensure_spoken_words(root, per_class: Dict[str, int], **kw) -> Dict[str, Path]:
    """``write_spoken_words`` once into ``root`` (kept while its parameters are the same)."""
    return _ensure_set("spoken_words", write_spoken_words, root, per_class, kw)


# ------------------------------------------------------------------------------ sound events


def _partials(n: int, freqs: Sequence[float], amps: Sequence[float], decays: Sequence[float]) -> torch.Tensor:
    t = torch.arange(n) / SR
    out = torch.zeros(n)
    for f, a, d in zip(freqs, amps, decays):
        if f < SR / 2:
            out += a * torch.sin(2 * math.pi * f * t) * torch.exp(-t * d)
    return out


def _band(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    spec = torch.fft.rfft(torch.randn(n, generator=g))
    f = torch.fft.rfftfreq(n, 1 / SR)
    return torch.fft.irfft(spec * ((f > lo) & (f < hi)), n)


def event_clip(kind: str, g: torch.Generator) -> torch.Tensor:
    """One sound of class ``kind`` (one of ``EVENTS``) -> ``[N]``, 0.15-0.9 s, before placing."""
    n = int(_rand(g, 0.25, 0.9) * SR)
    t = torch.arange(n) / SR
    bright = _rand(g, 0.3, 1.0)  # how slowly the upper partials fall off
    if kind == "pluck":  # harmonic, sharp attack, upper partials decay faster
        f0 = 110 * 2 ** _rand(g, 0, 3)
        k = torch.arange(1, 13, dtype=torch.float32)
        return _partials(n, f0 * k, bright**k / k, _rand(g, 3, 8) * k**0.7)
    if kind == "bell":  # inharmonic partials, long decay
        f0 = 300 * 2 ** _rand(g, 0, 2)
        ratios = [1.0, 2.76, 5.40, 8.93, 13.34]
        return _partials(
            n, [f0 * r for r in ratios], [bright**i for i in range(5)], [_rand(g, 1.5, 4) * (1 + i) for i in range(5)]
        )
    if kind == "drum":  # a low pitch falling fast, and a noise burst
        f = _rand(g, 50, 120) * (1 + _rand(g, 1, 3) * torch.exp(-t * 30))
        body = torch.sin(2 * math.pi * torch.cumsum(f, 0) / SR) * torch.exp(-t * _rand(g, 6, 15))
        return body + 0.3 * bright * _band(n, 1000, 6000, g) * torch.exp(-t * 40)
    if kind == "claps":  # 2-5 bursts of band noise
        out = torch.zeros(n)
        lo = _rand(g, 700, 1500)
        for _ in range(int(torch.randint(2, 6, (1,), generator=g))):
            start = int(_rand(g, 0, 0.8) * n)
            m = min(n - start, int(0.06 * SR))
            out[start : start + m] += _band(m, lo, lo * 3, g) * torch.exp(-torch.arange(m) / SR * 60)
        return out
    if kind == "whistle":  # a near-pure tone with vibrato, slowly gliding
        f = _rand(g, 900, 2500) * (1 + _rand(g, -0.3, 0.3) * t / t[-1]) * (1 + 0.01 * torch.sin(2 * math.pi * 6 * t))
        phase = 2 * math.pi * torch.cumsum(f, 0) / SR
        return (torch.sin(phase) + 0.1 * bright * torch.sin(2 * phase)) * torch.sin(math.pi * t / t[-1]).sqrt()
    if kind == "buzz":  # a sawtooth-like tone with tremolo
        f0 = _rand(g, 80, 300)
        k = torch.arange(1, 25, dtype=torch.float32)
        tone = _partials(n, f0 * k, bright**k / k, torch.zeros(24))
        return tone * (1 + 0.5 * torch.sin(2 * math.pi * _rand(g, 4, 12) * t))
    if kind == "knocks":  # 2-4 short resonant impulses
        out = torch.zeros(n)
        f0 = _rand(g, 150, 600)
        gap = _rand(g, 0.08, 0.2)
        for i in range(int(torch.randint(2, 5, (1,), generator=g))):
            start = int(i * gap * SR)
            if start >= n:
                break
            m = min(n - start, int(0.08 * SR))
            out[start : start + m] += _partials(m, [f0, f0 * 2.3, f0 * 4.1], [1, bright, bright**2], [60, 90, 120])
        return out
    if kind == "bowed":  # harmonic, slow attack and release, sustained
        f0 = 150 * 2 ** _rand(g, 0, 2.5)
        k = torch.arange(1, 10, dtype=torch.float32)
        env = torch.clamp(t / _rand(g, 0.08, 0.25), max=1.0) * torch.clamp((t[-1] - t) / 0.08, max=1.0)
        return _partials(n, f0 * k, bright**k, torch.zeros(9)) * env
    raise ValueError(f"unknown event {kind!r}; one of {EVENTS}")


def write_sound_events(
    root,
    per_class: Dict[str, int],
    *,
    events: Sequence[str] = EVENTS,
    snr: Tuple[float, float] = (10.0, 30.0),
    seed: int = 0,
) -> Dict[str, Path]:
    """``root/<split>/<event>/<k>.wav``: ``per_class[split]`` clips of each event, 0.4-1.3 s
    (a 0.25-0.9 s sound at a random onset), background at an SNR drawn from ``snr``. -> {split: folder}."""
    root = Path(root)
    out = {}
    for s, (split, count) in enumerate(per_class.items()):
        for c, kind in enumerate(events):
            g = torch.Generator().manual_seed(seed * 1_000_003 + s * 1000 + c + 500)
            for k in range(count):
                sound = event_clip(kind, g)
                save_audio(root / split / kind / f"{k:03d}.wav", _finish(_place(sound, g, (0.1, 0.4)), g, snr), SR)
        out[split] = root / split
    return out


def ensure_sound_events(root, per_class: Dict[str, int], **kw) -> Dict[str, Path]:
    """``write_sound_events`` once into ``root`` (kept while its parameters are the same)."""
    return _ensure_set("sound_events", write_sound_events, root, per_class, kw)

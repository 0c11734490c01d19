"""What a set of clips looks like to the frontend: lengths and fbank statistics, from one decode.

``survey_clips(paths)`` decodes (a seeded sample of) the clips once and keeps, per clip, its number
of fbank frames and the per-frame sums of the un-normalised log-mel values and of their squares.
From that:

- ``survey.stats(target_length)``: the mean and (unbiased) std of every fbank value as the frontend
  sees it, each clip zero-padded or cropped to ``target_length`` frames (``None``: whole clips):
  the ``data.mean`` / ``data.std`` the frontend normalises with (AST and AudioMAE computed theirs
  this way, padding included). The length matters: on 1 s clips the padding of a 1024-frame input
  dominates (a mean near 0 and a large std instead of the speech's own);
- ``survey.frames``: the clips' lengths, for ``choose_target_length``.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch

from .audio import AudioFrontend
from .io import MediaError, load_audio

_logger = logging.getLogger(__name__)

__all__ = ["ClipSurvey", "survey_clips", "fbank_stats", "choose_target_length"]

PathLike = Union[str, os.PathLike]


@dataclass
class ClipSurvey:
    """Per readable clip: ``frames`` (fbank frames) and per-frame sums ``row_sum`` / ``row_sq``
    ([frames] float64 each, summed over the mel bins); ``skipped``: "path: reason" of the others."""

    paths: List[str] = field(default_factory=list)
    frames: List[int] = field(default_factory=list)
    row_sum: List[torch.Tensor] = field(default_factory=list)
    row_sq: List[torch.Tensor] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    num_mel_bins: int = 128
    sample_rate: int = 16000

    def stats(self, target_length: Optional[int]) -> Dict[str, object]:
        """Mean and unbiased std of the fbank values, each clip padded with zeros (in log-mel, as
        the frontend pads) or cropped to ``target_length`` frames; None: whole clips.
        -> dict(mean, std, files, frames, skipped, target_length, sample_rate, num_mel_bins)."""
        total = torch.zeros((), dtype=torch.float64)
        total_sq = torch.zeros((), dtype=torch.float64)
        frames = 0
        for s, q in zip(self.row_sum, self.row_sq):
            keep = s.shape[0] if target_length is None else min(s.shape[0], target_length)
            total += s[:keep].sum()
            total_sq += q[:keep].sum()
            frames += s.shape[0] if target_length is None else target_length  # padded frames are zeros
        n = frames * self.num_mel_bins
        if n < 2:
            raise ValueError(f"no readable audio among {len(self.paths) + len(self.skipped)} file(s)")
        mean = float(total / n)
        var = float((total_sq - n * mean * mean) / (n - 1))
        return {
            "mean": mean,
            "std": math.sqrt(max(var, 0.0)),
            "files": len(self.frames),
            "frames": frames,
            "skipped": list(self.skipped),
            "target_length": target_length,
            "sample_rate": self.sample_rate,
            "num_mel_bins": self.num_mel_bins,
        }


def survey_clips(
    paths: Sequence[PathLike],
    *,
    max_files: Optional[int] = 1000,
    seed: int = 0,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    progress: bool = False,
) -> ClipSurvey:
    """Decode a seeded sample of ``max_files`` of ``paths`` (all when None) once -> ``ClipSurvey``.
    Unreadable files are listed in ``skipped``, never fatal."""
    paths = [os.fspath(p) for p in paths]
    if max_files is not None and len(paths) > max_files:
        paths = sorted(random.Random(seed).sample(paths, max_files))
    fe = AudioFrontend(sample_rate=sample_rate, num_mel_bins=num_mel_bins, target_length=None)
    out = ClipSurvey(num_mel_bins=num_mel_bins, sample_rate=sample_rate)
    it: Iterable[str] = paths
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(paths, unit="file", desc="survey", dynamic_ncols=True)
    for p in it:
        try:
            x = fe.compute_fbank(load_audio(p, sample_rate)).double()
        except MediaError as err:
            out.skipped.append(str(err))
            continue
        out.paths.append(p)
        out.frames.append(int(x.shape[0]))
        out.row_sum.append(x.sum(dim=1))
        out.row_sq.append((x * x).sum(dim=1))
    return out


def fbank_stats(
    paths: Sequence[PathLike],
    *,
    max_files: Optional[int] = 1000,
    seed: int = 0,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    target_length: Optional[int] = 1024,
    progress: bool = False,
) -> Dict[str, object]:
    """Mean and (unbiased) std of every un-normalised fbank value over a seeded sample of
    ``max_files`` files (all when None). ``target_length``: pad/crop each clip as the frontend
    does (None: whole clips). -> dict(mean, std, files, frames, skipped, ...)."""
    survey = survey_clips(
        paths, max_files=max_files, seed=seed, sample_rate=sample_rate, num_mel_bins=num_mel_bins, progress=progress
    )
    return survey.stats(target_length)


def choose_target_length(
    frames: Sequence[int], *, percentile: float = 95.0, step: int = 16, minimum: int = 32, maximum: int = 1024
) -> int:
    """The input length for clips of ``frames`` fbank frames: the ``percentile`` of the lengths
    (nearest rank), rounded up to a multiple of ``step`` (the patch size), within
    [``minimum``, ``maximum``]. Shorter clips are padded, the few longer ones cropped."""
    if not frames:
        raise ValueError("no clip lengths to choose an input length from")
    ordered = sorted(int(f) for f in frames)
    rank = max(1, math.ceil(percentile / 100.0 * len(ordered)))
    length = -(-ordered[rank - 1] // step) * step
    return int(min(max(length, minimum), maximum))

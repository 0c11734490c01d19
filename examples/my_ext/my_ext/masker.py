"""A masker (``masking.maskers: {audio: {name: every_other_row, jitter: 0.5}}``): keeps the even
time rows first, so a mask ratio of 0.5 hides every odd row."""

from dataclasses import dataclass

import torch

from avmae.masking import Masker


@dataclass
class EveryOtherRowOptions:
    jitter: float = 0.5  # random order within the kept and within the hidden rows


class EveryOtherRow(Masker):
    options = EveryOtherRowOptions

    def __init__(self, *, jitter: float = 0.5) -> None:
        self.jitter = jitter

    def noise(self, batch, grid, ratio, *, device=None, generator=None):
        t, f = grid  # tokens are kept in ascending order of noise
        rows = (torch.arange(t, device=device) % 2).float()[:, None]
        jitter = self.jitter * torch.rand(batch, t, f, device=device, generator=generator)
        return (rows + jitter).reshape(batch, t * f)

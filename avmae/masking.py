"""Token masking: pure functions, and the registered maskers built on them.

Shapes: x [B, L, D] tokens of a modality on its ``grid`` (L = prod(grid), row-major);
noise [B, L]; mask [B, L] with 0 keep, 1 remove; ids_restore [B, L]; ids_keep [B, K].

Every masking takes optional external noise, so runs are reproducible and two implementations
can be compared on the same mask. MAE's rule: the tokens are sorted by ascending noise and the
first ``K`` are kept; a masker decides the noise (which tokens come first) and ``K``.

Registered maskers (``avmae.registry.MASKERS``, entry-point group ``avmae.maskers``), chosen per
modality by the model's ``maskers`` param (``masking.maskers`` in a run config):

==================  ==========================================================================
``random``          uniform noise: MAE / AudioMAE pretraining
``tube``            one spatial pattern for every time step of a (T, H, W) grid (VideoMAE)
``inverse_block``   square blocks of tokens are *kept*, the rest masked (data2vec 2.0, EAT)
``time_freq``       whole time rows and frequency columns kept (AudioMAE's fine-tuning masking)
==================  ==========================================================================

A new masker subclasses ``Masker`` and implements ``noise`` (and ``keep_count`` when its structure
fixes the number of kept tokens).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .registry import MASKERS, register_masker

__all__ = [
    "num_kept",
    "keep_by_noise",
    "random_masking",
    "structured_time_freq_mask",
    "Masker",
    "RandomMasker",
    "TubeMasker",
    "InverseBlockMasker",
    "TimeFreqMasker",
    "build_masker",
]

Grid = Sequence[int]
Masked = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def num_kept(length: int, ratio: float) -> int:
    """MAE's rule: keep ``int(L * (1 - ratio))`` tokens."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(length * (1 - ratio))


def keep_by_noise(x: torch.Tensor, keep: int, noise: torch.Tensor) -> Masked:
    """Keep the ``keep`` tokens of smallest noise (ascending argsort, as MAE).

    Returns x_kept [B, K, D] (in ascending-noise order), mask [B, L], ids_restore [B, L], ids_keep [B, K].
    """
    B, L, D = x.shape
    if noise.shape != (B, L):
        raise ValueError(f"noise must have shape {(B, L)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = torch.ones(B, L, device=x.device, dtype=torch.float32)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_kept, mask, ids_restore, ids_keep


def random_masking(x: torch.Tensor, ratio: float, noise: Optional[torch.Tensor] = None) -> Masked:
    """MAE random masking: ``keep_by_noise`` with ``int(L * (1 - ratio))`` kept, uniform noise by default."""
    B, L, _ = x.shape
    keep = num_kept(L, ratio)
    if noise is None:
        noise = torch.rand(B, L, device=x.device)
    return keep_by_noise(x, keep, noise)


def structured_time_freq_mask(
    x: torch.Tensor,
    grid: Grid,
    mask_t_prob: float,
    mask_f_prob: float,
    noise_t: Optional[torch.Tensor] = None,
    noise_f: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """AudioMAE fine-tuning masking: drop whole time rows, then whole frequency columns.

    x: [B, T*F, D] time-major tokens on grid (T, F). Keeps ``int(T*(1-pt))`` random rows and
    ``int(F*(1-pf))`` random columns (argsort of noise_t [B, T] / noise_f [B, F], ascending).
    Returns x_kept [B, T'*F', D] (rows in noise order, as the official code) and the kept mask
    [B, T*F] with 1 = removed.
    """
    B, L, D = x.shape
    T, Fq = int(grid[0]), int(grid[1])
    assert L == T * Fq, f"token count {L} does not match grid {T}x{Fq}"
    kt, kf = int(T * (1 - mask_t_prob)), int(Fq * (1 - mask_f_prob))
    if noise_t is None:
        noise_t = torch.rand(B, T, device=x.device)
    if noise_f is None:
        noise_f = torch.rand(B, Fq, device=x.device)
    keep_t = torch.argsort(noise_t.to(x.device), dim=1)[:, :kt]  # [B, T']
    keep_f = torch.argsort(noise_f.to(x.device), dim=1)[:, :kf]  # [B, F']
    xg = x.reshape(B, T, Fq, D)
    xg = torch.gather(xg, 1, keep_t[:, :, None, None].expand(-1, -1, Fq, D))
    xg = torch.gather(xg, 2, keep_f[:, None, :, None].expand(-1, kt, -1, D))
    rows = torch.zeros(B, T, dtype=torch.bool, device=x.device).scatter_(1, keep_t, True)
    cols = torch.zeros(B, Fq, dtype=torch.bool, device=x.device).scatter_(1, keep_f, True)
    # arithmetic, not a boolean-mask assignment: that would wait for the device (a nonzero)
    removed = 1.0 - (rows[:, :, None] & cols[:, None, :]).to(torch.float32)
    return xg.reshape(B, kt * kf, D), removed.reshape(B, L)


# ------------------------------------------------------------------------------------ maskers


class Masker:
    """Which tokens of a modality are hidden: noise in, keep / restore indices out.

    A subclass implements ``noise(batch, grid, ratio, device=None, generator=None) -> [B, L]``
    (the order in which tokens are kept, ascending) and may override ``keep_count(grid, ratio)``
    (MAE's ``int(L * (1 - ratio))``). ``masker(x, grid, ratio, noise=None)`` masks ``x [B, L, D]``
    and returns ``(x_kept [B, K, D], mask [B, L], ids_restore [B, L], ids_keep [B, K])``; given
    ``noise`` (a test, a comparison with another implementation) it is used as is. Constructor
    params come from the config (``{name: ..., <param>: ...}``) and are keyword-only.
    """

    def noise(
        self, batch: int, grid: Grid, ratio: float, *, device=None, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def keep_count(self, grid: Grid, ratio: float) -> int:
        return num_kept(math.prod(grid), ratio)

    def __call__(self, x: torch.Tensor, grid: Grid, ratio: float, noise: Optional[torch.Tensor] = None) -> Masked:
        if noise is None:
            noise = self.noise(x.shape[0], grid, ratio, device=x.device)
        return keep_by_noise(x, self.keep_count(grid, ratio), noise)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


@register_masker("random")
class RandomMasker(Masker):
    """Uniform noise: every token equally likely to be kept (MAE, AudioMAE pretraining)."""

    def noise(self, batch, grid, ratio, *, device=None, generator=None):
        return torch.rand(batch, math.prod(grid), device=device, generator=generator)


@register_masker("tube")
class TubeMasker(Masker):
    """Tube masking on a (T, H, W) grid (VideoMAE): the same spatial positions are removed in every
    time step. As VideoMAE, ``int(ratio * H*W)`` positions are removed per step, so only whole tubes
    are kept. A 2-D grid (one time step) is masked at random."""

    def noise(self, batch, grid, ratio, *, device=None, generator=None):
        if len(grid) != 3:
            return torch.rand(batch, math.prod(grid), device=device, generator=generator)
        steps, gh, gw = (int(g) for g in grid)
        n = gh * gw
        # every time step gets the same spatial order; the noise is the spatial rank plus t / T'
        # (< 1), so the sort visits whole tubes one after another with no chance of interleaving
        rank = torch.rand(batch, n, generator=generator, device=device).argsort(1).argsort(1).float()
        offset = torch.arange(steps, device=device, dtype=torch.float32) / steps
        return ((rank[:, None, :] + offset[None, :, None]) / n).reshape(batch, steps * n)

    def keep_count(self, grid, ratio):
        if len(grid) != 3:
            return super().keep_count(grid, ratio)
        num_kept(1, ratio)  # checks the ratio
        steps, n = int(grid[0]), int(grid[1]) * int(grid[2])
        return steps * (n - int(ratio * n))


@register_masker("inverse_block")
class InverseBlockMasker(Masker):
    """Inverse block masking (data2vec 2.0, EAT): square blocks of ``block`` x ``block`` tokens of a
    2-D grid are *kept* and everything else is masked, so the visible context comes in patches and
    the masked regions are large. Block centres are drawn so that the blocks cover about the kept
    share; exactly MAE's keep count is kept (blocks cut short, or single tokens added, at random)."""

    def __init__(self, *, block: int = 5) -> None:
        if int(block) < 1:
            raise ValueError(f"inverse_block: block must be >= 1 token, got {block}")
        self.block = int(block)

    def noise(self, batch, grid, ratio, *, device=None, generator=None):
        if len(grid) != 2:
            raise ValueError(f"inverse_block masks a 2-D token grid, got {tuple(grid)}")
        T, Fq = (int(g) for g in grid)
        L = T * Fq
        bt, bf = min(self.block, T), min(self.block, Fq)
        share = self.keep_count(grid, ratio) / L
        area = bt * bf / L
        # centres c such that the expected covered share 1 - (1 - area)^c equals the kept share
        centres = L if share >= 1 or area >= 1 else math.log1p(-share) / math.log1p(-area) if share > 0 else 0.0
        p = min(1.0, centres / L)
        picked = (torch.rand(batch, 1, T, Fq, device=device, generator=generator) < p).float()
        covered = F.max_pool2d(picked, kernel_size=(bt, bf), stride=1, padding=(bt // 2, bf // 2))[:, :, :T, :Fq]
        # covered tokens first (noise < 0.5), then the rest; random order inside each group
        jitter = torch.rand(batch, L, device=device, generator=generator) * 0.5
        return (1.0 - covered.reshape(batch, L)) + jitter


@register_masker("time_freq")
class TimeFreqMasker(Masker):
    """Whole time rows and frequency columns of a (T, F) grid kept, the rest masked: the kept tokens
    are those ``structured_time_freq_mask`` keeps (AudioMAE's fine-tuning masking), in its order.

    ``time_ratio`` / ``freq_ratio``: the shares of rows / columns removed; unset, both remove
    ``1 - sqrt(1 - ratio)`` so that about ``ratio`` of the tokens are masked."""

    def __init__(self, *, time_ratio: Optional[float] = None, freq_ratio: Optional[float] = None) -> None:
        for name, r in (("time_ratio", time_ratio), ("freq_ratio", freq_ratio)):
            if r is not None and not 0.0 <= r < 1.0:
                raise ValueError(f"time_freq: {name} must be in [0, 1), got {r}")
        self.time_ratio, self.freq_ratio = time_ratio, freq_ratio

    def _ratios(self, ratio: float) -> Tuple[float, float]:
        num_kept(1, ratio)  # checks the ratio
        side = 1.0 - math.sqrt(1.0 - ratio)
        return (
            side if self.time_ratio is None else self.time_ratio,
            side if self.freq_ratio is None else self.freq_ratio,
        )

    def keep_count(self, grid, ratio):
        T, Fq = (int(g) for g in grid)
        rt, rf = self._ratios(ratio)
        return int(T * (1 - rt)) * int(Fq * (1 - rf))

    def noise(self, batch, grid, ratio, *, device=None, generator=None):
        if len(grid) != 2:
            raise ValueError(f"time_freq masks a 2-D (time, frequency) grid, got {tuple(grid)}")
        T, Fq = (int(g) for g in grid)
        noise_t = torch.rand(batch, T, device=device, generator=generator)
        noise_f = torch.rand(batch, Fq, device=device, generator=generator)
        return self.noise_from(noise_t, noise_f, grid, ratio)

    def noise_from(self, noise_t: torch.Tensor, noise_f: torch.Tensor, grid: Grid, ratio: float) -> torch.Tensor:
        """[B, T*F] noise keeping the rows of ``noise_t [B, T]`` and columns of ``noise_f [B, F]``
        that ``structured_time_freq_mask`` keeps, ordered as it orders them (rows in noise order,
        then columns in noise order)."""
        T, Fq = (int(g) for g in grid)
        rt, rf = self._ratios(ratio)
        kt, kf = int(T * (1 - rt)), int(Fq * (1 - rf))
        rank_t = noise_t.argsort(1).argsort(1).float()  # [B, T] position of each row in noise order
        rank_f = noise_f.argsort(1).argsort(1).float()
        kept = (rank_t[:, :, None] < kt) & (rank_f[:, None, :] < kf)
        order = (rank_t[:, :, None] * Fq + rank_f[:, None, :]) / (T * Fq)  # in [0, 1)
        return (order + (~kept).float()).reshape(noise_t.shape[0], T * Fq)


MaskerSpec = Union[str, Mapping[str, Any], Masker]


def build_masker(spec: MaskerSpec) -> Masker:
    """A masker from a registered name, ``{"name": ..., <param>: ...}`` or a ``Masker``
    (``MASKERS.build``)."""
    return MASKERS.build(spec)


MASKERS.product = Masker

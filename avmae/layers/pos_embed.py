"""Fixed sin-cos positional embeddings (MAE's formula), for 1-D, 2-D and 3-D token grids.

All tables are computed in float64 and returned as float32 ``[L, D]``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = [
    "sincos_1d",
    "sincos_2d",
    "sincos_3d",
    "audiomae_sincos_2d",
    "float32_sincos_2d",
]


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """MAE's 1-D table. pos: [M] -> [M, dim]; first dim/2 columns sin, last dim/2 cos."""
    assert dim % 2 == 0, f"sin-cos embedding dim must be even, got {dim}"
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def _from_two_coords(dim: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    assert dim % 4 == 0, f"2-D sin-cos embedding dim must be a multiple of 4, got {dim}"
    return torch.cat([sincos_1d(dim // 2, a), sincos_1d(dim // 2, b)], dim=1).float()


def sincos_2d(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """Table for a row-major (H, W) grid: token k = h*W + w.

    Like MAE, the first half encodes the column (w), the second half the row (h).
    Returns [H*W, dim].
    """
    h, w = int(grid[0]), int(grid[1])
    hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return _from_two_coords(dim, ww.reshape(-1), hh.reshape(-1))


def audiomae_sincos_2d(dim: int, grid: Sequence[int], base_t: Optional[int] = None) -> torch.Tensor:
    """The table the released AudioMAE uses, for tokens laid out time-major on a (T', F') grid.

    The official code builds the table for a (F', T') grid while its tokens are (T', F')
    row-major, so token k gets codes (k % T', k // T') instead of (f, t). All codes stay
    unique; this reproduces the checkpoints' ``pos_embed`` exactly. Returns [T'*F', dim].

    ``base_t`` (default T'): the time rows of the grid the formula is laid out for. Token k then
    gets codes (k % base_t, k // base_t): with T' < base_t the table is the first rows of the
    base grid's table (the positions a model built for base_t rows saw at the start of its input),
    with T' > base_t the same formula continued past it.
    """
    t, f = int(grid[0]), int(grid[1])
    base = t if base_t is None else int(base_t)
    k = torch.arange(t * f)
    return _from_two_coords(dim, k % base, k // base)


def float32_sincos_2d(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """``sincos_2d`` computed in float32 throughout, as EAT's released code does it (numpy float32):
    at large row indices the float32 products differ from the float64 formula by up to ~2e-5, so
    a model built fresh has the table the released checkpoints store. Returns [H*W, dim]."""
    assert dim % 4 == 0, f"2-D sin-cos embedding dim must be a multiple of 4, got {dim}"
    h, w = int(grid[0]), int(grid[1])
    hh, ww = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")

    def one_d(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = torch.arange(d // 2, dtype=torch.float32) / torch.tensor(d / 2.0, dtype=torch.float32)
        omega = 1.0 / torch.pow(torch.tensor(10000.0, dtype=torch.float32), omega)
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([one_d(dim // 2, ww), one_d(dim // 2, hh)], dim=1)


def sincos_3d(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """Table for a (T, H, W) grid, token k = (t*H + h)*W + w.

    The channels are split: dim/4 for time, 3*dim/8 for each spatial axis (rounded to even
    numbers), so spatial codes keep most of the capacity as in video MAE variants.
    Returns [T*H*W, dim].
    """
    t, h, w = (int(g) for g in grid)
    assert dim % 16 == 0, f"3-D sin-cos embedding dim must be a multiple of 16, got {dim}"
    dt = dim // 4
    ds = (dim - dt) // 2
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    parts = [sincos_1d(ds, ww.reshape(-1)), sincos_1d(ds, hh.reshape(-1)), sincos_1d(dt, tt.reshape(-1))]
    return torch.cat(parts, dim=1).float()

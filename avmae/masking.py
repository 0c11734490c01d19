"""Token masking as pure functions. Every function takes optional external noise so that runs
are reproducible and two implementations can be compared on the same mask.

Shapes: x [B, L, D]; mask [B, L] with 0 keep, 1 remove; ids_restore [B, L].
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

__all__ = ["num_kept", "random_masking", "structured_time_freq_mask", "tube_noise"]


def num_kept(length: int, ratio: float) -> int:
    """MAE's rule: keep ``int(L * (1 - ratio))`` tokens."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(length * (1 - ratio))


def random_masking(
    x: torch.Tensor, ratio: float, noise: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE random masking by argsort of per-token noise (ascending: small is keep).

    Returns x_kept [B, K, D], mask [B, L], ids_restore [B, L], ids_keep [B, K].
    """
    B, L, D = x.shape
    keep = num_kept(L, ratio)
    if noise is None:
        noise = torch.rand(B, L, device=x.device)
    elif noise.shape != (B, L):
        raise ValueError(f"noise must have shape {(B, L)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = torch.ones(B, L, device=x.device, dtype=torch.float32)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_kept, mask, ids_restore, ids_keep


def structured_time_freq_mask(
    x: torch.Tensor,
    grid: Sequence[int],
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


def tube_noise(batch: int, grid: Sequence[int], generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Noise for tube masking on a (T, H, W) grid: one spatial pattern repeated over time.

    Feed it to ``random_masking``: tokens at the same (h, w) get the same noise plus a tiny
    time offset, so whole tubes are kept or removed together. Returns [B, T*H*W].
    """
    T, H, W = (int(g) for g in grid)
    spatial = torch.rand(batch, 1, H * W, generator=generator, device=device)
    # a per-frame offset far below the spatial spacing keeps tubes contiguous in the sort order
    offset = torch.arange(T, device=device, dtype=spatial.dtype).view(1, T, 1) * 1e-7
    return (spatial + offset).reshape(batch, T * H * W)

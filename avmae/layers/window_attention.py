"""Shifted-window attention blocks as in the released AudioMAE decoder (Swin-V2 "cr" family).

Per window: scaled cosine attention with a learned per-head temperature ``tau``, plus a continuous
relative position bias produced by a small MLP from log-spaced relative coordinates. Blocks are
post-norm: ``x + norm1(attn(x))``, ``x + norm2(mlp(x))``. Odd blocks shift the grid cyclically by
``shift`` before partitioning and add Swin's region mask (-100) so tokens that wrapped around do not
attend to their new neighbours.

Legend: B batch, T/F grid rows/columns (time/frequency for audio), w window tokens, h heads, C channels.

The position bias plus the shift mask form one additive bias ``[nW, h, w, w]`` that broadcasts over
the batch (no per-sample copy). The fused path folds the cosine normalisation and ``1/tau`` into q
and calls ``F.scaled_dot_product_attention``; the plain-math path (``fused=False``, and CPU
training, where SDPA has no fused kernel for a bias that needs a gradient) computes the released
code's formula directly.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp

__all__ = ["WindowAttention", "SwinBlock", "window_and_shift", "shift_region_mask"]


def window_and_shift(
    grid: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Clamp the window to the grid; no shift along an axis the window covers whole."""
    win = tuple(min(g, w) for g, w in zip(grid, window))
    sh = tuple(0 if g <= w else s for g, w, s in zip(grid, win, shift))
    return win, sh  # type: ignore[return-value]


def shift_region_mask(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    """Swin's additive mask for a cyclically shifted grid: [nW, w, w], 0 or -100."""
    T, Fq = grid
    wt, wf = window
    st, sf = shift
    labels = torch.zeros(T, Fq)
    cnt = 0
    # the same three slices per axis as Swin; a zero shift makes the last slice cover the axis
    for ts in (slice(0, -wt), slice(-wt, -st), slice(-st, None)):
        for fs in (slice(0, -wf), slice(-wf, -sf), slice(-sf, None)):
            labels[ts, fs] = cnt
            cnt += 1
    win = rearrange(labels, "(nt wt) (nf wf) -> (nt nf) (wt wf)", wt=wt, wf=wf)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class WindowAttention(nn.Module):
    """Scaled cosine attention inside windows with a continuous relative position bias.

    Parameter names follow the released AudioMAE decoder: ``qkv``, ``proj``, ``tau`` [heads],
    ``meta_mlp.fc1`` (2 -> meta_dim), ``meta_mlp.fc2`` (meta_dim -> heads).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        window: Sequence[int],
        meta_dim: int = 384,
        meta_drop: float = 0.1,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.window = tuple(window)
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.meta_mlp = Mlp(2, hidden_features=meta_dim, out_features=num_heads, act_layer=nn.ReLU, drop=meta_drop)
        self.tau = nn.Parameter(torch.ones(num_heads))
        wt, wf = self.window
        ct, cf = torch.meshgrid(torch.arange(wt), torch.arange(wf), indexing="ij")
        coords = torch.stack([ct.reshape(-1), cf.reshape(-1)])  # [2, w]
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).reshape(-1, 2).float()
        self.register_buffer("rel_coords_log", torch.sign(rel) * torch.log1p(rel.abs()), persistent=False)

    def position_bias(self) -> torch.Tensor:
        """[1, h, w, w] continuous relative position bias."""
        n = self.window[0] * self.window[1]
        bias = self.meta_mlp(self.rel_coords_log)  # [w*w, h]
        return bias.transpose(0, 1).reshape(1, self.num_heads, n, n)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [B*nW, w, C] windows grouped per sample; mask: [nW, w, w] additive or None."""
        Bw, n, C = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(Bw, n, 3, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)  # [Bw, h, w, d]
        bias = self.position_bias().to(q.dtype)  # [1, h, w, w]
        if mask is not None:
            bias = bias + mask.to(q.dtype).unsqueeze(1)  # [nW, h, w, w], broadcast over the batch
        nW = bias.shape[0]
        tau = self.tau.clamp(min=0.01)
        if self.fused and self._sdpa_fuses(x, bias):
            # cosine similarity / tau == (q/|q| * 1/tau) . (k/|k|); SDPA with scale 1. Windows of a
            # sample and heads share one axis so the [nW, h] bias broadcasts over the batch.
            q = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-6) * (1.0 / tau).view(1, -1, 1, 1).to(q.dtype)
            k = k / k.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            q, k, v = (t.reshape(Bw // nW, nW * h, n, -1) for t in (q, k, v))
            drop = self.attn_drop if self.training else 0.0
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias.reshape(1, nW * h, n, n), dropout_p=drop, scale=1.0
            )
            out = out.view(Bw, h, n, -1)
        else:
            # plain math, the released code's formula: q.k / clamp(|q| |k|) / tau + bias
            denom = q.norm(dim=-1, keepdim=True) * k.norm(dim=-1).unsqueeze(-2)  # outer product, [Bw, h, w, w]
            attn = (q @ k.transpose(-2, -1)) / (denom.clamp(min=1e-6) * tau.view(1, -1, 1, 1))
            attn = (attn.view(Bw // nW, nW, h, n, n) + bias).softmax(dim=-1).view(Bw, h, n, n)
            attn = F.dropout(attn, self.attn_drop, self.training)
            out = attn.to(v.dtype) @ v  # as autocast would cast it; keeps plain bf16 models working
        out = out.transpose(1, 2).reshape(Bw, n, C)
        return self.proj_drop(self.proj(out))

    @staticmethod
    def _sdpa_fuses(x: torch.Tensor, bias: torch.Tensor) -> bool:
        """Whether SDPA runs a fused kernel here. On CPU a bias that needs a gradient (training:
        the position bias is learned) sends SDPA to its generic math path, which is slower than
        the plain math below (measured in BENCHMARKS.md), so CPU training takes the plain math."""
        return not (x.device.type == "cpu" and bias.requires_grad)


class SwinBlock(nn.Module):
    """Post-norm shifted-window block over a (T, F) token grid. x: [B, T*F, C] -> same."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        grid: Sequence[int],
        window: Sequence[int] = (4, 4),
        shift: Sequence[int] = (0, 0),
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        meta_drop: float = 0.1,
        norm_eps: float = 1e-6,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.window, self.shift = window_and_shift(self.grid, window, shift)
        for g, w in zip(self.grid, self.window):
            if g % w:
                raise ValueError(f"window {self.window} does not tile the token grid {self.grid}")
        self.attn = WindowAttention(dim, num_heads=num_heads, window=self.window, meta_drop=meta_drop, fused=fused)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if any(self.shift):
            self.register_buffer("attn_mask", shift_region_mask(self.grid, self.window, self.shift), persistent=False)
        else:
            self.attn_mask = None

    def shifted_window_attention(self, x: torch.Tensor) -> torch.Tensor:
        T, Fq = self.grid
        wt, wf = self.window
        st, sf = self.shift
        x = rearrange(x, "b (t f) c -> b t f c", t=T, f=Fq)
        if st or sf:
            x = torch.roll(x, shifts=(-st, -sf), dims=(1, 2))
        win = rearrange(x, "b (nt wt) (nf wf) c -> (b nt nf) (wt wf) c", wt=wt, wf=wf)
        win = self.attn(win, mask=self.attn_mask)
        x = rearrange(win, "(b nt nf) (wt wf) c -> b (nt wt) (nf wf) c", nt=T // wt, nf=Fq // wf, wt=wt, wf=wf)
        if st or sf:
            x = torch.roll(x, shifts=(st, sf), dims=(1, 2))
        return rearrange(x, "b t f c -> b (t f) c")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.norm1(self.shifted_window_attention(x)))
        x = x + self.drop_path(self.norm2(self.mlp(x)))
        return x

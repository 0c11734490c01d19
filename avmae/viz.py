"""Reconstruction plots of a pretraining model: what it saw, what it was asked for, what it gave.

    reconstruct(model, fbank)          -> dict of arrays (input, masked, reconstruction, pasted, mask)
    plot_reconstruction(model, fbank)  -> matplotlib Figure, one row of four panels per modality

Panels: the input, the masked input (removed patches blank), the reconstruction (every patch as
predicted), and the reconstruction pasted into the visible patches (the input where the model saw
it, the prediction where it did not).

A model trained with ``norm_pix_loss`` (AudioMAE's released one was) predicts every patch
normalised by its own mean and (unbiased) variance, so its raw output has no level or contrast.
For display each predicted patch gets the true patch's statistics back,
``pred * sqrt(var + 1e-6) + mean``, computed from the input exactly as the loss normalises its
target; the figure says so. Nothing of the hidden patches leaks into the shape of the prediction,
only its level and scale.

Audio panels show time in seconds (10 ms fbank frames) against mel bins, on one colour scale per
row (the input's range) with a colour bar. Frames of a ``video`` modality are shown side by side,
un-normalised with ImageNet's mean/std.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

__all__ = ["PANELS", "reconstruct", "plot_reconstruction", "plot_arrays", "mask_noise", "denormalize_patches"]

PANELS = ("input", "masked", "reconstruction", "pasted")
_TITLES = {
    "input": "input",
    "masked": "masked input",
    "reconstruction": "reconstruction",
    "pasted": "reconstruction + visible",
}

# ImageNet statistics, with which frames are normalised for the video branch
_RGB_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_RGB_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

Inputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]


def denormalize_patches(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Undo ``norm_pix_loss``'s per-patch normalisation with the target's own statistics.

    pred, target: [B, L, P] -> pred * sqrt(var(target) + eps) + mean(target) (unbiased var, as the loss).
    """
    target = target.float()
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return pred.float() * (var + eps) ** 0.5 + mean


def mask_noise(model: nn.Module, seed: int, batch: int = 1, mask_ratio=None) -> Dict[str, torch.Tensor]:
    """Masking noise ``{modality: [B, L]}`` drawn from ``seed`` by each modality's masker (at the
    model's ratios, or ``mask_ratio``: a float or {modality: ratio})."""
    g = torch.Generator().manual_seed(int(seed))
    ratios = dict(model.mask_ratio)
    if isinstance(mask_ratio, Mapping):
        ratios.update(mask_ratio)
    elif mask_ratio is not None:
        ratios = {m: float(mask_ratio) for m in ratios}
    return {m: model.maskers[m].noise(batch, mod.grid, ratios[m], generator=g) for m, mod in model.modalities.items()}


def _batch_of_one(model: nn.Module, inputs: Inputs) -> Dict[str, torch.Tensor]:
    mods = model.modalities
    if isinstance(inputs, torch.Tensor):
        if len(mods) != 1 and "audio" not in mods:
            raise ValueError(f"pass a dict of inputs for a model with modalities {list(mods)}")
        key = "audio" if "audio" in mods else next(iter(mods))
        inputs = {key: inputs}
    missing = [m for m in mods if m not in inputs]
    if missing:
        raise KeyError(f"inputs lack modalities {missing}; the model takes {list(mods)}")
    out = {}
    for m, mod in mods.items():
        x = torch.as_tensor(inputs[m])
        want = len(getattr(mod, "input_shape", x.shape[1:]))
        while x.dim() < want + 1:  # [T, F] or [1, T, F] -> [1, 1, T, F]
            x = x.unsqueeze(0)
        if x.shape[0] != 1:
            raise ValueError(f"{m}: give one clip (batch of 1), got shape {list(x.shape)}")
        out[m] = x.float()
    return out


@torch.no_grad()
def reconstruction_length(model: nn.Module, frames: int) -> int:
    """Input length (frames) to reconstruct a clip of ``frames`` real frames with ``model``: its own
    length when the clip fills it or the model takes only its own (``avmae.hub.length_step``), else
    the clip's length rounded up to what the decoder tiles (16 frames a time row; a shifted-window
    decoder needs whole windows), so a 1 s clip is not padded to a 10 s input."""
    from .hub import input_size, length_step

    length, _ = input_size(model)
    step = length_step(model)
    if step is None or frames >= length:
        return length
    windows = [getattr(b, "window", (1,))[0] for b in getattr(getattr(model, "decoder", None), "blocks", ())]
    rows = -(-frames // step)
    tile = max(windows, default=1)
    if rows > tile:
        rows = -(-rows // tile) * tile
    return min(length, rows * step)


def reconstruct(
    model: nn.Module,
    fbank: Inputs,
    *,
    mask_ratio: Union[float, Mapping[str, float], None] = None,
    noise: Optional[Mapping[str, torch.Tensor]] = None,
    seed: Optional[int] = None,
) -> Dict[str, np.ndarray]:
    """Mask one clip, run the model, and return what to draw.

    Args:
        model: a pretraining model (``model(inputs, mask_ratio, noise) -> MAEOutput``).
        fbank: the audio input ``[T, F]``, ``[1, T, F]`` or ``[1, 1, T, F]`` (normalised fbank, as
            the frontend makes it), or a dict of inputs by modality for other models.
        mask_ratio: default: the model's.
        noise: masking noise ``{modality: [1, L]}`` (argsort ascending keeps); default: from
            ``seed`` when given, else the global RNG.

    Returns a dict of numpy arrays, per modality ``m`` under ``"{m}/<name>"`` and, for the first
    modality, also under the bare name: ``input``, ``masked`` (NaN where removed),
    ``reconstruction``, ``pasted``, ``mask`` (pixel mask, 1 = removed) -- audio ``[T, F]``, video
    ``[Tv, C, H, W]`` -- ``token_mask [L]`` and ``mask_ratio`` (the fraction removed); per
    modality only, ``"{m}/loss"``; plus ``loss`` (the total) and ``norm_pix`` (whether predictions
    were de-normalised). Scalars are 0-d arrays.
    """
    if not hasattr(model, "decoder"):
        raise TypeError(
            f"{type(model).__name__} is not a pretraining model (it has no decoder): reconstruction needs one"
        )
    inputs = _batch_of_one(model, fbank)
    if noise is None and seed is not None:
        noise = mask_noise(model, seed, mask_ratio=mask_ratio)
    device = next(model.parameters()).device
    inputs = {m: x.to(device) for m, x in inputs.items()}
    if noise is not None:
        noise = {m: n.to(device) for m, n in noise.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(inputs, mask_ratio=mask_ratio, noise=noise)
    finally:
        model.train(was_training)
    for m, mod in model.modalities.items():
        if out.pred[m].shape[-1] != mod.patch_dim or out.pred[m].shape[0] != 1:
            raise TypeError(
                f"{type(model).__name__} predicts {out.pred[m].shape[-1]} values for {out.pred[m].shape[0]} masked"
                f" view(s) of each {m} patch, not the patch itself ({mod.patch_dim} values, one view): there is no"
                " reconstruction to show"
            )
    norm_pix = bool(getattr(model, "norm_pix_loss", False))
    result: Dict[str, np.ndarray] = {"loss": np.asarray(float(out.loss)), "norm_pix": np.asarray(norm_pix)}
    for i, (m, mod) in enumerate(model.modalities.items()):
        target = mod.patchify(inputs[m]).float()
        pred = out.pred[m].float()
        shown = denormalize_patches(pred, target) if norm_pix else pred
        removed = out.mask[m].bool().unsqueeze(-1).expand_as(target)
        images = {
            "input": inputs[m].float(),
            "masked": mod.unpatchify(target.masked_fill(removed, float("nan"))),
            "reconstruction": mod.unpatchify(shown),
            "pasted": mod.unpatchify(torch.where(removed, shown, target)),
            "mask": mod.unpatchify(removed.float()),
        }
        part = {k: _squeeze(v[0]) for k, v in images.items()}
        part["token_mask"] = out.mask[m][0].float().cpu().numpy()
        part["mask_ratio"] = np.asarray(float(out.mask[m].float().mean()))
        part["loss"] = np.asarray(float(out.losses.get(f"mae_{m}", out.loss)))
        for k, v in part.items():
            result[f"{m}/{k}"] = v
            if i == 0 and k != "loss":  # the bare "loss" is the total
                result[k] = v
    return result


def _squeeze(x: torch.Tensor) -> np.ndarray:
    x = x.detach().float().cpu()
    if x.dim() == 3 and x.shape[0] == 1:  # audio [1, T, F] -> [T, F]
        x = x[0]
    return x.numpy()


# ------------------------------------------------------------------------------ drawing


def _modalities_in(rec: Mapping[str, np.ndarray]) -> Sequence[str]:
    seen = []
    for k in rec:
        m, sep, name = k.partition("/")
        if sep and name == "input" and m not in seen:
            seen.append(m)
    return seen


def _rgb_strip(frames: np.ndarray) -> np.ndarray:
    """[Tv, C, H, W] normalised frames -> [H, Tv*W, 3] in [0, 1]; NaN (removed) shown grey."""
    x = np.transpose(frames, (2, 0, 3, 1))  # H, Tv, W, C
    if x.shape[-1] == 3:
        x = x * _RGB_STD + _RGB_MEAN
    x = np.where(np.isnan(x), 0.8, x)
    h, t, w, c = x.shape
    x = x.reshape(h, t * w, c)
    if c == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.clip(x, 0.0, 1.0)


def plot_arrays(
    rec: Mapping[str, np.ndarray],
    *,
    title: Optional[str] = None,
    frame_shift_ms: float = 10.0,
    cmap: str = "viridis",
    path: Union[str, os.PathLike, None] = None,
    dpi: int = 120,
):
    """Draw the output of ``reconstruct`` -> ``matplotlib.figure.Figure`` (saved to ``path`` if given)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    mods = _modalities_in(rec)
    if not mods:
        raise ValueError("no '<modality>/input' arrays to draw; pass the output of reconstruct()")
    heights = []
    for m in mods:  # frame strips are wide and short: give their rows the height they need
        x = rec[f"{m}/input"]
        heights.append(max(1.4, 4.0 * x.shape[-2] / (x.shape[0] * x.shape[-1]) + 0.8) if x.ndim == 4 else 3.4)
    fig = Figure(figsize=(4.2 * len(PANELS) + 1.2, sum(heights) + 0.9), layout="constrained")
    axes = fig.subplots(len(mods), len(PANELS), squeeze=False, gridspec_kw={"height_ratios": heights})
    colour = colormaps[cmap].with_extremes(bad="lightgrey")
    for row, m in zip(axes, mods):
        first = rec[f"{m}/input"]
        if first.ndim == 2:  # a spectrogram [T, F]: time along x, mel bins along y
            T, F = first.shape
            extent = (0.0, T * frame_shift_ms / 1000.0, 0.0, float(F))
            vmin, vmax = float(np.nanmin(first)), float(np.nanmax(first))
            im = None
            for ax, panel in zip(row, PANELS):
                im = ax.imshow(
                    np.ma.masked_invalid(rec[f"{m}/{panel}"]).T,
                    origin="lower",
                    aspect="auto",
                    extent=extent,
                    cmap=colour,
                    vmin=vmin,
                    vmax=vmax,
                    interpolation="nearest",
                )
                ax.set_title(f"{m}: {_TITLES[panel]}", fontsize=10)
                ax.set_xlabel("time (s)")
            row[0].set_ylabel("mel bin")
            fig.colorbar(im, ax=list(row), shrink=0.9, label="normalised log-mel")
        elif first.ndim == 4:  # frames [Tv, C, H, W]
            for ax, panel in zip(row, PANELS):
                ax.imshow(_rgb_strip(rec[f"{m}/{panel}"]), interpolation="nearest")
                ax.set_title(f"{m}: {_TITLES[panel]}", fontsize=10)
                ax.set_axis_off()
        else:
            for ax in row:
                ax.set_axis_off()
            row[0].set_title(f"{m}: no drawing for inputs of shape {list(first.shape)}", fontsize=10)
    head = []
    for m in mods:
        ratio = float(rec[f"{m}/mask_ratio"])
        L = rec[f"{m}/token_mask"].size
        head.append(
            f"{m}: mask ratio {ratio:.2f} ({int(round(ratio * L))}/{L} patches), loss {float(rec[f'{m}/loss']):.4f}"
        )
    text = ("" if title is None else f"{title}\n") + "; ".join(head)
    if len(mods) > 1:
        text += f"; total loss {float(rec['loss']):.4f}"
    if bool(rec.get("norm_pix", False)):
        text += (
            "\nnorm_pix_loss model: each predicted patch shown with the true patch's mean/std restored (pred * sqrt(var"
            " + 1e-6) + mean)"
        )
    fig.suptitle(text, fontsize=10)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def plot_reconstruction(
    model: nn.Module,
    fbank: Inputs,
    *,
    mask_ratio: Union[float, Mapping[str, float], None] = None,
    noise: Optional[Mapping[str, torch.Tensor]] = None,
    seed: Optional[int] = None,
    path: Union[str, os.PathLike, None] = None,
    title: Optional[str] = None,
    **kwargs: Any,
):
    """``reconstruct`` then ``plot_arrays``: a four-panel figure per modality, saved to ``path`` (PNG)
    if given. -> ``matplotlib.figure.Figure`` (no pyplot state is touched)."""
    rec = reconstruct(model, fbank, mask_ratio=mask_ratio, noise=noise, seed=seed)
    return plot_arrays(rec, title=title, path=path, **kwargs)

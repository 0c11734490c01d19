"""Benchmark harness interfaces: the HEAR API and an X-ARES-style encoder, over any audio encoder.

HEAR (https://hearbenchmark.com) calls three functions of a module::

    import avmae.hear as hear
    model = hear.load_model("runs/my-pretraining")           # or a .safetensors / official .pth / model folder
    scene = hear.get_scene_embeddings(audio, model)            # audio [n, samples] at model.sample_rate -> [n, D]
    emb, ts = hear.get_timestamp_embeddings(audio, model)      # -> [n, frames, D], timestamps [n, frames] in ms

X-ARES (https://github.com/jimbozhang/xares) takes an encoder object::

    encoder = XaresEncoder("runs/my-pretraining")             # sampling_rate, output_dim, hop_size_in_ms
    frames = encoder(audio)                                    # [B, samples] -> [B, frames, D]

What the embeddings are (``AudioEmbedder``). The clip's normalised fbank (the training frontend,
``avmae.hub.frontend_for``) is cut into windows of the model's input length; a shorter last window
runs at its own length (rounded up to 16 frames) when the model takes other lengths, else it is
zero-padded. Each window's patch tokens (a pretraining model: after its final norm; a classifier:
its encoder output) are averaged over frequency into one vector per 16-frame time row; the rows
holding real frames are kept and concatenated over windows: the timestamp embeddings, one every
160 ms, stamped at the centre of their frames (row r: 160 r + 87.5 ms, 10 ms frames of 25 ms).
A classifier's rows pass through its ``fc_norm``, as its pooled features do. The scene embedding is
the mean of the rows (a classifier: ``fc_norm`` of the mean of the raw rows, its pooled features on
a clip of one window). The weights are frozen (``eval`` mode, no gradients).
"""

from __future__ import annotations

import math
import os
from typing import Any, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from .data import AudioFrontend
from .hub import frontend_for, input_size, length_step

__all__ = [
    "AudioEmbedder",
    "XaresEncoder",
    "load_model",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "load_embedder",
]

PathLike = Union[str, os.PathLike]

FRAME_SHIFT_MS = 10.0
FRAME_LENGTH_MS = 25.0


class AudioEmbedder(nn.Module):
    """Waveforms -> timestamp and scene embeddings of a frozen audio encoder (see the module doc).

    Args:
        model: an AudioMAE-style pretraining model or classifier (one ``audio`` modality).
        frontend: the training frontend (its statistics and sample rate; its length is ignored).
        batch_size: windows per forward pass.

    Attributes (HEAR): ``sample_rate``, ``scene_embedding_size``, ``timestamp_embedding_size``.
    """

    def __init__(self, model: nn.Module, frontend: Optional[AudioFrontend] = None, *, batch_size: int = 16) -> None:
        super().__init__()
        mods = getattr(model, "modalities", None)
        if mods is None or list(mods) != ["audio"]:
            raise ValueError(
                f"{type(model).__name__} is not a single-modality audio encoder (modalities: {list(mods or [])})"
            )
        self.is_mae = hasattr(model, "decoder")
        if not self.is_mae and not (hasattr(model, "forward_tokens") and hasattr(model, "fc_norm")):
            raise ValueError(f"{type(model).__name__} has neither a pretraining encoder nor forward_tokens/fc_norm")
        self.model = model.eval().requires_grad_(False)
        self.window, num_mel_bins = input_size(model)
        fe = frontend or frontend_for(model)
        if fe.num_mel_bins != num_mel_bins:
            raise ValueError(f"frontend has {fe.num_mel_bins} mel bins, the model takes {num_mel_bins}")
        self.frontend = AudioFrontend(
            sample_rate=fe.sample_rate,
            num_mel_bins=num_mel_bins,
            target_length=None,
            mean=fe.mean,
            std=fe.std,
            style=getattr(fe, "style", "audiomae"),
        )
        self.mod = mods["audio"]
        self.patch = int(self.mod.patch_size)
        self.step = length_step(model)
        self.batch_size = int(batch_size)
        self.sample_rate = self.frontend.sample_rate
        self.embed_dim = int(model.embed_dim)
        self.scene_embedding_size = self.embed_dim
        self.timestamp_embedding_size = self.embed_dim
        self.hop_ms = self.patch * FRAME_SHIFT_MS

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ pieces
    def fbank(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio [n, samples]`` -> normalised fbank ``[n, T, F]`` (each clip's mean removed)."""
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if audio.dim() != 2:
            raise ValueError(f"audio must be [n, samples] (mono, {self.sample_rate} Hz), got {list(audio.shape)}")
        clips = [self.frontend.compute_fbank(a.detach().float().cpu().unsqueeze(0)) for a in audio]
        return self.frontend.normalize(torch.stack(clips))

    def windows(self, frames: int) -> List[Tuple[int, int, int]]:
        """(start, input length, real frames) of the windows covering ``frames`` frames."""
        out = []
        for start in range(0, max(frames, 1), self.window):
            real = min(self.window, frames - start)
            length = self.window if self.step is None else min(self.window, -(-real // self.step) * self.step)
            out.append((start, length, real))
        return out

    def _row_means(self, x: torch.Tensor) -> torch.Tensor:
        """``x [b, 1, T, F]`` -> raw per-time-row means of the patch tokens ``[b, T/16, D]``."""
        inputs = {"audio": x.to(self.device)}
        if self.is_mae:
            tokens = self.model.forward_features(inputs)
        else:
            tokens = self.model.forward_tokens(inputs, mask=False)
        tokens = tokens[:, tokens.shape[1] - math.prod(self.mod.input_grid(x)) :]  # the cls token dropped
        t = x.shape[2] // self.patch
        f = tokens.shape[1] // t
        grid = (
            tokens.reshape(x.shape[0], t, f, -1)
            if self.mod.layout == "tf"
            else tokens.reshape(x.shape[0], f, t, -1).transpose(1, 2)
        )
        return grid.mean(dim=2).float()

    def _post(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.is_mae else self.model.fc_norm(rows)

    @torch.no_grad()
    def raw_rows(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio [n, samples]`` -> raw per-time-row token means ``[n, rows, D]`` over the whole
        clip (the rows holding real frames, concatenated over windows)."""
        x = self.fbank(audio)
        n, T, F_ = x.shape
        parts = []
        for start, length, real in self.windows(T):
            win = x[:, start : start + real]
            if length > real:  # zeros in log-mel before normalisation, as the frontend pads
                pad = torch.full((n, length - real, F_), self.frontend.normalize(torch.zeros(())).item())
                win = torch.cat([win, pad], dim=1)
            win = win.unsqueeze(1)
            rows = torch.cat([self._row_means(win[i : i + self.batch_size]) for i in range(0, n, self.batch_size)])
            parts.append(rows[:, : -(-real // self.patch)])
        return torch.cat(parts, dim=1)

    def timestamps(self, rows: int) -> torch.Tensor:
        """Centres of ``rows`` 16-frame rows in ms: ``[rows]``."""
        first = (self.patch - 1) * FRAME_SHIFT_MS / 2 + FRAME_LENGTH_MS / 2
        return first + self.hop_ms * torch.arange(rows, dtype=torch.float32)

    # ------------------------------------------------------------------ the two views
    @torch.no_grad()
    def timestamp_embeddings(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``audio [n, samples]`` -> (embeddings ``[n, rows, D]``, timestamps ``[n, rows]`` in ms)."""
        rows = self.raw_rows(audio)
        ts = self.timestamps(rows.shape[1]).expand(rows.shape[0], -1)
        return self._post(rows).cpu(), ts.clone()

    @torch.no_grad()
    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio [n, samples]`` -> ``[n, D]``."""
        return self._post(self.raw_rows(audio).mean(dim=1)).cpu()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio [n, samples]`` -> timestamp embeddings ``[n, rows, D]``."""
        return self.timestamp_embeddings(audio)[0]


def load_embedder(
    path: PathLike = "",
    *,
    model_name: Optional[str] = None,
    device: Union[str, torch.device, None] = None,
    norm: Optional[str] = None,
    mean: Optional[float] = None,
    std: Optional[float] = None,
    batch_size: int = 16,
    **overrides: Any,
) -> AudioEmbedder:
    """``AudioEmbedder`` of a checkpoint (anything ``avmae.hub.load_pretrained`` reads, or a
    ``save_pretrained`` folder); ``model_name`` without a path builds that model untrained (plumbing
    tests). ``norm`` / ``mean`` / ``std`` override the checkpoint's statistics."""
    from pathlib import Path

    from .hub import PRETRAINED_CONFIG, from_pretrained, load_pretrained

    if not path:
        if not model_name:
            raise ValueError("pass the path of a checkpoint (or model_name= for an untrained model)")
        import avmae

        model, config = avmae.create_model(model_name, **overrides), None
    elif Path(path).is_dir() and (Path(path) / PRETRAINED_CONFIG).is_file():
        model = from_pretrained(path, **overrides)
        config = getattr(model, "avmae_config", None)
    else:
        model, report = load_pretrained(path, model_name=model_name, **overrides)
        config = report.config
    if device is not None:
        model.to(device)
    return AudioEmbedder(model, frontend_for(model, config, norm=norm, mean=mean, std=std), batch_size=batch_size)


# ------------------------------------------------------------------------------ HEAR


def load_model(model_file_path: str = "", **kwargs: Any) -> AudioEmbedder:
    """HEAR: the model of ``model_file_path`` (see ``load_embedder`` for ``kwargs``)."""
    return load_embedder(model_file_path, **kwargs)


def get_scene_embeddings(audio: torch.Tensor, model: AudioEmbedder) -> torch.Tensor:
    """HEAR: ``audio [n, samples]`` at ``model.sample_rate`` -> ``[n, model.scene_embedding_size]``."""
    return model.scene_embeddings(audio)


def get_timestamp_embeddings(audio: torch.Tensor, model: AudioEmbedder) -> Tuple[torch.Tensor, torch.Tensor]:
    """HEAR: ``audio [n, samples]`` -> (``[n, frames, model.timestamp_embedding_size]``,
    timestamps ``[n, frames]`` in ms, one every 160 ms)."""
    return model.timestamp_embeddings(audio)


# ------------------------------------------------------------------------------ X-ARES


class XaresEncoder(nn.Module):
    """An X-ARES-style encoder: ``forward(audio [B, samples]) -> [B, frames, output_dim]``.

    ``source``: a checkpoint path (see ``load_embedder``, whose ``kwargs`` it takes) or an
    ``AudioEmbedder``. Attributes: ``sampling_rate``, ``output_dim``, ``hop_size_in_ms`` (160),
    ``device``. Audio at another rate may be given with ``sampling_rate=`` (resampled)."""

    def __init__(self, source: Union[PathLike, AudioEmbedder] = "", **kwargs: Any) -> None:
        super().__init__()
        self.embedder = source if isinstance(source, AudioEmbedder) else load_embedder(source, **kwargs)
        self.sampling_rate = self.embedder.sample_rate
        self.output_dim = self.embedder.timestamp_embedding_size
        self.hop_size_in_ms = self.embedder.hop_ms

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    def forward(self, audio: torch.Tensor, sampling_rate: Optional[int] = None) -> torch.Tensor:
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if sampling_rate is not None and int(sampling_rate) != self.sampling_rate:
            import torchaudio

            audio = torchaudio.functional.resample(audio.float(), int(sampling_rate), self.sampling_rate)
        return self.embedder.timestamp_embeddings(audio)[0].to(audio.device)

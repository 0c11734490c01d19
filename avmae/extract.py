"""Embeddings of audio files from any encoder checkpoint.

    files --load_audio--> waveform --fbank (whole clip)--> windows [n, 1, W, F] --model--> per window
        --mean over windows (weighted by real frames)--> one vector per file

What is computed for each window (W = the model's ``target_length`` frames, F mel bins):

- ``embedding [D]``: a pretraining model's encoder on all tokens (no masking), final norm, mean over
  the patch tokens (cls excluded); a classifier's ``forward_features`` (its pooled, ``fc_norm``-ed
  head input).
- ``patches [L, D]`` (``patches=True``): the patch tokens themselves (a classifier's are taken before
  pooling, without a final norm, as its head sees them).
- ``contextual [D]`` (``contextual_from=k``, pretraining models): AudioMAE's "contextual" features,
  the mean of the normed outputs of every block after block k (k=8 on ViT-B: blocks 9-11), then the
  mean over patch tokens; with ``patches=True`` also ``contextual_patches [L, D]``.

Clips longer than W frames are cut into windows of W frames every ``hop`` frames (default ``hop =
W``: no overlap); a window that runs past the end of the clip is zero-padded (in log-mel, before
normalisation, as AudioMAE pads short clips). A clip of at most W frames is one window: for a model
that takes inputs of other lengths (AudioMAE-style encoders, see ``avmae.modalities.audio``) it is
the clip itself, padded only to a multiple of 16 frames (a 1 s clip is not padded to a 10 s
window); otherwise, or with ``variable_length=False``, it is padded to W frames, i.e. exactly the
model's input under the training frontend. The file's vectors are the means over its
windows, each window weighted by the number of real (unpadded) frames it holds: with the default
hop every frame of the clip counts once, and a short padded tail (a 2.58 s clip in 2.56 s windows)
counts for its 2 frames, not for half the clip. ``keep_windows=True`` keeps the per-window vectors
(``window_embedding [n, D]``, ...) and their ``window_frames [n]``; ``patches`` are always per
window ``[n, L, D]``. A hop larger than W leaves gaps.

Files that cannot be read (``avmae.data.MediaError``) are skipped and reported, never fatal.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .data import AudioFrontend, MediaError, load_audio, read_manifest
from .data.datasets import ManifestError
from .files import give_umask_mode, to_json
from .hub import input_size, length_step

_logger = logging.getLogger(__name__)

__all__ = [
    "AUDIO_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "MEDIA_EXTENSIONS",
    "ClipFeatures",
    "EmbeddingExtractor",
    "Windower",
    "find_media",
    "output_names",
    "extract",
    "write_npy",
    "write_archive",
    "stack_results",
    "default_contextual_from",
]

PathLike = Union[str, os.PathLike]

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS
MANIFEST_SUFFIXES = (".json", ".jsonl")

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# keys whose values are per window (stacked over windows in archives)
_PER_WINDOW = ("window_embedding", "window_contextual", "window_frames", "patches", "contextual_patches")


# ------------------------------------------------------------------------------ inputs


def _norm_exts(extensions: Iterable[str]) -> Tuple[str, ...]:
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def find_media(source: PathLike, extensions: Iterable[str] = MEDIA_EXTENSIONS) -> Tuple[List[Path], Path]:
    """Files to process and the folder their output names are relative to. -> (paths, root).

    ``source``: a media file; a folder (searched recursively for ``extensions``, sorted); or a
    manifest (``.json`` AudioMAE format or ``.jsonl``), whose ``wav`` entries (for audio-visual
    manifests: the ``video`` file when there is no ``wav``) are taken as listed.
    """
    src = Path(source).expanduser()
    if src.is_dir():
        exts = _norm_exts(extensions)
        paths = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        return paths, src
    if src.suffix.lower() in MANIFEST_SUFFIXES:
        paths = [Path(item["wav"]) for item in _read_any_manifest(src)]
        return paths, src.resolve().parent
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    return [src], src.parent


def _read_any_manifest(path: Path) -> List[Dict[str, Any]]:
    """Audio manifest items, or audio-visual ones (``video`` files; their sound is the ``wav``)."""
    try:
        return read_manifest(path)
    except ManifestError as first:
        try:
            from .data.av_dataset import read_av_manifest
        except ImportError:
            raise first from None
        try:
            return read_av_manifest(path)
        except ManifestError:
            raise first from None


def output_names(paths: Sequence[Path], root: Path) -> List[str]:
    """Output stems: each path relative to ``root`` (else its name), without the suffix; unique."""
    names, seen = [], set()
    for p in paths:
        try:
            rel = Path(os.path.relpath(Path(p).resolve(), Path(root).resolve()))
            if rel.parts and rel.parts[0] == "..":
                rel = Path(Path(p).name)
        except ValueError:  # another drive
            rel = Path(Path(p).name)
        stem = rel.with_suffix("").as_posix()
        name, k = stem, 1
        while name in seen:
            name, k = f"{stem}__{k}", k + 1
        seen.add(name)
        names.append(name)
    return names


# ------------------------------------------------------------------------------ model side


def _num_patches(model: nn.Module, x: Optional[torch.Tensor] = None) -> Optional[int]:
    """Patch tokens of the model's input ``x`` (of its own input when None)."""
    mods = getattr(model, "modalities", None)
    if mods is not None and "audio" in mods:
        mod = mods["audio"]
        return int(math.prod(mod.input_grid(x))) if x is not None else int(mod.num_tokens)
    enc = getattr(model, "encoder", None)
    n = getattr(enc, "num_patches", None)
    return int(n) if n else None


def default_contextual_from(model: nn.Module) -> int:
    """AudioMAE's choice, the mean of the last three blocks: ``depth - 4`` (8 for ViT-B)."""
    return max(-1, len(model.blocks) - 4)


@dataclass
class ClipFeatures:
    """One file's result: ``arrays`` (float32 numpy, see the module doc) or the ``error`` that skipped it."""

    path: str
    index: int
    arrays: Optional[Dict[str, np.ndarray]] = None
    error: Optional[str] = None
    num_windows: int = 0


@dataclass
class Windower:
    """Waveform -> fbank windows, without the model (what DataLoader workers run).

    frontend: whole-clip frontend (``target_length=None``); window, hop: frames.
    """

    frontend: AudioFrontend
    window: int
    hop: int
    step: Optional[int] = None  # a clip shorter than the window is padded only to a multiple of step
    drop_partial: bool = False  # ... or cut to whole steps instead (BEATs drops a clip's last partial patch)

    def starts(self, num_frames: int) -> List[int]:
        starts = [0]
        while starts[-1] + self.window < num_frames and starts[-1] + self.hop < num_frames:
            starts.append(starts[-1] + self.hop)
        return starts

    def __call__(self, waveform: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = self.frontend.compute_fbank(waveform)  # [T, F], un-normalised
        T = feats.shape[0]
        starts = self.starts(T)
        window = self.window
        if self.step and T < window:  # one window of the clip's own length
            whole = T // self.step * self.step
            window = whole if self.drop_partial and whole else -(-T // self.step) * self.step
        end = starts[-1] + window
        if end > T:  # zeros in log-mel, before normalisation, as AudioMAE pads
            feats = torch.nn.functional.pad(feats, (0, 0, 0, end - T))
        wins = torch.stack([feats[s : s + window] for s in starts])
        frames = torch.tensor([min(window, T - s) for s in starts], dtype=torch.int64)
        return self.frontend.normalize(wins).unsqueeze(1).float(), frames


class EmbeddingExtractor:
    """Window a waveform and run an encoder on the windows.

    Args:
        model: a pretraining model (encoder used without masking), a classifier with
            ``forward_tokens``/``pool`` (``forward_features``), or any audio model with
            ``forward_features`` returning ``[B, D]``.
        frontend: the training frontend (its ``mean``/``std``/sample rate); its ``target_length``
            is ignored: the window is the model's input length.
        hop: frames between window starts (default: the window length).
        contextual_from: compute AudioMAE's contextual features (pretraining models only).
        patches: also return patch-level features.
        keep_windows: also return per-window pooled vectors.
        device: where to run the model (default: where it is).
        variable_length: run a clip shorter than the window at its own length (rounded up to 16
            frames) instead of padding it to the window; default: when the model takes such inputs.
        precision: "fp32" (default), or "bf16" / "fp16" autocast for speed on accelerators (the
            outputs are float32 either way, but differ from fp32 in the third digit).
    """

    def __init__(
        self,
        model: nn.Module,
        frontend: Optional[AudioFrontend] = None,
        *,
        hop: Optional[int] = None,
        contextual_from: Optional[int] = None,
        patches: bool = False,
        keep_windows: bool = False,
        device: Union[str, torch.device, None] = None,
        precision: str = "fp32",
        variable_length: Optional[bool] = None,
    ) -> None:
        if precision not in _AUTOCAST:
            raise ValueError(f"precision must be one of {sorted(_AUTOCAST)}, got {precision!r}")
        self.precision = precision
        self.model = model.eval()
        self.window, num_mel_bins = input_size(model)
        fe = frontend or AudioFrontend(num_mel_bins=num_mel_bins)
        if fe.num_mel_bins != num_mel_bins:
            raise ValueError(f"frontend has {fe.num_mel_bins} mel bins, the model takes {num_mel_bins}")
        # whole clips: windows are cut here, not by the frontend
        self.frontend = AudioFrontend(
            sample_rate=fe.sample_rate,
            num_mel_bins=fe.num_mel_bins,
            target_length=None,
            mean=fe.mean,
            std=fe.std,
            style=getattr(fe, "style", "audiomae"),
        )
        self.hop = int(hop) if hop is not None else self.window
        if self.hop <= 0:
            raise ValueError(f"hop must be > 0 frames, got {hop}")
        step = length_step(model)
        if variable_length and step is None:
            raise ValueError(f"{type(model).__name__} takes only inputs of {self.window} frames (variable_length=True)")
        self.step = step if variable_length is not False else None
        drop = bool(getattr(model, "drops_partial_patch", False))  # BEATs: a clip's last partial patch is dropped
        self.windower = Windower(self.frontend, self.window, self.hop, self.step, drop_partial=drop)
        self.is_mae = hasattr(model, "decoder")
        if contextual_from is not None and not self.is_mae:
            raise ValueError("contextual features are defined for pretraining models (encoder with a final norm) only")
        if self.is_mae and list(model.modalities) != ["audio"]:
            raise ValueError(f"extraction runs audio-only encoders; this model takes {list(model.modalities)}")
        self.contextual_from = contextual_from
        self.patches = bool(patches)
        self.keep_windows = bool(keep_windows)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if device is not None:
            self.model.to(self.device)

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    def settings(self) -> Dict[str, Any]:
        """What the numbers depend on (stored with the outputs)."""
        return {
            "window_frames": self.window,
            "hop_frames": self.hop,
            "frame_shift_ms": 10.0,
            "sample_rate": self.frontend.sample_rate,
            "num_mel_bins": self.frontend.num_mel_bins,
            "mean": self.frontend.mean,
            "std": self.frontend.std,
            "fbank_style": self.frontend.style,
            "contextual_from": self.contextual_from,
            "short_clips": (
                (
                    "own length (cut to whole patches)"
                    if self.windower.drop_partial
                    else "own length (multiple of 16 frames)"
                )
                if self.step
                else "padded to the window"
            ),
            "pooling": "mean over patch tokens" if self.is_mae else "forward_features",
            "precision": self.precision,
        }

    # -------------------------------------------------------------- windows
    def window_starts(self, num_frames: int) -> List[int]:
        """Start frames: 0, hop, 2*hop, ... until a window reaches the last frame."""
        return self.windower.starts(num_frames)

    def windows(self, waveform: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[1, N]`` waveform -> (normalised fbank windows ``[n, 1, W, F]``, real frames per window ``[n]``)."""
        return self.windower(waveform)

    # -------------------------------------------------------------- model
    @torch.no_grad()
    def embed_windows(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``[n, 1, W, F]`` -> per window ``embedding [n, D]`` (+ ``patches [n, L, D]``,
        ``contextual [n, D]``, ``contextual_patches [n, L, D]`` as configured), float32 on the CPU."""
        dtype = _AUTOCAST[self.precision]
        if dtype is None:
            return self._embed(x)
        with torch.autocast(self.device.type, dtype=dtype):
            return self._embed(x)

    def _embed(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        model = self.model
        inputs = {"audio": x.to(self.device)}
        out: Dict[str, torch.Tensor] = {}
        if self.is_mae:
            tokens = model.forward_features(inputs)
            start = 1 if getattr(model, "has_cls", False) else 0
            patch = tokens[:, start:]
            out["embedding"] = patch.mean(dim=1)
            if self.patches:
                out["patches"] = patch
            if self.contextual_from is not None:
                ctx = model.forward_features(inputs, contextual_from=self.contextual_from)[:, start:]
                out["contextual"] = ctx.mean(dim=1)
                if self.patches:
                    out["contextual_patches"] = ctx
        elif hasattr(model, "forward_tokens") and hasattr(model, "pool"):
            tokens = model.forward_tokens(inputs)
            out["embedding"] = model.pool(tokens)
            if self.patches:
                L = _num_patches(model, inputs["audio"]) or tokens.shape[1]
                out["patches"] = tokens[:, tokens.shape[1] - L :]
        else:
            feats = model.forward_features(inputs)
            if feats.dim() != 2:
                raise ValueError(
                    f"{type(model).__name__}.forward_features gave shape {list(feats.shape)}, expected [B, D]"
                )
            if self.patches:
                raise ValueError(f"{type(model).__name__} has no forward_tokens: no patch features")
            out["embedding"] = feats
        return {k: v.float().cpu() for k, v in out.items()}

    def combine(self, per_window: Mapping[str, torch.Tensor], frames: torch.Tensor) -> Dict[str, np.ndarray]:
        """One file's per-window outputs and real frames per window ``[n]`` -> its arrays
        (frame-weighted means over windows, see the module doc)."""
        w = frames.to(torch.float64)
        w = (w / w.sum()).unsqueeze(1)

        def mean(x: torch.Tensor) -> np.ndarray:
            return (x.double() * w).sum(0).float().numpy()

        res: Dict[str, np.ndarray] = {"embedding": mean(per_window["embedding"])}
        if "contextual" in per_window:
            res["contextual"] = mean(per_window["contextual"])
        if self.keep_windows:
            res["window_embedding"] = per_window["embedding"].numpy()
            if "contextual" in per_window:
                res["window_contextual"] = per_window["contextual"].numpy()
            res["window_frames"] = frames.numpy()
        for k in ("patches", "contextual_patches"):
            if k in per_window:
                res[k] = per_window[k].numpy()
        return res

    def __call__(self, waveform: torch.Tensor) -> Dict[str, np.ndarray]:
        """One waveform ``[1, N]`` (at ``sample_rate``) -> its arrays."""
        wins, frames = self.windows(waveform)
        parts = [self.embed_windows(wins[i : i + 64]) for i in range(0, wins.shape[0], 64)]
        return self.combine({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, frames)


# ------------------------------------------------------------------------------ batched run


class _Windows(torch.utils.data.Dataset):
    """Decoding and windowing of each file; holds no model, so workers stay light."""

    def __init__(self, paths: Sequence[PathLike], windower: Windower, max_seconds: Optional[float]) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.windower = windower
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            wave = load_audio(self.paths[i], self.windower.frontend.sample_rate, max_seconds=self.max_seconds)
            wins, frames = self.windower(wave)
            return i, wins, frames, None
        except MediaError as err:
            return i, None, None, str(err)


def extract(
    paths: Sequence[PathLike],
    extractor: EmbeddingExtractor,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = False,
    max_seconds: Optional[float] = None,
) -> Iterator[ClipFeatures]:
    """Yield a ``ClipFeatures`` per path, in order. Windows of consecutive files share batches of
    up to ``batch_size``; files are decoded in ``num_workers`` DataLoader workers."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    loader = torch.utils.data.DataLoader(
        _Windows(paths, extractor.windower, max_seconds), batch_size=None, shuffle=False, num_workers=num_workers
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), unit="file", desc="extract", dynamic_ncols=True)
    pending: List[Tuple[int, Optional[torch.Tensor], Optional[torch.Tensor], Optional[str]]] = []
    count = 0

    def flush() -> Iterator[ClipFeatures]:
        nonlocal count
        # windows of one length share batches (a short clip's window has its own length)
        by_length: Dict[int, List[int]] = {}
        for j, (_, w, _, _) in enumerate(pending):
            if w is not None:
                by_length.setdefault(w.shape[2], []).append(j)
        outs: Dict[int, Dict[str, torch.Tensor]] = {}
        for members in by_length.values():
            x = torch.cat([pending[j][1] for j in members])
            parts = [extractor.embed_windows(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
            joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            at = 0
            for j in members:
                n = pending[j][1].shape[0]
                outs[j] = {k: v[at : at + n] for k, v in joined.items()}
                at += n
        for j, (i, w, frames, err) in enumerate(pending):
            if w is None:
                _logger.warning("skipped %s", err)
                yield ClipFeatures(path=os.fspath(paths[i]), index=i, error=err)
                continue
            arrays = extractor.combine(outs[j], frames)
            yield ClipFeatures(path=os.fspath(paths[i]), index=i, arrays=arrays, num_windows=w.shape[0])
        pending.clear()
        count = 0

    try:
        for i, wins, frames, err in loader:
            pending.append((i, wins, frames, err))
            count += 0 if wins is None else wins.shape[0]
            if count >= batch_size:
                yield from flush()
            if bar is not None:
                bar.update(1)
        yield from flush()
    finally:
        if bar is not None:
            bar.close()


# ------------------------------------------------------------------------------ writing


def write_npy(result: ClipFeatures, out_dir: PathLike, name: str) -> List[Path]:
    """``out_dir/<name>.npy`` (the embedding) and ``out_dir/<name>.<key>.npy`` for the other arrays."""
    assert result.arrays is not None, "only extracted files are written"
    written = []
    for key, value in result.arrays.items():
        p = Path(out_dir) / (f"{name}.npy" if key == "embedding" else f"{name}.{key}.npy")
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, value if key == "window_frames" else value.astype(np.float32, copy=False))
        written.append(p)
    return written


def stack_results(results: Sequence[ClipFeatures]) -> Dict[str, np.ndarray]:
    """Extracted files -> archive arrays: per file ``[N, ...]`` (``embedding``, ``contextual``),
    per window ``[sum n_i, ...]`` with ``window_offsets [N + 1]`` (file i owns rows
    ``offsets[i]:offsets[i+1]``), and ``num_windows [N]``."""
    done = [r for r in results if r.arrays is not None]
    if not done:
        return {}
    counts = np.array([r.num_windows for r in done], dtype=np.int64)
    out: Dict[str, np.ndarray] = {
        "num_windows": counts,
        "window_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    }
    for key in done[0].arrays:
        parts = [r.arrays[key] for r in done]
        joined = (np.concatenate if key in _PER_WINDOW else np.stack)(parts)
        out[key] = joined if key == "window_frames" else joined.astype(np.float32, copy=False)
    return out


def write_archive(
    results: Sequence[ClipFeatures],
    path: PathLike,
    *,
    names: Optional[Sequence[str]] = None,
    meta: Optional[Mapping[str, Any]] = None,
) -> Path:
    """One ``.npz`` or ``.safetensors`` file (by suffix) for all files.

    npz: the arrays of ``stack_results`` plus ``files`` (str, the extracted paths in row order),
    ``names``, ``skipped`` and ``skipped_reasons`` (str), and ``meta`` (a JSON string).
    safetensors: the arrays as tensors; files, names, skipped and meta as JSON in the metadata.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = [r for r in results if r.arrays is not None]
    skipped = [r for r in results if r.arrays is None]
    by_index = {r.index: n for r, n in zip(results, names)} if names is not None else {}
    files = [r.path for r in done]
    row_names = [by_index.get(r.index, Path(r.path).stem) for r in done]
    arrays = stack_results(results)
    info = {
        "files": files,
        "names": row_names,
        "skipped": [r.path for r in skipped],
        "skipped_reasons": [r.error or "" for r in skipped],
        "meta": dict(meta or {}),
    }
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()},
            str(path),
            metadata={k: to_json(v) for k, v in info.items()},
        )
        give_umask_mode(path)
    elif path.suffix == ".npz":
        np.savez(
            path,
            **arrays,
            files=np.array(files, dtype=str),
            names=np.array(row_names, dtype=str),
            skipped=np.array(info["skipped"], dtype=str),
            skipped_reasons=np.array(info["skipped_reasons"], dtype=str),
            meta=np.array(to_json(info["meta"])),
        )
    else:
        raise ValueError(f"{path}: an archive must end in .npz or .safetensors")
    return path

"""Audio-visual datasets over AudioMAE / CAV-MAE JSON manifests.

Each item names its pictures in one of two ways:

- ``"video": "clips/abc.mp4"``: a video file; the sound is its audio track unless ``"wav"``
  names another file.
- ``"video_path": "frames/", "video_id": "abc"``: CAV-MAE's frame folder
  (``video_path/frame_{i}/abc.jpg``, see ``avmae.data.video``) with its sound in ``"wav"``.

    {"data": [{"video": "clips/abc.mp4", "labels": "/m/09x0r"},
              {"video_id": "xyz", "wav": "audio/xyz.flac", "video_path": "frames/", "labels": "/m/05zppz"}]}

Relative paths are resolved against the manifest's folder and may not leave it (through ``..``
or a symlink) unless ``allow_outside_root``; absolute paths are used as written. An item is
``dict(audio=[1, T, F], video=[Tv, 3, H, W], label=[C], index=int)``; determinism, label
handling and the skip policy are ``AudioDataset``'s. With ``eval_views=V > 1`` (evaluation
only) ``video`` is ``[V, Tv, 3, H, W]``: V views of the clip, each the model's ``Tv`` frames,
which a classifier evaluates one at a time and averages (``input_views``; CAV-MAE's 10-frame
evaluation is ``num_frames=1, eval_views=10``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .audio import AudioFrontend
from .datasets import AudioDataset, ManifestError, ManifestPaths, _read_manifest_items, item_generator
from .io import MediaError, load_audio
from .video import IMAGENET_MEAN, IMAGENET_STD, load_frame_folder, load_frames

_logger = logging.getLogger(__name__)

__all__ = ["AVDataset", "read_av_manifest"]

PathLike = Union[str, os.PathLike]

# per-item random streams (stream 0 and 1 are AudioDataset's augmentation and replacement draws)
_FRAME_STREAM = 2


def _resolve(root: Path, value: str) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else root / p)


def _normalise_item(
    item: Any, i: int, where: str, root: Optional[Path], resolve: Optional[ManifestPaths] = None
) -> Dict[str, Any]:
    if not isinstance(item, dict):
        raise ManifestError(f"{where}: item {i} is not an object: {item!r}"[:300])
    out = dict(item)
    labels = out.get("labels", "")
    if not isinstance(labels, str):
        raise ManifestError(f'{where}: item {i} "labels" must be a comma-separated string')
    out["labels"] = labels
    for key in ("video", "wav", "video_path"):
        if key in out and (not isinstance(out[key], str) or not out[key]):
            raise ManifestError(f'{where}: item {i} "{key}" must be a non-empty path string')
        if key in out and resolve is not None:
            out[key] = resolve(out[key], f'item {i} "{key}"')
        elif key in out and root is not None:
            out[key] = _resolve(root, out[key])
    if "video" in out:
        out.setdefault("wav", out["video"])  # sound from the same file
    elif "video_path" in out:
        if not isinstance(out.get("video_id"), str) or not out["video_id"]:
            raise ManifestError(f'{where}: item {i} has "video_path" but no "video_id"')
        if "wav" not in out:
            raise ManifestError(f'{where}: item {i} reads frames from a folder, so it needs a "wav" path')
    else:
        raise ManifestError(
            f'{where}: item {i} has neither "video" (a file) nor "video_path" + "video_id" (a frame folder): {item!r}'[
                :300
            ]
        )
    return out


def read_av_manifest(path: PathLike, *, allow_outside_root: bool = False) -> List[Dict[str, Any]]:
    """Read an audio-visual manifest (JSON ``{"data": [...]}`` or JSON Lines) -> list of items.

    Paths (``video``, ``wav``, ``video_path``) become absolute; ``wav`` defaults to ``video``;
    ``labels`` defaults to ``""``.
    """
    path = Path(path)
    items = _read_manifest_items(path)
    root = path.resolve().parent
    resolve = ManifestPaths(root, allow_outside_root=allow_outside_root, where=str(path))
    return [_normalise_item(item, i, str(path), root, resolve) for i, item in enumerate(items)]


class AVDataset(AudioDataset):
    """Clips with sound and pictures: ``audio`` by ``frontend`` (as ``AudioDataset``), ``video``
    as ``num_frames`` ImageNet-normalised ``image_size`` x ``image_size`` frames.

    Frames of a video file are sampled at segment centres (evaluation) or at random times inside
    the segments (``train=True``); from a frame folder, the middle frame of ``num_total_frames``
    (evaluation; ``frame_index`` picks another, e.g. for CAV-MAE's 10-frame ensemble) or random
    ones (training). As in CAV-MAE, training frames are not augmented unless ``crop`` is
    ``"random_resized"`` or ``flip=True`` (both only with ``train=True``).

    ``eval_views`` (evaluation only): V views of each clip's pictures, ``video`` ``[V, Tv, 3, S, S]``.
    V x Tv frames are read at the segment centres of the clip (of a frame folder: its
    ``num_total_frames``, so ``num_frames=1, eval_views=10`` reads frames 0..9, CAV-MAE's
    ensemble) and view k takes frames k, k + V, k + 2V, ...: each view spans the clip, as a
    training draw does. ``input_views`` tells the evaluation (``avmae.train.finetune``) to run the
    views one at a time and average their class probabilities.

    ``augment`` takes ``AudioDataset``'s keys; with ``mixup``, the frames are mixed with the
    same weight as the sound (CAV-MAE). A clip whose sound or pictures cannot be read is a
    ``MediaError``, or with ``on_error="skip"`` is replaced as ``AudioDataset`` does.
    """

    def __init__(
        self,
        manifest: Union[PathLike, Sequence[Mapping[str, Any]]],
        label_csv: Optional[PathLike] = None,
        *,
        frontend: AudioFrontend,
        num_frames: int = 1,
        image_size: int = 224,
        short_side: Optional[int] = None,
        crop: str = "center",
        flip: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_total_frames: int = 10,
        frame_index: Optional[int] = None,
        eval_views: int = 1,
        seek_threshold: float = 1.0,
        sample_rate: int = 16000,
        train: bool = False,
        augment: Optional[Mapping[str, Any]] = None,
        on_error: str = "raise",
        max_skip_fraction: float = 0.1,
        seed: int = 0,
        multilabel: Optional[bool] = None,
        skip_log_dir: Optional[PathLike] = None,
        max_seconds: Optional[float] = None,
        allow_outside_root: bool = False,
    ) -> None:
        if isinstance(manifest, (str, os.PathLike)):
            items = read_av_manifest(manifest, allow_outside_root=allow_outside_root)
            manifest_path: Optional[str] = os.fspath(manifest)
        else:
            items = [_normalise_item(item, i, "<manifest list>", None) for i, item in enumerate(manifest)]
            manifest_path = None
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if crop not in ("center", "random_resized"):
            raise ValueError(f"crop must be 'center' or 'random_resized', got {crop!r}")
        if frame_index is not None and not 0 <= frame_index < num_total_frames:
            raise ValueError(f"frame_index must be in [0, {num_total_frames}), got {frame_index}")
        if eval_views < 1:
            raise ValueError(f"eval_views must be >= 1, got {eval_views}")
        if eval_views > 1 and frame_index is not None:
            raise ValueError(
                f"eval_views={eval_views} reads frames across the clip; it cannot be combined with"
                f" frame_index={frame_index}"
            )
        super().__init__(
            items,
            label_csv,
            frontend=frontend,
            sample_rate=sample_rate,
            train=train,
            augment=augment,
            on_error=on_error,
            max_skip_fraction=max_skip_fraction,
            seed=seed,
            multilabel=multilabel,
            skip_log_dir=skip_log_dir,
            max_seconds=max_seconds,
        )
        self.manifest_path = manifest_path
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.short_side = short_side
        self.crop = crop
        self.flip = bool(flip)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.num_total_frames = int(num_total_frames)
        self.frame_index = frame_index
        self.eval_views = int(eval_views)
        if (
            self.eval_views > 1
            and self.num_frames * self.eval_views > self.num_total_frames
            and any("video_path" in it for it in self.items)
        ):
            raise ValueError(
                f"{self.manifest_path}: eval_views={self.eval_views} (eval.video_views / --video-views) of"
                f" num_frames={self.num_frames} need {self.num_frames * self.eval_views} frames; the manifest's frame"
                f" folders hold num_total_frames={self.num_total_frames}"
            )
        self.seek_threshold = float(seek_threshold)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(items={len(self)}, classes={self.num_classes}, num_frames={self.num_frames},"
            f" eval_views={self.eval_views}, image_size={self.image_size}, train={self.train},"
            f" on_error={self.on_error!r}, manifest={self.manifest_path!r})"
        )

    @property
    def input_views(self) -> Dict[str, int]:
        """``{"video": eval_views}`` when evaluation items hold several views of the clip, else ``{}``."""
        return {"video": self.eval_views} if self.eval_views > 1 and not self.train else {}

    def source(self, index: int) -> str:
        """The pictures of item ``index``: a file path, or ``root/frame_*/video_id.jpg``."""
        item = self.items[index]
        if "video" in item:
            return item["video"]
        return os.path.join(item["video_path"], "frame_*", f"{item['video_id']}.jpg")

    def load_frames(self, index: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Frames ``[Tv, 3, S, S]`` of item ``index`` (``[V, Tv, 3, S, S]`` with ``input_views``);
        ``generator`` drives training draws."""
        item = self.items[index]
        train = self.train
        views = self.input_views.get("video", 1)
        count = self.num_frames * views
        crop = self.crop if train else "center"
        common = dict(
            size=self.image_size,
            short_side=self.short_side,
            crop=crop,
            flip=self.flip and train,
            generator=generator,
            mean=self.mean,
            std=self.std,
        )
        if "video" in item:
            frames = load_frames(
                item["video"],
                count,
                mode="random" if train else "uniform",
                seek_threshold=self.seek_threshold,
                **common,
            )
        else:
            frames = load_frame_folder(
                item["video_path"],
                item["video_id"],
                count,
                num_total=self.num_total_frames,
                frame_index=None if train else self.frame_index,
                train=train,
                **common,
            )
        if views == 1:
            return frames
        # frame t * V + k is frame t of view k
        return frames.reshape(self.num_frames, views, *frames.shape[1:]).transpose(0, 1).contiguous()

    # ------------------------------------------------------------------ loading
    def _try_load(self, index: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``(waveform [1, N] with its mean removed, frames)``, or None when skipped."""
        key = self.source(index)
        if key in self.skipped or self.items[index]["wav"] in self.skipped:
            return None
        g = item_generator(self.seed, self.epoch, index, stream=_FRAME_STREAM)
        try:
            frames = self.load_frames(index, g)
            wave = load_audio(self.items[index]["wav"], self.sample_rate, max_seconds=self.max_seconds)
        except MediaError as err:
            if self.on_error == "raise":
                raise
            self._record_skip(err, key)
            return None
        return wave - wave.mean(), frames

    def _sample_wave(self, sample: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return sample[0]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        index, g, replace = self._item_generators(index)
        index, (wave, frames) = self._load_readable(index, replace)
        wave, label, mix = self._train_wave(index, wave, g, replace)
        if mix is not None:  # the frames get the sound's weight (CAV-MAE)
            (_, frames2), lam = mix
            frames = lam * frames + (1.0 - lam) * frames2
        return {"audio": self._features(wave, g), "video": frames.float(), "label": label, "index": index}

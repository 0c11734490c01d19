"""Dataset builders: how items reach the loader (``modality: <name>`` in the config).

A builder is registered in ``avmae.registry.DATASETS`` (``@register_dataset("name")`` or the
``avmae.datasets`` entry-point group) and called as ``builder(cfg, split)`` for ``split`` "train"
and "eval"; it returns a ``Dataset`` or None (no such split). Items are dicts of tensors keyed by
modality name (``"audio"``, ``"video"``) plus ``"label"`` ([C] float) and ``"index"``; a dataset
may have ``set_epoch(epoch)``, which the trainer calls in every DataLoader worker, and
``num_classes`` / ``multilabel`` / ``class_ids`` / ``class_names`` for classification tasks.
A builder may carry ``check(cfg)``: the trainer calls it before any work (run folder, model, data)
so that a config the builder cannot read stops at once with a ``ConfigError``; the built-in
builders check that the run names its training data.

Built in:

- ``audio``: an ``AudioDataset`` of an AudioMAE JSON manifest (``data.train_manifest`` /
  ``data.eval_manifest``, ``data.label_csv``), or of the generated demo clips (``data.demo: audio``);
- ``av``: an ``AVDataset`` (video files or CAV-MAE frame folders with their sound), or of the generated
  audio-visual demo clips (``data.demo: av``); its frames are the model's video input (``video_input_size``);
- ``audio_shards``: tar shards written by ``avmae.data.write_shards``, given by their ``index.json``
  (``data.*_manifest``), read as an ``IndexedShardDataset`` (a split given as a JSON manifest is
  read by the "audio" builder).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch.utils.data import Dataset

import avmae

from ..config import Config, ConfigError, require_training_data
from ..registry import register_dataset
from ..run_folder import SKIP_DIR
from .task import base_model_params, input_shapes

__all__ = [
    "split_manifest",
    "audio_frontend",
    "dataset_options",
    "video_input_size",
    "build_audio_dataset",
    "build_av_dataset",
    "build_audio_shard_dataset",
]


def split_manifest(cfg: Config, split: str, demo_root: Callable[[], Path]):
    """(manifest, label_csv) of ``split``: the run's manifests, or, when ``data.train_manifest`` is
    None and ``data.demo`` names the demo clips, ``demo_root()``'s; None when the run has no
    manifest for this split. Neither manifest nor demo: a ``ConfigError`` on ``data.train_manifest``."""
    d = cfg.data
    if d.train_manifest is None:
        require_training_data(cfg)
        root = demo_root()
        return root / f"{split}.json", root / "class_labels_indices.csv"
    manifest = d.train_manifest if split == "train" else d.eval_manifest
    return None if manifest is None else (manifest, d.label_csv)


def audio_frontend(cfg: Config):
    """The ``AudioFrontend`` the data config describes (statistics by name or explicit mean/std)."""
    from ..data import NORM_STATS, AudioFrontend

    d = cfg.data
    mean, std = (d.mean, d.std) if d.mean is not None else NORM_STATS[d.norm]
    try:
        return AudioFrontend(
            sample_rate=d.sample_rate,
            num_mel_bins=d.num_mel_bins,
            target_length=d.target_length,
            mean=mean,
            std=std,
            style=d.fbank_style,
        )
    except ValueError as exc:
        raise ConfigError("data.fbank_style", str(exc)) from None


def dataset_options(cfg: Config, split: str) -> Dict[str, Any]:
    """Keyword arguments every manifest dataset takes from the config."""
    d = cfg.data
    return dict(
        sample_rate=d.sample_rate,
        train=split == "train",
        augment=dataclasses.asdict(d.augment),
        on_error=d.on_error,
        max_skip_fraction=d.max_skip_fraction,
        seed=cfg.train.seed,
        multilabel=d.multilabel,
        # one folder per split: the trainer checks the training set's skip ceiling
        skip_log_dir=None if cfg.output_dir is None else Path(cfg.output_dir) / SKIP_DIR / split,
        allow_outside_root=d.allow_outside_root,
    )


@register_dataset("audio")
def build_audio_dataset(cfg: Config, split: str) -> Optional[Dataset]:
    """``AudioDataset`` of ``split``: the manifests, or the generated demo clips (``data.demo: audio``)."""
    from ..data import AudioDataset, ensure_demo_audio

    found = split_manifest(cfg, split, ensure_demo_audio)
    if found is None:
        return None
    manifest, label_csv = found
    return AudioDataset(manifest, label_csv, frontend=audio_frontend(cfg), **dataset_options(cfg, split))


def video_input_size(cfg: Config) -> Tuple[int, int]:
    """``(num_frames, image_size)`` the model of ``cfg`` takes as its video input: from
    ``model.params`` when both are set, else read from the model built on the meta device (no
    memory, no initialisation) with the run's base params."""
    params = dict(cfg.model.params)
    num_frames, size = params.get("num_frames"), params.get("image_size")
    if num_frames is not None and size is not None:
        return int(num_frames), int(size)
    try:
        with torch.device("meta"):
            model = avmae.create_model(cfg.model.name, **base_model_params(cfg))
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(
            "model.params", f"cannot build {cfg.model.name!r} to read its video input size: {exc}"
        ) from exc
    shape = input_shapes(model).get("video")
    if shape is None:
        raise ConfigError(
            "model.name", f"{cfg.model.name!r} takes no video input; the 'av' modality set needs an audio-visual model"
        )
    frames, _, height, width = shape
    if height != width:
        raise ConfigError(
            "model.params.image_size", f"the av dataset makes square frames; the model takes {height}x{width}"
        )
    return int(num_frames or frames), int(size or height)


@register_dataset("av")
def build_av_dataset(cfg: Config, split: str) -> Optional[Dataset]:
    """``AVDataset`` of ``split``: the manifests, or the generated audio-visual demo clips (``data.demo: av``)."""
    from ..data import AVDataset, ensure_demo_av

    found = split_manifest(cfg, split, ensure_demo_av)
    if found is None:
        return None
    manifest, label_csv = found
    num_frames, image_size = video_input_size(cfg)
    return AVDataset(
        manifest,
        label_csv,
        frontend=audio_frontend(cfg),
        num_frames=num_frames,
        image_size=image_size,
        eval_views=1 if split == "train" else cfg.eval.video_views,
        **dataset_options(cfg, split),
    )


@register_dataset("audio_shards")
def build_audio_shard_dataset(cfg: Config, split: str) -> Optional[Dataset]:
    """``IndexedShardDataset`` of ``split`` (map-style, local files: the epoch order, exact resume,
    skip policy and augmentations work as with a JSON manifest)::

        modality: audio_shards
        data:
          train_manifest: /data/as2m_shards/index.json   # written by write_shards beside the shards
          eval_manifest: /data/eval.json                 # shards (index.json) or a JSON manifest
          label_csv: /data/class_labels_indices.csv
    """
    from ..data.shards import IndexedShardDataset, is_shard_spec

    d = cfg.data
    spec = d.train_manifest if split == "train" else d.eval_manifest
    if spec is None:
        if split == "train":
            _require_shards(cfg)
        return None
    if not is_shard_spec(spec):
        return build_audio_dataset(cfg, split)
    try:
        return IndexedShardDataset(spec, d.label_csv, frontend=audio_frontend(cfg), **dataset_options(cfg, split))
    except ValueError as exc:
        key = "data.train_manifest" if split == "train" else "data.eval_manifest"
        raise ConfigError(key, str(exc)) from exc


def _require_shards(cfg: Config) -> None:
    if cfg.data.train_manifest is None:
        raise ConfigError("data.train_manifest", "modality audio_shards needs the training shards (their index.json)")


# checked by the trainer before any work (see the module docstring)
build_audio_dataset.check = require_training_data
build_av_dataset.check = require_training_data
build_audio_shard_dataset.check = _require_shards

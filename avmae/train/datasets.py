"""Dataset builders: how items reach the loader (``dataset: <name>`` in the config; ``modality:``,
its former name, still works).

A builder is a ``DatasetBuilder`` subclass registered in ``avmae.registry.DATASETS``
(``@avmae.register_dataset("name")`` or the ``avmae.datasets`` entry-point group; a registered class
is instantiated without arguments for each use, a registered instance is used as it is). Its parts::

    build(cfg, split) -> Dataset | None    split "train" or "eval"; None: the run has no such split
    options                                a dataclass of its own keys, ``data.params.<key>`` in the
                                           config, typed and checked (``self.options_of(cfg)``)
    validate(cfg)                          config checks only it can make (``avmae.config.validate``)
    check(cfg)                             before any work (the trainer): the run names data it can read
    demos                                  the demo clips it can read (``data.demo``), by default both
    video_views                            True when its eval items carry several views of the video

Items are dicts of tensors keyed by modality name (``"audio"``, ``"video"``) plus ``"label"``
([C] float) and ``"index"``; a dataset may have ``set_epoch(epoch)``, which the trainer calls in
every DataLoader worker, and ``num_classes`` / ``multilabel`` / ``class_ids`` / ``class_names`` for
classification tasks. Any builder reads the generated demo clips or the run's manifests through
``manifest_of(cfg, split)`` (``data.demo``, else ``data.train_manifest`` / ``data.eval_manifest``).
A plain function ``builder(cfg, split)`` registered the old way still works (``FunctionBuilder``).

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

from ..config import DEMO_DATA, Config, ConfigError, require_training_data
from ..options import merge_options
from ..registry import DATASETS, register_dataset
from ..run_folder import SKIP_DIR
from .task import base_model_params, input_shapes

__all__ = [
    "DatasetBuilder",
    "FunctionBuilder",
    "dataset_builder",
    "manifest_of",
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


def manifest_of(cfg: Config, split: str):
    """(manifest, label_csv) of ``split`` for any builder: the run's manifests, or the generated
    demo clips ``data.demo`` names (generated on first use); None when the run has no such split."""
    from ..data import ensure_demo_audio, ensure_demo_av

    demo_root = {"audio": ensure_demo_audio, "av": ensure_demo_av}.get(cfg.data.demo or "", ensure_demo_audio)
    return split_manifest(cfg, split, demo_root)


class DatasetBuilder:
    """Base class of a dataset builder (see the module docstring); override ``build`` at least."""

    options: Optional[type] = None
    demos: Tuple[str, ...] = DEMO_DATA
    video_views: bool = False

    @property
    def name(self) -> str:
        return getattr(self, "_name", type(self).__name__)

    def build(self, cfg: Config, split: str) -> Optional[Dataset]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, cfg: Config, split: str) -> Optional[Dataset]:
        return self.build(cfg, split)

    def options_of(self, cfg: Config) -> Any:
        """``data.params`` as an instance of ``options`` (None when the builder declares none)."""
        if self.options is None:
            return None
        return merge_options(self.options, cfg.data.params, "data.params", f"dataset {cfg.dataset or cfg.modality!r}")

    def validate(self, cfg: Config) -> None:
        """Config checks only this builder can make (``ConfigError``): the demo clips it reads and
        the views of the video its eval items carry."""
        d, name = cfg.data, cfg.dataset or cfg.modality
        if d.train_manifest is None and d.demo is not None and d.demo not in self.demos:
            readable = " or ".join(self.demos) or "none"
            raise ConfigError(
                "data.demo",
                f"the {d.demo!r} demo clips are not read by dataset {name!r} (it reads {readable}); set"
                f" data.demo={self.demos[0] if self.demos else 'null'} or give data.train_manifest",
            )
        if cfg.eval.video_views > 1 and not self.video_views:
            raise ConfigError(
                "eval.video_views", f"views of the video need a dataset that makes them ('av'), not {name!r}"
            )

    def check(self, cfg: Config) -> None:
        """Before any work (the trainer): the run names training data (``data.train_manifest`` or
        ``data.demo``)."""
        require_training_data(cfg)


class FunctionBuilder(DatasetBuilder):
    """A builder registered as a plain function ``fn(cfg, split)`` (the former contract; its
    ``fn.check(cfg)``, when set, is the check)."""

    def __init__(self, fn: Callable[[Config, str], Optional[Dataset]]) -> None:
        self.fn = fn

    def build(self, cfg: Config, split: str) -> Optional[Dataset]:
        return self.fn(cfg, split)

    def validate(self, cfg: Config) -> None:
        pass  # the former contract had no config checks of its own

    def check(self, cfg: Config) -> None:
        check = getattr(self.fn, "check", None)
        if callable(check):
            check(cfg)


def dataset_builder(name: str) -> DatasetBuilder:
    """The registered builder ``name``, as a ``DatasetBuilder`` instance."""
    entry = DATASETS.instance(name)
    builder = entry if isinstance(entry, DatasetBuilder) else FunctionBuilder(entry)
    builder._name = name
    return builder


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


class AudioBuilder(DatasetBuilder):
    """``build_audio_dataset``: an AudioMAE manifest or the audio demo clips."""

    demos = ("audio",)

    def build(self, cfg: Config, split: str) -> Optional[Dataset]:
        return build_audio_dataset(cfg, split)


class AVBuilder(DatasetBuilder):
    """``build_av_dataset``: audio-visual clips (several views of the video for evaluation)."""

    demos = ("av",)
    video_views = True

    def build(self, cfg: Config, split: str) -> Optional[Dataset]:
        return build_av_dataset(cfg, split)


class AudioShardBuilder(DatasetBuilder):
    """``build_audio_shard_dataset``: tar shards by their index.json."""

    demos = ()

    def build(self, cfg: Config, split: str) -> Optional[Dataset]:
        return build_audio_shard_dataset(cfg, split)

    def check(self, cfg: Config) -> None:
        _require_shards(cfg)


# registered as instances: ``DATASETS.get(name)(cfg, split)``, the former way to call a builder, still works
register_dataset("audio")(AudioBuilder())
register_dataset("av")(AVBuilder())
register_dataset("audio_shards")(AudioShardBuilder())

"""The "audio_shards" dataset builder: training from tar shards written by ``avmae.data.write_shards``.

    modality: audio_shards
    data:
      train_manifest: /data/as2m_shards/index.json   # written by write_shards beside the shards
      eval_manifest: /data/eval.json                 # shards (index.json) or a JSON manifest
      label_csv: /data/class_labels_indices.csv

(``data.*_manifest`` must name a file, so the shards are given by their ``index.json``, or by a
single ``.tar``.)

Shards are read as an ``IndexedShardDataset`` (map-style, local files), so the trainer's epoch
order, exact resume, skip policy and augmentations work as with a JSON manifest. A split given
as a JSON manifest is read by the "audio" builder.
"""

from __future__ import annotations

from typing import Optional

from torch.utils.data import Dataset

from ..config import Config, ConfigError
from .trainer import audio_frontend, build_audio_dataset, dataset_options, register_dataset_builder

__all__ = ["build_audio_shard_dataset"]


@register_dataset_builder("audio_shards")
def build_audio_shard_dataset(cfg: Config, split: str) -> Optional[Dataset]:
    from ..data.shards import IndexedShardDataset, is_shard_spec

    d = cfg.data
    spec = d.train_manifest if split == "train" else d.eval_manifest
    if spec is None:
        if split == "train":
            raise ConfigError("data.train_manifest", "modality audio_shards needs the training shards (their index.json)")
        return None
    if not is_shard_spec(spec):
        return build_audio_dataset(cfg, split)
    try:
        return IndexedShardDataset(spec, d.label_csv, frontend=audio_frontend(cfg), **dataset_options(cfg, split))
    except ValueError as exc:
        key = "data.train_manifest" if split == "train" else "data.eval_manifest"
        raise ConfigError(key, str(exc)) from exc

"""Sharded streaming audio data: a manifest packed into WebDataset tar shards, read back as a stream.

Shard layout (WebDataset conventions; one sample = the members sharing a key)::

    {key}.{ext}        the audio file's bytes as stored (ext: its original suffix, e.g. flac, wav)
    {key}.json         {"wav": original path, "labels": "mid,mid", "index": manifest index,
                        "label_indices": [..] and "num_classes" (when written with a label CSV),
                        "fbank": {sample_rate, num_mel_bins, target_length} (with a stored fbank),
                        plus any other keys of the manifest item}
    {key}.fbank.npy    optional: the un-normalised, padded/cropped fbank [T, F] float32

``key`` is the zero-padded manifest index. ``write_shards`` also writes ``index.json`` (shard names
and sample counts) next to the shards.

``IndexedShardDataset`` is the map-style alternative for shards on a local (or mounted) file
system: it indexes the members once and reads samples by offset, so any sampler works, including
the trainer's resumable epoch order (``modality: audio_shards`` with ``data.train_manifest``
naming the shards' ``index.json``).

``ShardDataset`` streams shards from local paths or any URL WebDataset opens (``http(s)://``,
``pipe:cmd``, brace patterns ``shard-{000000..000099}.tar``). Shards are split across processes
(rank / world size from ``torch.distributed`` or ``RANK`` / ``WORLD_SIZE``) and DataLoader
workers, so each sample is read once per epoch; the shard order is shuffled per epoch and samples
pass through a shuffle buffer, both seeded from ``(seed, epoch, rank, worker)``. Items are
AudioDataset's dicts: ``{"audio": [1, T, F], "label": [C], "index": int}``.

Writing and finding shards lives in ``avmae.data.shard_files``, ``IndexedShardDataset`` in
``avmae.data.indexed_shards``; every public name is importable from here.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .audio import AudioFrontend
from .datasets import _mix64, read_label_csv
from .fast_fbank import collate_waveforms, decode_audio
from .indexed_shards import IndexedShardDataset
from .io import MediaError
from .shard_files import (  # SHARD_PATTERN: the shard names, importable from here as before
    INDEX_NAME,
    SHARD_PATTERN,  # noqa: F401
    _audio_member,
    _fbank_fits,
    expand_shards,
    is_shard_spec,
    write_shards,
)

_logger = logging.getLogger(__name__)

__all__ = [
    "write_shards",
    "ShardDataset",
    "IndexedShardDataset",
    "make_shard_loader",
    "expand_shards",
    "is_shard_spec",
    "dist_info",
]

PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------------------------ reading
def dist_info() -> tuple:
    """(rank, world_size) from an initialised ``torch.distributed`` group, else ``RANK`` /
    ``WORLD_SIZE`` in the environment, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(IterableDataset):
    """Stream AudioDataset items from tar shards written by ``write_shards``.

    Args:
        urls: shard URLs (brace pattern, ``::``-separated string, folder of ``*.tar`` or list).
        frontend: the AudioFrontend applied to decoded audio (and whose mean/std normalise a
            stored fbank). A stored fbank is used when its sample rate, mel bins and target
            length equal the frontend's (``use_stored_fbank=False`` always decodes).
        label_csv: map the stored mids to class indices with this CSV; without it the stored
            ``label_indices`` / ``num_classes`` are used (empty labels when there are none).
        shuffle_buffer: samples held for shuffling (<= 1: shard order only, no sample shuffle).
        shuffle_shards: shuffle the shard order each epoch.
        seed: base seed; ``set_epoch`` changes the order per epoch.
        rank: this process's rank (default: ``dist_info()``).
        world_size: the number of processes sharing the shards (default: ``dist_info()``).
        on_error: "skip" (log and continue past unreadable audio or shards) or "raise".
        return_waveform: yield ``{"wave": [1, N] (mean removed), "label", "index"}`` instead of an
            fbank, for ``collate_waveforms`` + ``BatchedAudioFrontend(center=False)``.
    """

    def __init__(
        self,
        urls: Union[PathLike, Sequence[PathLike]],
        *,
        frontend: Optional[AudioFrontend] = None,
        label_csv: Optional[PathLike] = None,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        seed: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        on_error: str = "skip",
        use_stored_fbank: bool = True,
        return_waveform: bool = False,
    ) -> None:
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.urls = expand_shards(urls)
        if not self.urls:
            raise ValueError(f"no shards found for {urls!r}")
        self.frontend = frontend if frontend is not None else AudioFrontend()
        self.class_ids: List[str] = read_label_csv(label_csv)[0] if label_csv is not None else []
        self._index_of = {mid: i for i, mid in enumerate(self.class_ids)}
        self._label_csv = label_csv
        self.shuffle_buffer = int(shuffle_buffer)
        self.shuffle_shards = bool(shuffle_shards)
        self.seed = int(seed)
        self.epoch = 0
        r, w = dist_info()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.on_error = on_error
        self.use_stored_fbank = use_stored_fbank
        self.return_waveform = return_waveform
        self.skipped = 0
        self.num_samples = self._count_from_index()
        if len(self.urls) < self.world_size:
            _logger.warning("%d shards for %d processes: some processes get no data", len(self.urls), self.world_size)

    def _count_from_index(self) -> Optional[int]:
        """Total samples from ``index.json`` beside local shards (None when unknown)."""
        folders = {os.path.dirname(u) for u in self.urls if "://" not in u and not u.startswith("pipe:")}
        counts: Dict[str, int] = {}
        for folder in folders:
            try:
                doc = json.loads((Path(folder) / INDEX_NAME).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            counts.update({os.path.join(folder, s["name"]): int(s["count"]) for s in doc["shards"]})
        if not counts or any(u not in counts for u in self.urls):
            return None
        return sum(counts[u] for u in self.urls)

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.class_ids) if self._label_csv is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ splitting
    def shards_for(self, worker: int = 0, num_workers: int = 1) -> List[str]:
        """This epoch's shards of (rank, worker): the per-epoch shard order (the same on every
        process), dealt round-robin over ``world_size * num_workers`` consumers."""
        shards = list(self.urls)
        if self.shuffle_shards:
            random.Random(_mix64(self.seed, self.epoch, 0x5A4D)).shuffle(shards)
        consumers = self.world_size * num_workers
        return shards[self.rank * num_workers + worker :: consumers]

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        samples = self._samples(self.shards_for(worker, num_workers))
        if self.shuffle_buffer > 1:
            rng = random.Random(_mix64(self.seed, self.epoch, self.rank, worker))
            samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
        for sample in samples:
            item = self._decode(sample)
            if item is not None:
                yield item

    def _samples(self, shards: Sequence[str]) -> Iterator[Dict[str, Any]]:
        from webdataset.tariterators import tarfile_samples

        def handler(exn: Exception) -> bool:
            if self.on_error == "raise":
                raise exn
            _logger.warning("skipping unreadable shard data: %r", exn)
            return True

        return tarfile_samples(({"url": u} for u in shards), handler=handler)

    # ------------------------------------------------------------------ decoding
    def _label(self, meta: Mapping[str, Any]) -> torch.Tensor:
        if self._label_csv is not None:
            mids = [m.strip() for m in str(meta.get("labels", "")).split(",") if m.strip()]
            bad = [m for m in mids if m not in self._index_of]
            if bad:
                raise KeyError(f"label {bad[0]!r} of {meta.get('wav')} is not in label CSV {self._label_csv}")
            idx, num = [self._index_of[m] for m in mids], len(self.class_ids)
        else:
            idx, num = list(meta.get("label_indices", [])), int(meta.get("num_classes") or 0)
        y = torch.zeros(num, dtype=torch.float32)
        if idx:
            y[idx] = 1.0
        return y

    def _stored_fbank_fits(self, meta: Mapping[str, Any]) -> bool:
        return _fbank_fits(meta.get("fbank"), self.frontend)

    def _decode(self, sample: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except ValueError as err:
            return self._fail(MediaError(name, f"bad json member ({err})"))
        index = int(meta.get("index", -1))
        label = self._label(meta)
        fe = self.frontend
        if (
            not self.return_waveform
            and self.use_stored_fbank
            and "fbank.npy" in sample
            and self._stored_fbank_fits(meta)
        ):
            x = torch.from_numpy(np.load(io.BytesIO(sample["fbank.npy"]), allow_pickle=False))
            return {"audio": fe.normalize(x).unsqueeze(0).float(), "label": label, "index": index}
        ext = _audio_member(sample)
        if ext is None:
            return self._fail(MediaError(name, "no audio member"))
        try:
            wave = decode_audio(io.BytesIO(sample[ext]), fe.sample_rate)
        except MediaError as err:
            return self._fail(MediaError(f"{name}.{ext} ({meta.get('wav', '')})", err.reason))
        wave = wave - wave.mean()
        if self.return_waveform:
            return {"wave": wave, "label": label, "index": index}
        x = fe.normalize(fe.compute_fbank(wave, center=False))  # centred above, as AudioDataset
        return {"audio": x.unsqueeze(0).float(), "label": label, "index": index}

    def _fail(self, err: MediaError) -> None:
        if self.on_error == "raise":
            raise err
        self.skipped += 1
        _logger.warning("skipping unreadable sample %s", err)
        return None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shards={len(self.urls)}, samples={self.num_samples}, rank={self.rank}/"
            f"{self.world_size}, shuffle_buffer={self.shuffle_buffer}, epoch={self.epoch})"
        )


def _buffer_shuffle(samples: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir-style shuffle: fill a buffer, then emit a random element per incoming one."""
    buf: List[Any] = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        j = rng.randrange(size)
        buf[j], s = s, buf[j]
        yield s
    rng.shuffle(buf)
    yield from buf


def make_shard_loader(
    urls: Union[PathLike, Sequence[PathLike]],
    *,
    frontend: Optional[AudioFrontend] = None,
    batch_size: int = 8,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    epoch: int = 0,
    label_csv: Optional[PathLike] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    on_error: str = "skip",
    return_waveform: bool = False,
    drop_last: bool = False,
    **loader_kwargs: Any,
) -> DataLoader:
    """A DataLoader over a ``ShardDataset`` (see there for the arguments). Batches are
    ``{"audio": [B, 1, T, F], "label": [B, C], "index": [B]}``, or with ``return_waveform``
    ``{"wave": [B, N], "length": [B], "label", "index"}`` for a ``BatchedAudioFrontend``.
    Call ``loader.dataset.set_epoch(e)`` before each epoch (workers get the dataset anew each
    epoch; with ``persistent_workers=True`` they would keep the first epoch's order)."""
    ds = ShardDataset(
        urls,
        frontend=frontend,
        label_csv=label_csv,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        rank=rank,
        world_size=world_size,
        on_error=on_error,
        return_waveform=return_waveform,
    )
    ds.set_epoch(epoch)
    if return_waveform:
        loader_kwargs.setdefault("collate_fn", collate_waveforms)
    return DataLoader(ds, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last, **loader_kwargs)

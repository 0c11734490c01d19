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
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..files import atomic_path, to_json
from .audio import AudioFrontend
from .augment import fbank_noise, spec_augment
from .datasets import AudioDataset, _mix64, item_generator, read_label_csv, read_manifest
from .fast_fbank import collate_waveforms, decode_audio
from .io import MediaError

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
INDEX_NAME = "index.json"
SHARD_PATTERN = "shard-{:06d}.tar"


# ------------------------------------------------------------------------------------ writing
def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards for identical inputs
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    manifest: Union[PathLike, Sequence[Mapping[str, Any]]],
    out_dir: PathLike,
    *,
    shard_size: int = 1000,
    with_fbank: bool = False,
    frontend: Optional[AudioFrontend] = None,
    label_csv: Optional[PathLike] = None,
) -> List[Path]:
    """Pack the items of ``manifest`` (an AudioMAE JSON / JSONL path or a list of items) into tar
    shards ``out_dir/shard-000000.tar, ...`` of ``shard_size`` samples each -> the shard paths.

    ``with_fbank`` also stores each clip's un-normalised fbank from ``frontend`` (default
    ``AudioFrontend()``), so readers with the same frontend settings skip decoding; a clip that
    cannot be decoded then is left out and logged. ``label_csv`` resolves the label mids to class
    indices at write time (an unknown mid is an error, as in ``AudioDataset``).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    items = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else [dict(it) for it in manifest]
    class_ids: List[str] = read_label_csv(label_csv)[0] if label_csv is not None else []
    index_of = {mid: i for i, mid in enumerate(class_ids)}
    if with_fbank and frontend is None:
        frontend = AudioFrontend()
    if with_fbank and frontend.target_length is None:
        raise ValueError("with_fbank needs a frontend with a fixed target_length")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(8, len(str(len(items))))

    shards: List[Path] = []
    counts: List[int] = []
    skipped: List[str] = []
    tar: Optional[tarfile.TarFile] = None
    pending = contextlib.ExitStack()  # the open shard's atomic_path: renamed into place on close()

    def close() -> None:
        nonlocal tar
        if tar is not None:
            tar.close()
            tar = None
            pending.close()

    with pending:  # an error removes the open shard's temporary file
        for index, item in enumerate(items):
            path = Path(item["wav"])
            mids = [m.strip() for m in str(item.get("labels", "")).split(",") if m.strip()]
            meta: Dict[str, Any] = {**item, "wav": str(path), "index": index}
            if label_csv is not None:
                bad = [m for m in mids if m not in index_of]
                if bad:
                    raise KeyError(f"label {bad[0]!r} of {path} is not in label CSV {label_csv}")
                meta["label_indices"] = [index_of[m] for m in mids]
                meta["num_classes"] = len(class_ids)
            try:
                data = path.read_bytes()
            except OSError as err:
                skipped.append(str(path))
                _logger.warning("skipping %s: cannot read (%s)", path, err)
                continue
            members = {(path.suffix.lower().lstrip(".") or "audio"): data}
            if with_fbank:
                try:
                    wave = decode_audio(io.BytesIO(data), frontend.sample_rate)
                except MediaError as err:
                    skipped.append(str(path))
                    _logger.warning("skipping %s: %s", path, err.reason)
                    continue
                fb = frontend.compute_fbank(wave - wave.mean(), center=False)  # as AudioDataset
                buf = io.BytesIO()
                np.save(buf, fb.numpy().astype(np.float32), allow_pickle=False)
                members["fbank.npy"] = buf.getvalue()
                meta["fbank"] = {
                    "sample_rate": frontend.sample_rate,
                    "num_mel_bins": frontend.num_mel_bins,
                    "target_length": frontend.target_length,
                }
                if getattr(frontend, "style", "audiomae") != "audiomae":  # BEATs' fbank; absent: AudioMAE's
                    meta["fbank"]["style"] = frontend.style
            members["json"] = to_json(meta, sort_keys=True).encode("utf-8")

            if tar is None or counts[-1] >= shard_size:
                close()
                shards.append(out_dir / SHARD_PATTERN.format(len(shards)))
                counts.append(0)
                tar = tarfile.open(pending.enter_context(atomic_path(shards[-1])), "w", format=tarfile.USTAR_FORMAT)
            key = f"{index:0{width}d}"
            for ext, payload in members.items():
                _tar_add(tar, f"{key}.{ext}", payload)
            counts[-1] += 1
        close()
    index_doc = {
        "shards": [{"name": p.name, "count": c} for p, c in zip(shards, counts)],
        "total": sum(counts),
        "with_fbank": with_fbank,
        "num_classes": len(class_ids) if label_csv is not None else None,
        "skipped": skipped,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (out_dir / INDEX_NAME).write_text(to_json(index_doc, indent=1), encoding="utf-8")
    _logger.info("wrote %d samples into %d shards in %s (%d skipped)", sum(counts), len(shards), out_dir, len(skipped))
    return shards


# ------------------------------------------------------------------------------------ reading
def expand_shards(urls: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    """A brace pattern / ``::``-separated string, an ``index.json``, a folder (the shards its
    ``index.json`` lists, else its ``*.tar``), or a list of these -> shard URLs."""
    from webdataset.shardlists import expand_urls

    if isinstance(urls, os.PathLike):
        urls = os.fspath(urls)
    if isinstance(urls, str):
        if os.path.isdir(urls):  # its index.json (the shards of the last write), else every *.tar
            if _read_index(os.path.join(urls, INDEX_NAME)) is not None:
                return expand_shards(os.path.join(urls, INDEX_NAME))
            return sorted(str(p) for p in Path(urls).glob("*.tar"))
        index = _read_index(urls)
        if index is not None:  # write_shards' index.json: its shards, in order
            return [str(Path(urls).parent / s["name"]) for s in index["shards"]]
        return list(expand_urls(urls))
    out: List[str] = []
    for u in urls:
        out.extend(expand_shards(u))
    return out


def _read_index(path: str) -> Optional[Dict[str, Any]]:
    """``write_shards``' index.json at ``path``, or None when ``path`` is not one."""
    if not path.endswith(".json") or not os.path.isfile(path):
        return None
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("shards"), list) else None


def is_shard_spec(spec: Union[PathLike, Sequence[PathLike], None]) -> bool:
    """Whether ``spec`` names tar shards (a ``.tar`` path or pattern, a folder of shards, or the
    ``index.json`` that ``write_shards`` writes beside them) rather than a JSON manifest."""
    if spec is None:
        return False
    if not isinstance(spec, (str, os.PathLike)):
        return all(is_shard_spec(s) for s in spec)
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        return (Path(spec) / INDEX_NAME).is_file() or any(Path(spec).glob("*.tar"))
    if _read_index(spec) is not None:
        return True
    return spec.endswith(".tar") or spec.startswith("pipe:") or ".tar::" in spec


def dist_info() -> tuple:
    """(rank, world_size) from an initialised ``torch.distributed`` group, else ``RANK`` /
    ``WORLD_SIZE`` in the environment, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _audio_member(sample: Mapping[str, Any]) -> Optional[str]:
    for k in sample:
        if not k.startswith("__") and k not in ("json", "fbank.npy"):
            return k
    return None


def _fbank_fits(stored: Optional[Mapping[str, Any]], frontend: Any) -> bool:
    """Whether a shard's stored fbank is what ``frontend`` computes: same rate, bins, length and
    fbank style (a file without a style holds AudioMAE's)."""
    if not stored:
        return False
    own = (frontend.sample_rate, frontend.num_mel_bins, frontend.target_length, getattr(frontend, "style", "audiomae"))
    return (
        stored["sample_rate"],
        stored["num_mel_bins"],
        stored["target_length"],
        stored.get("style", "audiomae"),
    ) == own


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


class IndexedShardDataset(AudioDataset):
    """Map-style dataset over local tar shards written by ``write_shards``.

    The shards' member offsets are indexed once (tar headers and the small ``json`` members are
    read at construction); an item is read by seeking into its shard. Everything else is
    ``AudioDataset``: items ``{"audio": [1, T, F], "label": [C], "index": int}``, the ``augment``
    options with ``train=True``, per-item randomness from ``(seed, epoch, index)``, the skip
    policy with its logs. ``index`` counts samples in shard order (0..len-1); the manifest index
    the sample was written from is kept as ``self.items[i]["source_index"]``.

    Labels come from ``label_csv`` (the mids stored in each sample's json). A stored fbank is used
    when it fits the frontend (sample rate, mel bins, target length) and no waveform
    augmentation (roll, gain, mixup) is on; the result equals decoding.
    """

    def __init__(
        self,
        urls: Union[PathLike, Sequence[PathLike]],
        label_csv: Optional[PathLike] = None,
        *,
        frontend: AudioFrontend,
        use_stored_fbank: bool = True,
        **kwargs: Any,
    ) -> None:
        self.shards = expand_shards(urls)
        if not self.shards:
            raise ValueError(f"no shards found for {urls!r}")
        bad = [u for u in self.shards if "://" in u or u.startswith("pipe:") or not os.path.isfile(u)]
        if bad:
            raise ValueError(
                f"IndexedShardDataset reads local shard files; not a file: {bad[0]} (stream it with ShardDataset)"
            )
        self._members: List[Dict[str, tuple]] = []  # per sample: {ext: (shard index, offset, size)}
        items: List[Dict[str, Any]] = []
        for s_idx, shard in enumerate(self.shards):
            with tarfile.open(shard, "r:") as tar, open(shard, "rb") as raw:
                groups: Dict[str, Dict[str, tuple]] = {}
                for m in tar:
                    if not m.isfile():
                        continue
                    key, _, ext = os.path.basename(m.name).partition(".")
                    groups.setdefault(key, {})[ext.lower()] = (s_idx, m.offset_data, m.size)
                for key, members in groups.items():
                    meta: Dict[str, Any] = {}
                    if "json" in members:
                        _, off, size = members["json"]
                        raw.seek(off)
                        meta = json.loads(raw.read(size))
                    ext = _audio_member(members)
                    items.append(
                        {
                            **{k: v for k, v in meta.items() if k not in ("wav", "labels", "index")},
                            "wav": f"{shard}:{key}.{ext}",
                            "labels": str(meta.get("labels", "")),
                            "source": meta.get("wav"),
                            "source_index": meta.get("index"),
                        }
                    )
                    self._members.append(members)
        self.use_stored_fbank = use_stored_fbank
        self._files: Dict[int, Any] = {}
        self._pid = os.getpid()
        super().__init__(items, label_csv, frontend=frontend, **kwargs)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = {}  # open files stay in their process
        return state

    def _read(self, index: int, ext: str) -> bytes:
        if os.getpid() != self._pid:  # a forked DataLoader worker: its own handles
            self._files, self._pid = {}, os.getpid()
        s_idx, off, size = self._members[index][ext]
        f = self._files.get(s_idx)
        if f is None:
            f = self._files[s_idx] = open(self.shards[s_idx], "rb")
        f.seek(off)
        return f.read(size)

    def _try_load(self, index: int) -> Optional[torch.Tensor]:
        name = self.items[index]["wav"]
        if name in self.skipped:
            return None
        try:
            ext = _audio_member(self._members[index])
            if ext is None:
                raise MediaError(name, "no audio member")
            wave = decode_audio(io.BytesIO(self._read(index, ext)), self.sample_rate, max_seconds=self.max_seconds)
        except MediaError as err:
            if self.on_error == "raise":
                raise MediaError(name, err.reason) from err
            self._record_skip(MediaError(name, err.reason), name)
            return None
        return wave - wave.mean()

    def _stored_fbank(self, index: int) -> Optional[torch.Tensor]:
        fb = self.items[index].get("fbank")
        if not (self.use_stored_fbank and fb and "fbank.npy" in self._members[index]):
            return None
        if not _fbank_fits(fb, self.frontend):
            return None
        return torch.from_numpy(np.load(io.BytesIO(self._read(index, "fbank.npy")), allow_pickle=False))

    def __getitem__(self, index: int) -> Dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        aug = self.augment
        wave_aug = self.train and (aug["roll"] or aug["gain"] or aug["mixup"] > 0)
        x = None if wave_aug else self._stored_fbank(index)
        if x is None:
            return super().__getitem__(index)
        # the rest of AudioDataset.__getitem__, drawing from the same generator
        g = item_generator(self.seed, self.epoch, index)
        if self.train and (aug["freqm"] or aug["timem"]):
            x = spec_augment(x, aug["freqm"], aug["timem"], generator=g)
        x = self.frontend.normalize(x)
        if self.train and aug["noise"]:
            x = fbank_noise(x, g)
        return {"audio": x.unsqueeze(0).float(), "label": self.label(index), "index": index}

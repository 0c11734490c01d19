"""``IndexedShardDataset``: map-style reading of local tar shards by member offset (see
``avmae.data.shards``). Public through ``avmae.data.shards``."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .audio import AudioFrontend
from .augment import fbank_noise, spec_augment
from .datasets import AudioDataset, item_generator
from .fast_fbank import decode_audio
from .io import MediaError
from .shard_files import _audio_member, _fbank_fits, expand_shards

_logger = logging.getLogger(__name__)

__all__ = ["IndexedShardDataset"]

PathLike = Union[str, os.PathLike]


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
        wave_aug = self.train and (aug["roll"] or aug["gain"] or aug["mixup"] > 0 or aug["speed"] > 0)
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

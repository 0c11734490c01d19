"""Manifest-driven audio datasets in AudioMAE's JSON format.

Manifest: ``{"data": [{"wav": "path/to/clip.flac", "labels": "/m/09x0r,/m/05zppz"}, ...]}``
(or JSON Lines, one item per line, for ``*.jsonl``). Label CSV: ``index,mid,display_name``.

An item is ``dict(audio=[1, T, F] float32, label=[C] float32 multi-hot, index=int)``.
Per-item randomness comes from a ``torch.Generator`` seeded by ``(seed, epoch, index)``, so a
run gives the same batches whatever the number of DataLoader workers.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import to_json
from .audio import AudioFrontend
from .augment import (
    fbank_noise,
    mixup_waveforms,
    random_gain,
    random_roll,
    random_speed,
    random_time_shift,
    spec_augment,
)
from .io import MediaError, load_audio

_logger = logging.getLogger(__name__)

__all__ = [
    "read_manifest",
    "read_label_csv",
    "write_manifest",
    "write_label_csv",
    "ManifestPaths",
    "AudioDataset",
    "TooManySkippedError",
    "AUGMENT_DEFAULTS",
    "collect_skipped",
    "seed_worker",
    "worker_init_fn",
    "item_generator",
]

PathLike = Union[str, os.PathLike]

# Fine-tuning augmentations, applied only when train=True. AudioMAE AS fine-tuning uses
# freqm=48, timem=192, mixup=0.5, gain=True (its "roll_mag_aug"; the roll there is a no-op).
AUGMENT_DEFAULTS: Dict[str, Any] = {
    "freqm": 0,  # max frequency-mask width (bins), 0 = off
    "timem": 0,  # max time-mask width (frames), 0 = off
    "mixup": 0.0,  # probability of mixing with a uniformly drawn partner waveform
    "mixup_alpha": 10.0,  # lambda ~ Beta(alpha, alpha)
    "gain": False,  # waveform * (Beta(10, 10) + 0.5)
    "roll": False,  # circular time shift of the waveform by a uniform offset (splits clips shorter than the input)
    "shift": False,  # time shift that keeps the clip whole: moved within its padding, or a random crop of a long clip
    "noise": False,  # official fbank noise + small time roll (AST's Speech Commands recipe; off in AudioMAE's)
    "speed": 0.0,  # speed perturbation: played f times faster, f uniform in [1 - speed, 1 + speed] (pitch and tempo)
}


class ManifestError(ValueError):
    """A manifest or label CSV that cannot be used; the message names the file."""


class TooManySkippedError(RuntimeError):
    """More clips were unreadable than ``max_skip_fraction`` allows: a broken dataset, not noise."""


class ManifestPaths:
    """Turns the paths of one manifest into absolute path strings.

    An absolute path (or ``~/...``) is used as written. A relative path is resolved against the
    manifest's folder ``root`` and must stay inside it: a path that leaves it through ``..`` or
    through a symlink (a folder or the file itself) is a ``ManifestError`` unless
    ``allow_outside_root``. Folders are resolved once each, so a long manifest costs one
    ``lstat`` per item.
    """

    def __init__(self, root: Path, *, allow_outside_root: bool = False, where: str = "") -> None:
        self.root = Path(root)
        self.allow_outside_root = bool(allow_outside_root)
        self.where = where or str(root)
        self._real_root = os.path.realpath(self.root)
        self._real_dirs: Dict[str, str] = {}

    def _inside(self, real: str) -> bool:
        return real == self._real_root or real.startswith(self._real_root.rstrip(os.sep) + os.sep)

    def __call__(self, value: str, what: str = "path") -> str:
        p = Path(os.path.expanduser(value))
        if p.is_absolute():
            return str(p)
        joined = str(self.root / p)
        if self.allow_outside_root:
            return joined
        parent, name = os.path.split(joined)
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            real_parent = self._real_dirs[parent] = os.path.realpath(parent)
        real = os.path.join(real_parent, name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if not self._inside(real):
            raise ManifestError(
                f"{self.where}: {what} {value!r} resolves to {real}, outside the manifest's folder "
                f"{self._real_root}; write an absolute path, or allow it (data.allow_outside_root=true, "
                "allow_outside_root=True)"
            )
        return joined


def _read_manifest_items(path: Path) -> List[Any]:
    """The raw items of a JSON (``{"data": [...]}``) or JSON Lines manifest; ``ManifestError`` names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ManifestError(f"{path}: cannot read manifest ({err})") from err
    if path.suffix.lower() == ".jsonl":
        items = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ManifestError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path}: invalid JSON ({err})") from err
        if not isinstance(doc, dict) or "data" not in doc:
            raise ManifestError(f'{path}: expected an object with a "data" list of items')
        items = doc["data"]
        if not isinstance(items, list):
            raise ManifestError(f'{path}: "data" must be a list, got {type(items).__name__}')
    return items


def write_manifest(path: PathLike, items: Sequence[Mapping[str, Any]]) -> Path:
    """``items`` as an AudioMAE JSON manifest (``{"data": [...]}``) at ``path`` (folders made) -> path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json({"data": list(items)}, indent=1), encoding="utf-8")
    return path


def write_label_csv(path: PathLike, classes: Sequence[Tuple[str, str]]) -> Path:
    """``index,mid,display_name`` rows for ``classes`` [(mid, display name)] at ``path`` -> path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name"])
        w.writerows([i, mid, name] for i, (mid, name) in enumerate(classes))
    return path


def read_manifest(path: PathLike, *, allow_outside_root: bool = False) -> List[Dict[str, Any]]:
    """Read an AudioMAE JSON (``{"data": [...]}``) or JSON Lines manifest -> list of items.

    Each item keeps its keys; ``wav`` becomes an absolute path string (relative paths are
    resolved against the manifest's folder, and may not leave it through ``..`` or a symlink
    unless ``allow_outside_root``: see ``ManifestPaths``); ``labels`` defaults to ``""``.
    """
    path = Path(path)
    items = _read_manifest_items(path)
    root = path.resolve().parent
    resolve = ManifestPaths(root, allow_outside_root=allow_outside_root, where=str(path))
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("wav"), str) or not item["wav"]:
            raise ManifestError(f'{path}: item {i} has no "wav" path: {item!r}'[:300])
        labels = item.get("labels", "")
        if not isinstance(labels, str):
            raise ManifestError(f'{path}: item {i} "labels" must be a comma-separated string')
        out.append({**item, "wav": resolve(item["wav"], f'item {i} "wav"'), "labels": labels})
    return out


def read_label_csv(path: PathLike) -> Tuple[List[str], List[str]]:
    """Read ``class_labels_indices.csv`` (``index,mid,display_name``) -> ``(ids, names)``,
    ordered by ``index`` (which must be 0..C-1)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise ManifestError(f"{path}: cannot read label CSV ({err})") from err
    missing = {"index", "mid", "display_name"} - set(rows[0].keys() if rows else ())
    if missing:
        raise ManifestError(f"{path}: label CSV needs columns index,mid,display_name; missing {sorted(missing)}")
    by_index: Dict[int, Tuple[str, str]] = {}
    for row in rows:
        try:
            idx = int(row["index"])
        except (TypeError, ValueError) as err:
            raise ManifestError(f"{path}: bad index {row['index']!r}") from err
        by_index[idx] = (row["mid"].strip(), row["display_name"].strip())
    if sorted(by_index) != list(range(len(by_index))):
        raise ManifestError(f"{path}: indices must be 0..{len(by_index) - 1} without gaps or repeats")
    ids = [by_index[i][0] for i in range(len(by_index))]
    if len(set(ids)) != len(ids):
        raise ManifestError(f"{path}: duplicate mids")
    return ids, [by_index[i][1] for i in range(len(by_index))]


def _mix64(*values: int) -> int:
    """Hash integers to a 63-bit seed (splitmix64 steps); order-sensitive."""
    mask = (1 << 64) - 1
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & mask)) & mask
        h = (h + 0x9E3779B97F4A7C15) & mask
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        h ^= h >> 31
    return h >> 1


def item_generator(seed: int, epoch: int, index: int, stream: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` determined by ``(seed, epoch, index, stream)``."""
    g = torch.Generator()
    g.manual_seed(_mix64(seed, epoch, index, stream))
    return g


def _dist_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def collect_skipped(skip_log_dir: PathLike) -> Dict[str, str]:
    """Gather ``path -> reason`` from every ``skipped-rank*-worker*.tsv`` in ``skip_log_dir``."""
    out: Dict[str, str] = {}
    for f in sorted(Path(skip_log_dir).glob("skipped-rank*-worker*.tsv")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                path, _, reason = line.partition("\t")
                out.setdefault(path, reason)
    return out


class AudioDataset(Dataset):
    """Clips from a manifest, turned into AudioMAE fbanks by ``frontend``.

    ``train=True`` enables the ``augment`` options (keys of ``AUGMENT_DEFAULTS``); per item:
    load -> remove mean -> roll/gain -> mixup (partner drawn uniformly, same roll/gain) ->
    fbank + pad/crop (``shift``: at a random offset, the clip kept whole) -> SpecAugment (mask
    value 0) -> normalise -> noise.

    ``on_error="skip"`` replaces an unreadable item (``MediaError``) by another item chosen
    deterministically from ``(seed, epoch, index)``; the returned ``index`` is the item
    actually used. Skipped paths are logged once, kept in ``self.skipped`` (per process: each
    DataLoader worker has its own copy) and, with ``skip_log_dir``, appended to
    ``skip_log_dir/skipped-rank{R}-worker{W}.tsv`` (read them back with ``collect_skipped``).
    More than ``max_skip_fraction`` of the dataset skipped (in this process) is a
    ``TooManySkippedError`` (a RuntimeError). ``allow_outside_root`` lets relative manifest paths
    leave the manifest's folder (see ``read_manifest``).

    ``set_epoch`` changes the per-item randomness; with ``persistent_workers=True`` the workers
    keep their own copy of the dataset and do not see it, so leave that off when augmenting.
    """

    def __init__(
        self,
        manifest: Union[PathLike, Sequence[Mapping[str, Any]]],
        label_csv: Optional[PathLike] = None,
        *,
        frontend: AudioFrontend,
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
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        if frontend.sample_rate != sample_rate:
            raise ValueError(f"frontend.sample_rate={frontend.sample_rate} differs from sample_rate={sample_rate}")
        unknown = set(augment or {}) - set(AUGMENT_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown augment keys {sorted(unknown)}; valid: {sorted(AUGMENT_DEFAULTS)}")
        self.augment: Dict[str, Any] = {**AUGMENT_DEFAULTS, **(augment or {})}

        if isinstance(manifest, (str, os.PathLike)):
            self.manifest_path: Optional[str] = os.fspath(manifest)
            self.items = read_manifest(manifest, allow_outside_root=allow_outside_root)
        else:
            self.manifest_path = None
            self.items = [dict(item) for item in manifest]
        where = self.manifest_path or "<manifest list>"

        if label_csv is not None:
            self.class_ids, self.class_names = read_label_csv(label_csv)
        else:
            self.class_ids, self.class_names = [], []
        index_of = {mid: i for i, mid in enumerate(self.class_ids)}
        self._targets: List[List[int]] = []
        for item in self.items:
            mids = [m.strip() for m in str(item.get("labels", "")).split(",") if m.strip()]
            if label_csv is None:
                self._targets.append([])
                continue
            bad = [m for m in mids if m not in index_of]
            if bad:
                raise KeyError(f"{where}: label {bad[0]!r} of {item['wav']} is not in label CSV {label_csv}")
            self._targets.append([index_of[m] for m in mids])
        self.multilabel = any(len(t) > 1 for t in self._targets) if multilabel is None else bool(multilabel)

        self.frontend = frontend
        self.sample_rate = int(sample_rate)
        self.train = bool(train)
        self.on_error = on_error
        self.max_skip_fraction = float(max_skip_fraction)
        self.seed = int(seed)
        self.epoch = 0
        self.max_seconds = max_seconds
        self.skip_log_dir = None if skip_log_dir is None else Path(skip_log_dir)
        self.skipped: Set[str] = set()

    # ------------------------------------------------------------------ metadata
    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def label(self, index: int) -> torch.Tensor:
        """Multi-hot ``[C]`` float32 target of item ``index``."""
        y = torch.zeros(self.num_classes, dtype=torch.float32)
        if self._targets[index]:
            y[self._targets[index]] = 1.0
        return y

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(items={len(self)}, classes={self.num_classes}, "
            f"train={self.train}, on_error={self.on_error!r}, manifest={self.manifest_path!r})"
        )

    # ------------------------------------------------------------------ loading
    def _record_skip(self, err: MediaError, path: str) -> None:
        if path not in self.skipped:
            self.skipped.add(path)
            _logger.warning("skipping unreadable clip %s", err)
            if self.skip_log_dir is not None:
                info = torch.utils.data.get_worker_info()
                worker = 0 if info is None else info.id
                self.skip_log_dir.mkdir(parents=True, exist_ok=True)
                log = self.skip_log_dir / f"skipped-rank{_dist_rank()}-worker{worker}.tsv"
                reason = err.reason.replace("\t", " ").replace("\n", " ")
                with log.open("a", encoding="utf-8") as f:
                    f.write(f"{path}\t{reason}\n")
        limit = self.max_skip_fraction * len(self)
        if len(self.skipped) > limit:
            raise TooManySkippedError(
                f"{len(self.skipped)} of {len(self)} clips are unreadable, more than "
                f"max_skip_fraction={self.max_skip_fraction}; last: {err}. "
                "Check the data (or raise max_skip_fraction)."
            )

    def _read_wave(self, path: str) -> torch.Tensor:
        """Waveform ``[1, N]`` of ``path`` at ``sample_rate`` (raises ``MediaError``)."""
        return load_audio(path, self.sample_rate, max_seconds=self.max_seconds)

    def _try_load(self, index: int) -> Optional[torch.Tensor]:
        """Waveform ``[1, N]`` with its mean removed, or None when skipped."""
        path = self.items[index]["wav"]
        if path in self.skipped:
            return None
        try:
            wave = self._read_wave(path)
        except MediaError as err:
            if self.on_error == "raise":
                raise
            self._record_skip(err, path)
            return None
        return wave - wave.mean()

    def _load_readable(self, index: int, candidates: torch.Generator) -> Tuple[int, torch.Tensor]:
        """Item ``index``, or (skip policy) the first readable replacement drawn from ``candidates``."""
        for _ in range(len(self) + 1):
            wave = self._try_load(index)
            if wave is not None:
                return index, wave
            index = int(torch.randint(0, len(self), (1,), generator=candidates))
        # mostly unreadable data (a high max_skip_fraction): random draws can miss the few good clips
        for k in range(len(self)):
            wave = self._try_load((index + k) % len(self))
            if wave is not None:
                return (index + k) % len(self), wave
        raise RuntimeError(f"no readable clip in the {len(self)} of the dataset")

    def _augment_wave(self, wave: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.augment["roll"]:
            self._warn_short_roll(wave)
            wave = random_roll(wave, g)
        if self.augment["gain"]:
            wave = random_gain(wave, g)
        if self.augment["speed"]:
            wave = random_speed(wave, float(self.augment["speed"]), g)
        return wave

    def _warn_short_roll(self, wave: torch.Tensor) -> None:
        """Once per dataset copy: the circular roll on a clip well shorter than the input splits it."""
        target = self.frontend.target_length
        if target is None or getattr(self, "_roll_warned", False):
            return
        samples = target * self.frontend.sample_rate // 100
        if wave.shape[-1] < 0.9 * samples:
            self._roll_warned = True
            _logger.warning(
                "data.augment.roll rolls circularly and splits clips shorter than the %d-frame input (one has %.2f s of"
                " %.2f s): a sound ends up half at the end, half at the start; data.augment.shift=true moves clips"
                " within their padding instead",
                target,
                wave.shape[-1] / self.sample_rate,
                samples / self.sample_rate,
            )

    def _item_generators(self, index: int) -> Tuple[int, torch.Generator, torch.Generator]:
        """``(index >= 0, augmentation generator, replacement generator)`` of item ``index``."""
        index = int(index)
        if index < 0:
            index += len(self)
        g = item_generator(self.seed, self.epoch, index)
        replace = item_generator(self.seed, self.epoch, index, stream=1)
        return index, g, replace

    def _sample_wave(self, sample: Any) -> torch.Tensor:
        """The waveform of what ``_try_load`` returned (here the waveform itself)."""
        return sample

    def _train_wave(
        self, index: int, wave: torch.Tensor, g: torch.Generator, replace: torch.Generator
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[Tuple[Any, float]]]:
        """Roll/gain and mixup of item ``index`` when training -> ``(wave, label, mix)``.

        ``mix`` is ``(partner sample, lambda)`` when a partner was mixed in, else None.
        """
        label = self.label(index)
        if not self.train:
            return wave, label, None
        aug = self.augment
        wave = self._augment_wave(wave, g)
        if aug["mixup"] > 0 and float(torch.rand(1, generator=g)) < aug["mixup"]:
            partner = int(torch.randint(0, len(self), (1,), generator=g))
            partner, sample2 = self._load_readable(partner, replace)
            wave2 = self._augment_wave(self._sample_wave(sample2), g)
            wave, label, lam = mixup_waveforms(wave, wave2, label, self.label(partner), g, alpha=aug["mixup_alpha"])
            return wave, label, (sample2, lam)
        return wave, label, None

    def _features(self, wave: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Waveform -> ``[1, T, F]`` float32 fbank, with SpecAugment and noise when training."""
        train, aug = self.train, self.augment
        fe = self.frontend
        if train and aug["shift"] and fe.target_length is not None:
            x = random_time_shift(fe.raw_fbank(wave, center=False), fe.target_length, g)
        else:
            x = fe.compute_fbank(wave, center=False)  # centred above, as the official code
        if train and (aug["freqm"] or aug["timem"]):
            x = spec_augment(x, aug["freqm"], aug["timem"], generator=g)
        x = self.frontend.normalize(x)
        if train and aug["noise"]:
            x = fbank_noise(x, g)
        return x.unsqueeze(0).float()

    def __getitem__(self, index: int) -> Dict[str, Any]:
        index, g, replace = self._item_generators(index)
        index, wave = self._load_readable(index, replace)
        wave, label, _ = self._train_wave(index, wave, g, replace)
        return {"audio": self._features(wave, g), "label": label, "index": index}


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` (for third-party code) from the
    per-worker torch seed, which DataLoader already sets to ``base_seed + worker_id``."""
    seed = torch.initial_seed() % 2**32
    torch.manual_seed(torch.initial_seed())
    np.random.seed(seed)
    random.seed(seed)


worker_init_fn = seed_worker

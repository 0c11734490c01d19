"""Tar shards on disk (the layout is in ``avmae.data.shards``): writing a manifest into shards
(``write_shards``, with ``index.json`` beside them) and finding them again (``expand_shards``,
``is_shard_spec``). Public through ``avmae.data.shards``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..files import atomic_path, to_json
from .audio import AudioFrontend
from .datasets import read_label_csv, read_manifest
from .fast_fbank import decode_audio
from .io import MediaError

_logger = logging.getLogger(__name__)

__all__ = ["write_shards", "expand_shards", "is_shard_spec", "INDEX_NAME", "SHARD_PATTERN"]

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

"""The media files a run processes: finding them in a file, folder or manifest (``find_media``)
and naming their outputs (``output_names``). Public through ``avmae.extract``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

from .data import read_manifest
from .data.datasets import ManifestError

__all__ = ["AUDIO_EXTENSIONS", "VIDEO_EXTENSIONS", "MEDIA_EXTENSIONS", "find_media", "output_names"]

PathLike = Union[str, os.PathLike]

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS
MANIFEST_SUFFIXES = (".json", ".jsonl")


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

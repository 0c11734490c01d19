"""Dataset preparation: manifests, normalisation stats, balanced-sampling weights, video frames, shards.

    avmae prepare manifest ROOT --out train.json [--labels labels.csv] \
        [--label-csv class_labels_indices.csv]
    avmae prepare stats train.json --config my_run.yaml [--max-files 1000]
    avmae prepare weights train.json --label-csv class_labels_indices.csv --out weights.csv
    avmae prepare frames VIDEOS --out frames/ [--num-frames 10] [--size 224]
    avmae prepare shards train.json --out shards/ [--shard-size 1000] [--with-fbank]

manifest: scans ROOT recursively for audio/video files and writes AudioMAE's JSON
    ({"data": [{"wav": "rel/path.flac", "labels": "/m/09x0r,/m/05zppz"}, ...]}) with paths relative
    to the manifest's folder; video files also get "video" (or, with --frames, CAV-MAE's
    "video_path" frame folder) and "video_id", for the audio-visual datasets.
    --labels maps files to label ids: a CSV whose rows are
    ``<file name, stem or relative path>,<"id1,id2">`` (a header naming the columns is optional;
    AudioSet's segment CSVs, ``YTID, start, end, "labels"`` with '#' comments, read as they are).
    Files that cannot be read are left out and listed.
stats: the mean and std of the un-normalised fbank over (a seeded sample of) the data: the
    ``data.mean``/``data.std`` the frontend normalises with. Over the frames the model sees: each
    clip padded/cropped to the training length (as AST/AudioMAE computed theirs), taken from
    --config (the run config's data.target_length) or --target-length, else 1024 frames; the
    output says which. On short clips the length matters: the padding of a 1024-frame input
    dominates 1 s clips. --target-length 0 takes every frame of every clip, no padding.
weights: AudioSet-style balanced sampling weights (1000 / (label count + 0.01), summed over an
    item's labels), one float per line, in manifest order (AudioMAE's gen_weight.py).
frames: N frames per video into CAV-MAE's layout ``OUT/frame_{i}/{video_id}.jpg`` (short side
    resized to --size, centre crop).
shards: tar shards for streaming (avmae.data.shards.write_shards).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from avmae.errors import tool_main, writable_output
from avmae.files import write_json

_KEY_COLUMNS = (
    "file",
    "filename",
    "file_name",
    "name",
    "path",
    "wav",
    "stem",
    "video_id",
    "ytid",
    "id",
    "clip",
    "clip_id",
)
_LABEL_COLUMNS = ("labels", "label", "positive_labels", "mids", "mid", "classes", "class")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


# ============================================================================== manifest


def read_label_map(path: os.PathLike | str) -> Dict[str, str]:
    """CSV ``key -> "id1,id2"``. Rows starting with '#' are comments. With a header naming a key
    column (file, name, stem, video_id, YTID, ...) and a label column (labels, positive_labels,
    ...), those are used; otherwise the first column is the key and the last the labels."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [
            r
            for r in csv.reader((line for line in f if not line.lstrip().startswith("#")), skipinitialspace=True)
            if r and any(c.strip() for c in r)
        ]
    if not rows:
        return {}
    head = [c.strip().lower() for c in rows[0]]
    key_col = next((head.index(c) for c in _KEY_COLUMNS if c in head), None)
    lab_col = next((head.index(c) for c in _LABEL_COLUMNS if c in head), None)
    if key_col is not None and lab_col is not None:
        rows = rows[1:]
    else:
        key_col, lab_col = 0, -1
    out: Dict[str, str] = {}
    for r in rows:
        if len(r) < 2:
            raise ValueError(f"{path}: row {r!r} has no label column")
        labels = ",".join(x.strip() for x in r[lab_col].split(",") if x.strip())
        out[r[key_col].strip()] = labels
    return out


def _lookup(labels: Dict[str, str], path: Path, root: Path) -> Optional[str]:
    rel = path.relative_to(root)
    stem = path.stem
    for key in (
        rel.as_posix(),
        rel.with_suffix("").as_posix(),
        path.name,
        stem,
        stem[1:] if stem.startswith("Y") else None,
    ):
        if key and key in labels:
            return labels[key]
    return None


def _check_labels(labels: str, ids: Sequence[str], names: Sequence[str], where: str) -> str:
    """Validate label ids against the label CSV; display names are turned into ids."""
    by_name = {n: i for n, i in zip(names, ids)}
    known = set(ids)
    out = []
    for lab in (x.strip() for x in labels.split(",") if x.strip()):
        if lab in known:
            out.append(lab)
        elif lab in by_name:
            out.append(by_name[lab])
        else:
            raise KeyError(f"{where}: label {lab!r} is neither an id nor a display name of the label CSV")
    return ",".join(out)


def _manifest_path(path: Path, base: Path, absolute: bool) -> str:
    """``path`` relative to the manifest's folder ``base`` when it lies inside it (readers refuse
    relative paths that leave that folder unless data.allow_outside_root), else absolute."""
    full = path.resolve()
    rel = Path(os.path.relpath(full, base))
    return full.as_posix() if absolute or rel.parts[:1] == ("..",) else rel.as_posix()


@dataclass
class ManifestReport:
    items: List[Dict[str, str]] = field(default_factory=list)
    unreadable: List[str] = field(default_factory=list)  # "path: reason"
    unlabelled: List[str] = field(default_factory=list)


def build_manifest(
    root: os.PathLike | str,
    out: os.PathLike | str,
    *,
    labels: Optional[os.PathLike | str] = None,
    label_csv: Optional[os.PathLike | str] = None,
    extensions: Sequence[str] = (),
    check: str = "probe",
    absolute: bool = False,
    require_labels: bool = False,
    frames: Optional[os.PathLike | str] = None,
    progress: bool = False,
) -> ManifestReport:
    """Scan ``root`` and write the manifest ``out``. check: "none", "probe" (decode the first
    second) or "full" (decode everything). Video files also get ``video_id`` and ``video`` (the
    file itself), or ``video_path`` = ``frames`` when their frames were extracted there."""
    from avmae.data import MediaError, load_audio, read_label_csv
    from avmae.extract import MEDIA_EXTENSIONS, VIDEO_EXTENSIONS, find_media

    if check not in ("none", "probe", "full"):
        raise ValueError(f"check must be none, probe or full, got {check!r}")
    root, out = Path(root), Path(out)
    paths, _ = find_media(root, extensions or MEDIA_EXTENSIONS)
    label_map = read_label_map(labels) if labels else None
    ids, names = read_label_csv(label_csv) if label_csv else ([], [])
    report = ManifestReport()
    it: Iterable[Path] = paths
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(paths, unit="file", desc="manifest", dynamic_ncols=True)
    base = out.resolve().parent
    for p in it:
        if check != "none":
            try:
                load_audio(p, max_seconds=1.0 if check == "probe" else None)
            except MediaError as err:
                report.unreadable.append(str(err))
                continue
        lab = ""
        if label_map is not None:
            found = _lookup(label_map, p, root)
            if found is None:
                report.unlabelled.append(str(p))
                if require_labels:
                    continue
            else:
                lab = found
        if ids and lab:
            lab = _check_labels(lab, ids, names, str(p))
        wav = _manifest_path(p, base, absolute)
        item = {"wav": wav, "labels": lab}
        if p.suffix.lower() in VIDEO_EXTENSIONS:  # the sound is the video's audio track
            item["video_id"] = p.stem
            if frames is None:
                item["video"] = wav
            else:  # CAV-MAE's frame folders: frames/frame_{i}/<video_id>.jpg
                item["video_path"] = _manifest_path(Path(frames), base, absolute)
        report.items.append(item)
    write_json(out, {"data": report.items})
    return report


def cmd_manifest(args: argparse.Namespace) -> int:
    exts = [e.strip() for e in args.extensions.split(",") if e.strip()] if args.extensions else ()
    rep = build_manifest(
        args.root,
        args.out,
        labels=args.labels,
        label_csv=args.label_csv,
        extensions=exts,
        check=args.check,
        absolute=args.absolute,
        require_labels=args.require_labels,
        frames=args.frames,
        progress=not args.no_progress,
    )
    print(f"wrote {args.out}: {len(rep.items)} item(s)")
    if rep.unlabelled:
        what = "left out" if args.require_labels else "written with no labels"
        _err(f"{len(rep.unlabelled)} file(s) have no entry in {args.labels} ({what}), e.g. {rep.unlabelled[:3]}")
    if rep.unreadable:
        _err(f"{len(rep.unreadable)} unreadable file(s) left out:")
        for line in rep.unreadable:
            _err(f"  {line}")
    return 0 if rep.items else 1


# ============================================================================== stats


def _sources(sources: Sequence[str], extensions: Sequence[str] = ()) -> List[Path]:
    from avmae.extract import MEDIA_EXTENSIONS, find_media

    paths: List[Path] = []
    for s in sources:
        paths += find_media(s, extensions or MEDIA_EXTENSIONS)[0]
    return paths


def fbank_stats(paths: Sequence[os.PathLike | str], **kwargs) -> Dict[str, object]:
    """``avmae.data.stats.fbank_stats``: mean and std of the un-normalised fbank (see there)."""
    from avmae.data.stats import fbank_stats as stats

    return stats(paths, **kwargs)


def _stats_settings(args: argparse.Namespace):
    """(target_length or None, sample_rate, num_mel_bins, where the length came from)."""
    length, rate, mels, where = args.target_length, args.sample_rate, args.num_mel_bins, "--target-length"
    if args.config:
        from avmae.config import load_config

        cfg = load_config(args.config, check=False)
        rate, mels = cfg.data.sample_rate, cfg.data.num_mel_bins
        if length is None:
            length, where = cfg.data.target_length, f"data.target_length of {', '.join(args.config)}"
    if length is None:
        length, where = 1024, "the default; give the training length with --config <run config> or --target-length"
    return (length or None), rate, mels, where


def cmd_stats(args: argparse.Namespace) -> int:
    paths = _sources(args.sources)
    if not paths:
        _err(f"no media files found in {args.sources}")
        return 1
    length, rate, mels, where = _stats_settings(args)
    res = fbank_stats(
        paths,
        max_files=args.max_files or None,
        seed=args.seed,
        sample_rate=rate,
        num_mel_bins=mels,
        target_length=length,
        progress=not args.no_progress,
    )
    view = f"each clip padded or cropped to {length} frames ({where})" if length else "whole clips, no padding"
    print(
        f"fbank mean {res['mean']:.7g}, std {res['std']:.7g} over {res['files']} file(s), {res['frames']} frames:"
        f" {view}"
    )
    print(f"config: data.mean={res['mean']:.7g} data.std={res['std']:.7g}")
    if args.out:
        write_json(args.out, res)
        print(f"wrote {args.out}")
    for line in res["skipped"]:
        _err(f"skipped {line}")
    return 0


# ============================================================================== weights


def cmd_weights(args: argparse.Namespace) -> int:
    from avmae.sampling import balanced_weights, save_weights

    w = balanced_weights(args.manifest, args.label_csv)
    save_weights(w, args.out)
    nz = w[w > 0]
    print(
        f"wrote {args.out}: {w.numel()} weights (min {float(nz.min()) if nz.numel() else 0:.4g}, max"
        f" {float(w.max()):.4g}; {int((w == 0).sum())} unlabelled at 0)"
    )
    return 0


# ============================================================================== frames


def cmd_frames(args: argparse.Namespace) -> int:
    try:
        from avmae.data.video import extract_frame_folder
    except ImportError as exc:
        _err(
            "error: frame extraction needs avmae.data.video.extract_frame_folder, which this installation lacks"
            f" ({exc})"
        )
        return 2
    from avmae.data import MediaError
    from avmae.extract import VIDEO_EXTENSIONS

    exts = [e.strip() for e in args.extensions.split(",") if e.strip()] if args.extensions else VIDEO_EXTENSIONS
    paths = _sources(args.sources, exts)
    if not paths:
        _err(f"no video files found in {args.sources}")
        return 1
    it: Iterable[Path] = paths
    if not args.no_progress:
        from tqdm.auto import tqdm

        it = tqdm(paths, unit="video", desc="frames", dynamic_ncols=True)
    failed = []
    for p in it:
        try:
            extract_frame_folder(p, args.out, num_frames=args.num_frames, size=args.size, quality=args.quality)
        except MediaError as err:
            failed.append(str(err))
    print(
        f"wrote {args.num_frames} frame(s) of {len(paths) - len(failed)} video(s) to"
        f" {args.out}/frame_{{0..{args.num_frames - 1}}}/<video_id>.jpg"
    )
    if failed:
        _err(f"{len(failed)} unreadable video(s) skipped:")
        for line in failed:
            _err(f"  {line}")
    return 0 if len(failed) < len(paths) else 1


# ============================================================================== shards


def cmd_shards(args: argparse.Namespace) -> int:
    try:
        from avmae.data.shards import write_shards
    except ImportError as exc:
        _err(f"error: shard writing needs avmae.data.shards.write_shards, which this installation lacks ({exc})")
        return 2
    frontend = None
    if args.with_fbank:
        from avmae.data import NORM_STATS, AudioFrontend

        mean, std = (args.mean, args.std) if args.mean is not None and args.std is not None else NORM_STATS[args.norm]
        frontend = AudioFrontend(
            sample_rate=args.sample_rate,
            num_mel_bins=args.num_mel_bins,
            target_length=args.target_length,
            mean=mean,
            std=std,
        )
    result = write_shards(
        args.manifest,
        args.out,
        shard_size=args.shard_size,
        with_fbank=args.with_fbank,
        frontend=frontend,
        label_csv=args.label_csv,
    )
    shards = [Path(x) for x in result or []]
    names = ", ".join(x.name for x in shards) if len(shards) <= 3 else f"{shards[0].name} ... {shards[-1].name}"
    index = Path(args.out) / "index.json"
    print(
        f"wrote {len(shards)} shard(s) to {args.out}: {names}"
        + (f"; train from them with modality=audio_shards data.train_manifest={index}" if index.is_file() else "")
    )
    return 0


# ============================================================================== CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avmae prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{manifest,stats,weights,frames,shards}")

    m = sub.add_parser("manifest", help="scan a folder into an AudioMAE JSON manifest")
    m.add_argument("root", help="folder of audio/video files (searched recursively)")
    m.add_argument("--out", "-o", required=True, help="manifest path (.json)")
    m.add_argument("--labels", default=None, help="CSV: file name/stem -> label ids")
    m.add_argument(
        "--label-csv",
        default=None,
        help="class_labels_indices.csv to check label ids against (display names become ids)",
    )
    m.add_argument("--extensions", default=None, help="comma-separated suffixes (default: common audio and video)")
    m.add_argument(
        "--check",
        choices=("none", "probe", "full"),
        default="probe",
        help="readability check (default: decode the first second)",
    )
    m.add_argument(
        "--absolute",
        action="store_true",
        help="write absolute paths (a file outside the manifest's folder always gets one)",
    )
    m.add_argument("--require-labels", action="store_true", help="leave out files with no entry in --labels")
    m.add_argument(
        "--frames",
        default=None,
        help="video items read their frames from this CAV-MAE frame folder (see 'frames') instead of the video file",
    )
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=cmd_manifest)

    s = sub.add_parser("stats", help="fbank mean/std for the normaliser")
    s.add_argument("sources", nargs="+", help="manifests, folders or files")
    s.add_argument(
        "--max-files",
        type=int,
        default=1000,
        help="seeded random sample of this many files (0 = all; default: %(default)s)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sample-rate", type=int, default=16000)
    s.add_argument("--num-mel-bins", type=int, default=128)
    s.add_argument(
        "--target-length",
        type=int,
        default=None,
        help=(
            "pad/crop to this many frames first (0 = whole clips; default: the --config's data.target_length, else"
            " 1024)"
        ),
    )
    s.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="the run config: its data.target_length, sample_rate and num_mel_bins",
    )
    s.add_argument("--out", "-o", default=None, help="also write the numbers as JSON")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_stats)

    w = sub.add_parser("weights", help="balanced sampling weights (AudioSet style)")
    w.add_argument("manifest")
    w.add_argument("--label-csv", required=True, help="class_labels_indices.csv")
    w.add_argument("--out", "-o", required=True, help="weight file, one float per line")
    w.set_defaults(func=cmd_weights)

    f = sub.add_parser("frames", help="CAV-MAE frame folders from videos")
    f.add_argument("sources", nargs="+", help="video files, folders or manifests")
    f.add_argument("--out", "-o", required=True, help="root of frame_{i}/ folders")
    f.add_argument("--num-frames", type=int, default=10)
    f.add_argument(
        "--size", type=int, default=224, help="short side resize and square centre crop (default: %(default)s)"
    )
    f.add_argument("--quality", type=int, default=95, help="JPEG quality (default: %(default)s)")
    f.add_argument("--extensions", default=None, help="comma-separated video suffixes")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=cmd_frames)

    h = sub.add_parser("shards", help="tar shards for streaming")
    h.add_argument("manifest")
    h.add_argument("--out", "-o", required=True)
    h.add_argument("--shard-size", type=int, default=1000)
    h.add_argument("--label-csv", default=None)
    h.add_argument(
        "--with-fbank", action="store_true", help="store normalised fbanks instead of decoding at training time"
    )
    h.add_argument("--sample-rate", type=int, default=16000)
    h.add_argument("--num-mel-bins", type=int, default=128)
    h.add_argument("--target-length", type=int, default=1024)
    h.add_argument("--norm", default="audioset")
    h.add_argument("--mean", type=float, default=None)
    h.add_argument("--std", type=float, default=None)
    h.set_defaults(func=cmd_shards)
    return p


# subcommand -> whether its --out is a folder
_OUT_IS_FOLDER = {"manifest": False, "stats": False, "weights": False, "frames": True, "shards": True}


@tool_main()
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "out", None):
        writable_output(args.out, folder=_OUT_IS_FOLDER.get(args.command, False))  # before any work
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""Embeddings of audio files from an encoder checkpoint.

    avmae extract SOURCE [SOURCE ...] --checkpoint CKPT --out OUT

SOURCE: an audio/video file, a folder (searched recursively for --extensions) or a manifest
(.json/.jsonl). CKPT: this project's checkpoint (pretraining or classifier: a model.safetensors, a
checkpoint folder or a run folder), or an official AudioMAE .pth (pretrained or fine-tuned).

OUT ending in .npz or .safetensors: one file for all inputs (``embedding [N, D]``, ``files``, ...;
see avmae.extract.write_archive). Otherwise a folder: ``<name>.npy`` per input (the pooled
vector), ``<name>.<key>.npy`` for the other arrays, ``files.tsv`` (name, path) and, when files
could not be read, ``skipped.tsv``. Clips longer than the model's input are cut into windows
(--hop, default: the window length, no overlap; the last window is zero-padded) whose vectors are
averaged, each weighted by the real (unpadded) frames it holds. A shorter clip runs at its own
length (padded to a multiple of 16 frames) on models that take other lengths (AudioMAE-style
encoders), else, or with --pad-to-window, zero-padded to the model's input length.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

from avmae.errors import tool_main, writable_output  # noqa: E402
from avmae.files import to_json  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from avmae.extract import MEDIA_EXTENSIONS

    p = argparse.ArgumentParser(
        prog="avmae extract", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sources", nargs="+", help="files, folders or manifests")
    p.add_argument("--checkpoint", "-c", required=True, help="weights file, checkpoint folder or run folder")
    p.add_argument("--out", "-o", required=True, help="a folder (one .npy per file) or an .npz / .safetensors file")
    p.add_argument(
        "--extensions",
        default=",".join(MEDIA_EXTENSIONS),
        help="comma-separated suffixes searched in folders (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default: %(default)s)")
    p.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader workers decoding audio (default: %(default)s)"
    )
    p.add_argument(
        "--hop", type=float, default=None, help="seconds between window starts (default: the window length, no overlap)"
    )
    p.add_argument(
        "--target-length",
        type=int,
        default=None,
        help="window length in 10 ms frames (default: the checkpoint's input length)",
    )
    p.add_argument("--patches", action="store_true", help="also write patch-level features [windows, L, D]")
    p.add_argument(
        "--contextual",
        type=int,
        nargs="?",
        const=-100,
        default=None,
        metavar="K",
        help=(
            "also write AudioMAE's contextual features: mean of the normed outputs of the blocks after block K (default"
            " K: depth-4, i.e. 8 for ViT-B)"
        ),
    )
    p.add_argument("--keep-windows", action="store_true", help="also write the per-window vectors")
    p.add_argument(
        "--pad-to-window",
        action="store_true",
        help=(
            "pad clips shorter than the window to its length (default: run them at their own length where the model"
            " can)"
        ),
    )
    p.add_argument(
        "--norm",
        default=None,
        help="normalisation stats by dataset name (default: the checkpoint's config, else audioset)",
    )
    p.add_argument("--mean", type=float, default=None, help="fbank mean (overrides --norm)")
    p.add_argument("--std", type=float, default=None, help="fbank std (overrides --norm)")
    p.add_argument("--max-seconds", type=float, default=None, help="read at most this much of each file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="autocast precision of the forward pass (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@tool_main()
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # sources before and after options
    out = writable_output(args.out, folder=Path(args.out).suffix not in (".npz", ".safetensors"))
    from avmae.extract import (
        EmbeddingExtractor,
        default_contextual_from,
        extract,
        find_media,
        output_names,
        write_archive,
        write_npy,
    )
    from avmae.hub import frontend_for, load_pretrained

    overrides = {} if args.target_length is None else {"target_length": args.target_length}
    model, report = load_pretrained(
        args.checkpoint, map_location=args.device, **overrides
    )  # a mistyped folder: one line (tool_main)
    print(report.summary(), file=sys.stderr)
    frontend = frontend_for(model, report.config, norm=args.norm, mean=args.mean, std=args.std)
    contextual = args.contextual
    if contextual == -100:
        contextual = default_contextual_from(model)
    hop = None if args.hop is None else max(1, int(round(args.hop * 100)))
    extractor = EmbeddingExtractor(
        model,
        frontend,
        hop=hop,
        contextual_from=contextual,
        patches=args.patches,
        keep_windows=args.keep_windows,
        precision=args.precision,
        variable_length=False if args.pad_to_window else None,
    )

    paths, names = [], []
    exts = [e.strip() for e in args.extensions.split(",") if e.strip()]
    for src in args.sources:
        found, root = find_media(src, exts)
        paths += found
        names += output_names(found, root)
    if len(set(names)) != len(names):  # several sources with clashing names: number them
        names = [f"{i:06d}_{n.replace('/', '_')}" for i, n in enumerate(names)]
    if not paths:
        print(f"no media files found in {args.sources}", file=sys.stderr)
        return 1

    archive = out.suffix in (".npz", ".safetensors")
    meta = {"checkpoint": str(report.path), "model": report.model_name, **extractor.settings()}
    results, skipped = [], []
    for res in extract(
        paths,
        extractor,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        max_seconds=args.max_seconds,
    ):
        if res.arrays is None:
            skipped.append(res)
        elif not archive:
            write_npy(res, out, names[res.index])
        results.append(res if archive or res.arrays is None else _row(res, names))
    if archive:
        write_archive(results, out, names=names, meta=meta)
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "files.tsv").write_text(
            "".join(f"{names[r.index]}\t{r.path}\n" for r in results if r.error is None), encoding="utf-8"
        )
        (out / "extract.json").write_text(to_json(meta, indent=1), encoding="utf-8")
        if skipped:
            (out / "skipped.tsv").write_text("".join(f"{r.path}\t{r.error}\n" for r in skipped), encoding="utf-8")
    done = len(paths) - len(skipped)
    print(f"wrote embeddings of {done} file(s) to {out}", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for r in skipped:
            print(f"  {r.error}", file=sys.stderr)
    return 0 if done else 1


def _row(res, names):
    """Keep only what the file list needs (the arrays are already on disk)."""
    from avmae.extract import ClipFeatures

    return ClipFeatures(path=res.path, index=res.index, arrays=None, error=None, num_windows=res.num_windows)


if __name__ == "__main__":
    sys.exit(main())

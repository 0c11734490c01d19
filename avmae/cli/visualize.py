"""Reconstruction plot of a pretraining checkpoint on one audio file.

    avmae visualize AUDIO --checkpoint CKPT [--out recon.png] [--mask-ratio 0.8] [--seed 0]

Writes a PNG with four panels: the input fbank, the masked input, the reconstruction, and the
reconstruction pasted into the visible patches; time in seconds, mel bins, a colour bar, the mask
ratio and the loss in the title. For a model trained with norm_pix_loss (the released AudioMAE
was) each predicted patch is shown with the true patch's mean/std restored, and the figure says so.

CKPT: this project's pretraining checkpoint (a model.safetensors, a checkpoint folder or a run
folder) or the official AudioMAE pretrained.pth (built with its shifted-window decoder). For an
audio-visual model the file's frames are shown in a second row (ImageNet-normalised frames shown
back in colour).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from avmae.errors import tool_main, writable_output  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avmae visualize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("audio", help="an audio or video file (for an audio-visual model: a video with sound)")
    p.add_argument(
        "--checkpoint", "-c", required=True, help="pretraining weights file, checkpoint folder or run folder"
    )
    p.add_argument("--out", "-o", default=None, help="PNG path (default: <audio stem>_reconstruction.png here)")
    p.add_argument(
        "--mask-ratio",
        type=float,
        default=None,
        help="fraction of patches removed (default: the model's, 0.8 for AudioMAE)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the mask (default: %(default)s)")
    p.add_argument(
        "--start", type=float, default=0.0, help="start of the shown window in the file, seconds (default: %(default)s)"
    )
    p.add_argument(
        "--target-length",
        type=int,
        default=None,
        help="window length in 10 ms frames (default: the checkpoint's, or a shorter clip's own length)",
    )
    p.add_argument(
        "--norm",
        default=None,
        help="normalisation stats by dataset name (default: the checkpoint's config, else audioset)",
    )
    p.add_argument("--mean", type=float, default=None)
    p.add_argument("--std", type=float, default=None)
    p.add_argument("--dpi", type=int, default=120)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    return p


@tool_main()
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = writable_output(args.out if args.out else f"{Path(args.audio).stem}_reconstruction.png")
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from avmae.data import MediaError, load_audio
    from avmae.data.audio import num_frames
    from avmae.hub import frontend_for, load_pretrained
    from avmae.viz import plot_arrays, reconstruct, reconstruction_length

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {} if args.target_length is None else {"target_length": args.target_length}
    model, report = load_pretrained(
        args.checkpoint, map_location=device, **overrides
    )  # a mistyped folder: one line (tool_main)
    print(report.summary(), file=sys.stderr)
    if not hasattr(model, "decoder"):
        print(
            f"error: {args.checkpoint} holds a {report.model_name} (no decoder); a reconstruction needs a pretraining"
            " checkpoint",
            file=sys.stderr,
        )
        return 2
    if any(k.startswith("decoder.") for k in report.reinitialized):
        print(
            f"error: {args.checkpoint} holds an encoder without its decoder; nothing to reconstruct with",
            file=sys.stderr,
        )
        return 2
    frontend = frontend_for(model, report.config, norm=args.norm, mean=args.mean, std=args.std)
    try:
        wave = load_audio(args.audio, frontend.sample_rate)
    except MediaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    start = int(round(args.start * frontend.sample_rate))
    if start >= wave.shape[1]:
        print(
            f"error: --start {args.start}s is past the end of {args.audio}"
            f" ({wave.shape[1] / frontend.sample_rate:.2f}s)",
            file=sys.stderr,
        )
        return 1
    if args.target_length is None and "video" not in model.modalities:
        # a clip shorter than the model's input: the model rebuilt for the clip's length, not the clip padded
        length = reconstruction_length(model, num_frames(wave.shape[1] - start, frontend.sample_rate))
        if length != frontend.target_length:
            model, report = load_pretrained(args.checkpoint, map_location=device, target_length=length)
            frontend = frontend_for(model, report.config, norm=args.norm, mean=args.mean, std=args.std)
            print(f"clip shorter than the model's input: reconstructed at {length} frames", file=sys.stderr)
    inputs = {"audio": frontend(wave[:, start:])}  # [1, T, F]
    if "video" in model.modalities:  # an audio-visual model: the file's frames too
        from avmae.data.video import load_frames

        num_frames, _, height, width = model.modalities["video"].input_shape
        if height != width:
            print(
                f"error: frames of {height}x{width} are not square; load them yourself and call"
                " avmae.viz.plot_reconstruction",
                file=sys.stderr,
            )
            return 2
        try:
            inputs["video"] = load_frames(args.audio, num_frames, size=height)
        except MediaError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    title = (
        f"{Path(args.audio).name} from {args.start:g}s, {report.model_name} ({Path(report.path).name}), seed"
        f" {args.seed}"
    )
    rec = reconstruct(model, inputs, mask_ratio=args.mask_ratio, seed=args.seed)
    plot_arrays(rec, title=title, path=out, dpi=args.dpi)
    ratios = ", ".join(f"{m} mask ratio {float(rec[f'{m}/mask_ratio']):.2f}" for m in model.modalities)
    print(f"wrote {out} ({ratios}, loss {float(rec['loss']):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

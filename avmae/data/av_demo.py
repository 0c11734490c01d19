"""A small synthetic audio-visual dataset whose pictures and sounds correspond, for CPU demos.

Each clip is a real video file (H.264 + AAC in MP4, written with PyAV). The sound is one of
the demo audio classes (``demo.synthesize_clip``: harmonic tone, chirp, noise burst, click
train, AM tone, FM tone). The picture is a shape moving over a dim, noisy background:

- the class fixes the shape and its hue (tone: red disc, chirp: green triangle, noise burst:
  blue square, clicks: yellow ring, AM tone: magenta diamond, FM tone: cyan cross);
- the sound's loudness in each video frame's time span sets the shape's size and brightness,
  so the picture swells when the sound starts and shrinks when it stops.

So audio and video agree on the class and, frame by frame, on timing; a model can learn both
the class and which picture goes with which sound (retrieval). Layout:

    root/
      train.json, eval.json          {"data": [{"video": "video/train_tone_000.mp4",
                                               "video_id": "train_tone_000", "labels": "/demo/tone"}, ...]}
      class_labels_indices.csv       index,mid,display_name
      video/*.mp4
      .complete                      marker (JSON of the generation parameters)
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import av
import torch

from .datasets import item_generator, write_manifest
from .demo import DEMO_CLASSES, _cache_dir, _ensure_generated, _write_class_csv, synthesize_clip

_logger = logging.getLogger(__name__)

__all__ = ["ensure_demo_av", "default_av_demo_root", "render_frames", "write_av_clip", "DEMO_AV_LOOK"]

DEMO_AV_VERSION = 1

# class name -> (shape, RGB hue)
DEMO_AV_LOOK: Dict[str, Tuple[str, Tuple[float, float, float]]] = {
    "tone": ("disc", (1.0, 0.2, 0.2)),
    "chirp": ("triangle", (0.2, 1.0, 0.2)),
    "noise_burst": ("square", (0.25, 0.4, 1.0)),
    "clicks": ("ring", (1.0, 1.0, 0.2)),
    "am_tone": ("diamond", (1.0, 0.2, 1.0)),
    "fm_tone": ("cross", (0.2, 1.0, 1.0)),
}


# ---------------------------------------------------------------------------- drawing
# Each shape is a signed distance in pixels (> 0 inside) from offsets dx, dy and radius r.
def _disc(dx, dy, r):
    return r - torch.sqrt(dx**2 + dy**2)


def _square(dx, dy, r):
    return 0.85 * r - torch.maximum(dx.abs(), dy.abs())


def _diamond(dx, dy, r):
    return (1.2 * r - (dx.abs() + dy.abs())) / math.sqrt(2.0)


def _ring(dx, dy, r):
    d = torch.sqrt(dx**2 + dy**2)
    return torch.minimum(r - d, d - 0.5 * r)


def _cross(dx, dy, r):
    w = 0.3 * r
    return torch.maximum(torch.minimum(w - dx.abs(), r - dy.abs()), torch.minimum(w - dy.abs(), r - dx.abs()))


def _triangle(dx, dy, r):
    # equilateral, apex up, circumradius r: three half-planes at inradius r / 2 (image y points down)
    c = math.sqrt(3.0) / 2
    up = -dy
    return torch.minimum(torch.minimum(up + 0.5 * r, 0.5 * r - c * dx - 0.5 * up), 0.5 * r + c * dx - 0.5 * up)


_SHAPES: Dict[str, Callable] = {
    "disc": _disc,
    "square": _square,
    "diamond": _diamond,
    "ring": _ring,
    "cross": _cross,
    "triangle": _triangle,
}


def _loudness(wave: torch.Tensor, sample_rate: int, fps: float, num_frames: int) -> torch.Tensor:
    """``[num_frames]`` in [0, 1]: RMS level of the sound during each frame, -50 dBFS -> 0, -10 -> 1."""
    out = torch.zeros(num_frames)
    for i in range(num_frames):
        a, b = int(round(i * sample_rate / fps)), int(round((i + 1) * sample_rate / fps))
        seg = wave[a:b]
        if seg.numel():
            db = 20 * math.log10(float(seg.pow(2).mean().sqrt()) + 1e-8)
            out[i] = min(max((db + 50.0) / 40.0, 0.0), 1.0)
    return out


def render_frames(
    name: str, loudness: torch.Tensor, generator: torch.Generator, size: int = 64, fps: float = 10.0
) -> torch.Tensor:
    """Frames of class ``name`` following ``loudness: [Tv]`` -> ``[Tv, size, size, 3]`` uint8."""
    shape, hue = DEMO_AV_LOOK[name]
    sdf = _SHAPES[shape]
    g = generator
    n = loudness.numel()
    u = lambda lo, hi: lo + (hi - lo) * float(torch.rand(1, generator=g))  # noqa: E731
    hue_t = torch.tensor(hue) * u(0.85, 1.0)
    bg_a, bg_b = torch.rand(3, generator=g) * 0.25, torch.rand(3, generator=g) * 0.25
    angle = u(0.0, 2 * math.pi)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    ramp = ((xs * math.cos(angle) + ys * math.sin(angle)) / (size * 1.5) + 0.5).clamp(0, 1)
    background = bg_a.view(3, 1, 1) * (1 - ramp) + bg_b.view(3, 1, 1) * ramp  # [3, H, W]
    margin = 0.3 * size
    x, y = u(margin, size - margin), u(margin, size - margin)
    speed = u(0.15, 0.45) * size  # pixels per second
    heading = u(0.0, 2 * math.pi)
    vx, vy = speed * math.cos(heading) / fps, speed * math.sin(heading) / fps
    frames = torch.empty(n, 3, size, size)
    for i in range(n):
        level = float(loudness[i])
        r = size * (0.08 + 0.17 * level)
        alpha = (0.5 + sdf(xs - x, ys - y, r)).clamp(0, 1)  # one pixel of anti-aliasing
        colour = hue_t * (0.25 + 0.75 * level)
        img = background * (1 - alpha) + colour.view(3, 1, 1) * alpha
        img = img + 0.03 * torch.randn(3, size, size, generator=g)
        frames[i] = img
        x, y = x + vx, y + vy
        if not margin <= x <= size - margin:
            vx, x = -vx, min(max(x, margin), size - margin)
        if not margin <= y <= size - margin:
            vy, y = -vy, min(max(y, margin), size - margin)
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def write_av_clip(
    path: Union[str, os.PathLike],
    frames: torch.Tensor,
    wave: torch.Tensor,
    *,
    fps: int = 10,
    sample_rate: int = 16000,
    gop: Optional[int] = None,
) -> Path:
    """``frames: [Tv, H, W, 3]`` uint8 + ``wave: [N]`` in [-1, 1] -> H.264 + AAC MP4 at ``path``.

    x264 runs single-threaded without lookahead so that the bytes are the same on every run. ``gop``: keyframe interval
    in frames (default one second).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, h, w, _ = frames.shape
    with av.open(os.fspath(path), mode="w", format="mp4") as container:
        video = container.add_stream(
            "libx264",
            rate=int(fps),
            # one thread and no lookahead / macroblock tree: these make x264's output vary run to run
            options={"preset": "veryfast", "crf": "20", "threads": "1", "x264-params": "rc-lookahead=0:mbtree=0"},
        )
        video.width, video.height, video.pix_fmt = int(w), int(h), "yuv420p"
        video.codec_context.thread_count = 1
        video.codec_context.gop_size = int(gop or fps)
        audio = container.add_stream("aac", rate=int(sample_rate), layout="mono", options={"aac_coder": "fast"})
        for i, img in enumerate(frames.numpy()):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        wav = av.AudioFrame.from_ndarray(wave.clamp(-1, 1).float().reshape(1, -1).numpy(), format="fltp", layout="mono")
        wav.sample_rate, wav.pts = int(sample_rate), 0
        container.mux(audio.encode(wav))
        container.mux(audio.encode(None))
    return path


# ---------------------------------------------------------------------------- dataset on disk
def default_av_demo_root() -> Path:
    return _cache_dir(f"demo_av_v{DEMO_AV_VERSION}")


def _write_dataset(out: Path, params: dict) -> None:
    sr, fps, size, seconds, seed = (params[k] for k in ("sample_rate", "fps", "size", "seconds", "seed"))
    (out / "video").mkdir(parents=True)
    _write_class_csv(out)
    num_frames = int(round(seconds * fps))
    splits = {"train": params["num_train_per_class"], "eval": params["num_eval_per_class"]}
    for split_id, (split, count) in enumerate(splits.items()):
        items = []
        for c, (name, _) in enumerate(DEMO_CLASSES):
            for k in range(count):
                wave = synthesize_clip(name, item_generator(seed, split_id, c, k), sr, seconds)
                loud = _loudness(wave, sr, fps, num_frames)
                frames = render_frames(name, loud, item_generator(seed, 100 + split_id, c, k), size, fps)
                vid = f"{split}_{name}_{k:03d}"
                write_av_clip(out / "video" / f"{vid}.mp4", frames, wave, fps=fps, sample_rate=sr)
                items.append({"video": f"video/{vid}.mp4", "video_id": vid, "labels": f"/demo/{name}"})
        write_manifest(out / f"{split}.json", items)


def ensure_demo_av(
    root: Optional[Union[str, os.PathLike]] = None,
    *,
    num_train_per_class: int = 40,
    num_eval_per_class: int = 10,
    seconds: float = 2.6,
    fps: int = 10,
    size: int = 64,
    seed: int = 0,
    sample_rate: int = 16000,
) -> Path:
    """Return the audio-visual demo folder, generating it first if needed (deterministic in ``seed``).

    Default ``root``: ``$AVMAE_CACHE/demo_av_v1`` or ``~/.cache/avmae/demo_av_v1``. The defaults
    (6 classes x 50 clips of 2.6 s, 26 frames of 64 x 64 at 10 fps; about 20 MB) take 10-20 s on
    2 CPU cores. Generation goes to a temporary folder that is renamed into place, so an
    interrupted run never leaves half a dataset; a folder made with other parameters is replaced.
    """
    root = Path(root) if root is not None else default_av_demo_root()
    if size % 2:
        raise ValueError(f"size must be even (H.264 4:2:0), got {size}")
    params = {
        "version": DEMO_AV_VERSION,
        "num_train_per_class": int(num_train_per_class),
        "num_eval_per_class": int(num_eval_per_class),
        "seconds": float(seconds),
        "fps": int(fps),
        "size": int(size),
        "seed": int(seed),
        "sample_rate": int(sample_rate),
    }

    def write(out: Path) -> None:
        _logger.info("generating audio-visual demo data in %s", root)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # thousands of tiny ops: extra threads only add contention
        try:
            _write_dataset(out, params)
        finally:
            torch.set_num_threads(threads)

    return _ensure_generated(root, params, write)

"""Audio data: PyAV decoding, AudioMAE's Kaldi fbank frontend, manifest datasets, demo data."""

from .audio import NORM_STATS, AudioFrontend, fbank
from .datasets import (
    AudioDataset,
    collect_skipped,
    read_label_csv,
    read_manifest,
    seed_worker,
    worker_init_fn,
)
from .demo import ensure_demo_audio, synthesize_clip
from .io import MediaError, load_audio, save_audio

__all__ = [
    "MediaError",
    "load_audio",
    "save_audio",
    "AudioFrontend",
    "fbank",
    "NORM_STATS",
    "AudioDataset",
    "read_manifest",
    "read_label_csv",
    "collect_skipped",
    "ensure_demo_audio",
    "synthesize_clip",
    "seed_worker",
    "worker_init_fn",
]

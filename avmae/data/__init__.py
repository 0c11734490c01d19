"""Audio and video data: PyAV decoding, AudioMAE's Kaldi fbank frontend, frame sampling, manifest datasets,
demo data."""

from .audio import NORM_STATS, AudioFrontend, fbank
from .av_dataset import AVDataset, read_av_manifest
from .av_demo import ensure_demo_av
from .datasets import (
    AudioDataset,
    ManifestError,
    TooManySkippedError,
    collect_skipped,
    read_label_csv,
    read_manifest,
    seed_worker,
    worker_init_fn,
    write_label_csv,
    write_manifest,
)
from .demo import ensure_demo_audio, synthesize_clip
from .fast_fbank import (
    BatchedAudioFrontend,
    BatchedFbank,
    WaveformDataset,
    collate_waveforms,
    decode_audio,
    pad_waveforms,
)
from .io import MediaError, load_audio, save_audio
from .shards import IndexedShardDataset, ShardDataset, make_shard_loader, write_shards
from .video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    extract_frame_folder,
    load_av,
    load_frame_folder,
    load_frames,
    probe_video,
)

__all__ = [
    "MediaError",
    "load_audio",
    "save_audio",
    "AudioFrontend",
    "fbank",
    "NORM_STATS",
    "AudioDataset",
    "ManifestError",
    "TooManySkippedError",
    "read_manifest",
    "read_label_csv",
    "write_manifest",
    "write_label_csv",
    "collect_skipped",
    "ensure_demo_audio",
    "synthesize_clip",
    "seed_worker",
    "worker_init_fn",
    "load_frames",
    "load_av",
    "load_frame_folder",
    "extract_frame_folder",
    "probe_video",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AVDataset",
    "read_av_manifest",
    "ensure_demo_av",
    "BatchedFbank",
    "BatchedAudioFrontend",
    "WaveformDataset",
    "decode_audio",
    "pad_waveforms",
    "collate_waveforms",
    "write_shards",
    "ShardDataset",
    "IndexedShardDataset",
    "make_shard_loader",
]

"""The "av" modality set for the trainer: its dataset builder and audio <-> video retrieval metrics.

``build_av_dataset(cfg, split)`` makes an ``AVDataset`` (``avmae.data.av_dataset``) of
``data.train_manifest`` / ``data.eval_manifest``, or of the generated audio-visual demo clips
when no manifest is given. The frames' count and size are the video input of the model:
``model.params.num_frames`` / ``model.params.image_size`` when set, else the model's defaults
(read from the model itself, built once on the CPU). The eval split holds ``eval.video_views``
views of each clip (``AVDataset(eval_views=)``), whose class probabilities the fine-tuning
evaluation averages.

``retrieval_metrics(model, loader, accelerator)`` embeds every eval clip twice (mean-pooled
audio-only and video-only passes through the joint blocks, nothing masked, as CAV-MAE's
retrieval does) and returns recall@1/5/10 both ways (``avmae.retrieval.retrieval_recall``).
"""

from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset

import avmae

from ..config import Config, ConfigError
from ..retrieval import retrieval_recall
from .trainer import audio_frontend, dataset_options, register_dataset_builder, split_manifest

_logger = logging.getLogger(__name__)

__all__ = ["build_av_dataset", "video_input_size", "pooled_embeddings", "retrieval_metrics"]


def _modalities(model: nn.Module) -> Dict[str, nn.Module]:
    mods = getattr(model, "modalities", None)
    return dict(mods.items()) if isinstance(mods, (Mapping, nn.ModuleDict)) else {}


def video_input_size(cfg: Config) -> Tuple[int, int]:
    """``(num_frames, image_size)`` the model of ``cfg`` takes as its video input."""
    params = dict(cfg.model.params)
    num_frames, size = params.get("num_frames"), params.get("image_size")
    if num_frames is not None and size is not None:
        return int(num_frames), int(size)
    build = {**params, "target_length": cfg.data.target_length, "num_mel_bins": cfg.data.num_mel_bins}
    try:
        model = avmae.create_model(cfg.model.name, **build)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError("model.params", f"cannot build {cfg.model.name!r} to read its video input size: {exc}") from exc
    video = _modalities(model).get("video")
    shape = getattr(video, "input_shape", None)
    if shape is None:
        raise ConfigError("model.name", f"{cfg.model.name!r} takes no video input; the 'av' modality set needs an audio-visual model")
    frames, _, height, width = shape
    if height != width:
        raise ConfigError("model.params.image_size", f"the av dataset makes square frames; the model takes {height}x{width}")
    return int(num_frames or frames), int(size or height)


@register_dataset_builder("av")
def build_av_dataset(cfg: Config, split: str) -> Optional[Dataset]:
    """``AVDataset`` of ``split``; the generated audio-visual demo clips when ``data.train_manifest`` is None."""
    from ..data import AVDataset, ensure_demo_av

    found = split_manifest(cfg, split, ensure_demo_av)
    if found is None:
        return None
    manifest, label_csv = found
    num_frames, image_size = video_input_size(cfg)
    return AVDataset(
        manifest,
        label_csv,
        frontend=audio_frontend(cfg),
        num_frames=num_frames,
        image_size=image_size,
        eval_views=1 if split == "train" else cfg.eval.video_views,
        **dataset_options(cfg, split),
    )


# ----------------------------------------------------------------------------------- retrieval
@torch.no_grad()
def pooled_embeddings(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``{modality: [B, D]}``: each modality alone, unmasked, through its blocks and the joint
    blocks, mean-pooled (the features the contrastive loss compares)."""
    zero = {m: 0.0 for m in model.modalities}
    noise = {m: model._identity_noise(inputs[m], mod) for m, mod in model.modalities.items()}
    tokens, _ = model.embed_and_mask(inputs, mask_ratio=zero, noise=noise)
    return {m: model.single_modality(m, t).mean(dim=1).float() for m, t in tokens.items()}


def supports_retrieval(model: nn.Module) -> bool:
    return (
        {"audio", "video"} <= set(_modalities(model))
        and all(hasattr(model, a) for a in ("embed_and_mask", "single_modality", "_identity_noise"))
    )


@torch.no_grad()
def retrieval_metrics(model: nn.Module, loader, accelerator, ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """Recall@k audio -> video and video -> audio over every clip of ``loader`` (gathered
    across processes) -> ``{"retrieval/a2v_r1": ..., ...}``; empty for a model without both."""
    inner = accelerator.unwrap_model(model, keep_torch_compile=False)
    if not supports_retrieval(inner):
        return {}
    was_training = inner.training
    inner.eval()
    audio, video = [], []
    try:
        for batch in loader:
            emb = pooled_embeddings(inner, {"audio": batch["audio"], "video": batch["video"]})
            a, v = accelerator.gather_for_metrics((emb["audio"], emb["video"]))
            audio.append(a.cpu())
            video.append(v.cpu())
    finally:
        inner.train(was_training)
    if not audio:
        return {}
    n = sum(x.shape[0] for x in audio)
    ks = [k for k in ks if k <= n] or [1]
    return {f"retrieval/{k}": v for k, v in retrieval_recall(torch.cat(audio), torch.cat(video), ks).items()}

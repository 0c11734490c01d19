"""Modalities: the input side of each branch (grid, patchify, embedding, positions, masking)."""

from .audio import AudioModality, PatchEmbed2d
from .base import Modality
from .video import TubeletEmbed, VideoModality

__all__ = ["Modality", "AudioModality", "PatchEmbed2d", "VideoModality", "TubeletEmbed"]

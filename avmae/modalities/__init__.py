"""Modalities: the input side of each branch (grid, patchify, embedding, positions, masking)."""

from .base import Modality
from .audio import AudioModality, PatchEmbed2d
from .video import TubeletEmbed, VideoModality

__all__ = ["Modality", "AudioModality", "PatchEmbed2d", "VideoModality", "TubeletEmbed"]

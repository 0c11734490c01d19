"""Modalities: the input side of each branch (grid, patchify, embedding, positions, masking)."""

from .base import Modality
from .audio import AudioModality, PatchEmbed2d

__all__ = ["Modality", "AudioModality", "PatchEmbed2d"]

"""Modalities: the input side of each branch (grid, patchify, embedding, positions, masking)."""

import torch.nn as nn

from ..registry import MODALITIES
from .audio import AudioModality, PatchEmbed2d
from .base import Modality
from .video import TubeletEmbed, VideoModality

__all__ = ["Modality", "AudioModality", "PatchEmbed2d", "VideoModality", "TubeletEmbed"]

MODALITIES.product = nn.Module  # what MODALITIES.build returns

"""Masked decoders, selectable by name from the decoder registry."""

import torch.nn as nn

from ..registry import DECODERS
from .base import Decoder
from .joint import JointDecoder, MixedBlock
from .standard import GlobalDecoder, HybridDecoder, SwinDecoder

__all__ = ["Decoder", "GlobalDecoder", "SwinDecoder", "HybridDecoder", "JointDecoder", "MixedBlock"]

DECODERS.product = nn.Module  # what DECODERS.build returns (a plugin decoder need not subclass Decoder)

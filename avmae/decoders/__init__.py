"""Masked decoders, selectable by name from the decoder registry."""

from .base import Decoder
from .joint import JointDecoder, MixedBlock
from .standard import GlobalDecoder, HybridDecoder, SwinDecoder

__all__ = ["Decoder", "GlobalDecoder", "SwinDecoder", "HybridDecoder", "JointDecoder", "MixedBlock"]

"""Masked decoders, selectable by name from the decoder registry."""

from .base import Decoder
from .standard import GlobalDecoder, HybridDecoder, SwinDecoder
from .joint import JointDecoder, MixedBlock

__all__ = ["Decoder", "GlobalDecoder", "SwinDecoder", "HybridDecoder", "JointDecoder", "MixedBlock"]

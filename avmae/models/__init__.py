"""Models: the masked autoencoder, the classifier and the registered presets."""

from .classifier import EncoderClassifier
from .mae import MaskedAutoencoder, build_decoder, build_modalities
from . import presets  # noqa: F401  (registers the presets)
from . import ast  # noqa: F401  (registers the AST presets and its checkpoint format)

__all__ = ["MaskedAutoencoder", "EncoderClassifier", "build_decoder", "build_modalities"]

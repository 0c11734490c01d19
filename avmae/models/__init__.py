"""Models: the masked autoencoder, the classifier and the registered presets."""

from . import (
    ast,  # noqa: F401  (registers the AST presets and its checkpoint format)
    audiomae_format,  # noqa: F401  (registers AudioMAE's checkpoint format)
    av_presets,  # noqa: F401  (registers the audio-visual presets)
    beats,  # noqa: F401  (registers the BEATs presets)
    cav_mae,  # noqa: F401  (registers CAV-MAE and its checkpoint format)
    eat,  # noqa: F401  (registers the EAT / SSLAM presets)
    presets,  # noqa: F401  (registers the presets)
)
from .cav_mae import CAVMAE, CAVMAEClassifier
from .classifier import EncoderClassifier
from .mae import MaskedAutoencoder, build_decoder, build_modalities

__all__ = ["MaskedAutoencoder", "EncoderClassifier", "CAVMAE", "CAVMAEClassifier", "build_decoder", "build_modalities"]

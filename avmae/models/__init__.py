"""Models: the masked autoencoder, the classifier and the registered presets."""

from .classifier import EncoderClassifier
from .mae import MaskedAutoencoder, build_decoder, build_modalities
from . import presets  # noqa: F401  (registers the presets)
from . import av_presets  # noqa: F401  (registers the audio-visual presets)
from . import cav_mae  # noqa: F401  (registers CAV-MAE and its checkpoint format)
from .cav_mae import CAVMAE, CAVMAEClassifier
from . import ast  # noqa: F401  (registers the AST presets and its checkpoint format)

__all__ = ["MaskedAutoencoder", "EncoderClassifier", "CAVMAE", "CAVMAEClassifier", "build_decoder", "build_modalities"]

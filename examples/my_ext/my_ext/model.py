"""A model (``model.name: my_ext_tiny``): a tiny masked autoencoder assembled from this package's
modality and decoder; every keyword is an option of it (``model.params.input_scale: 0.5``)."""

from avmae.models import MaskedAutoencoder


def my_ext_tiny(
    *,
    target_length: int = 64,
    num_mel_bins: int = 128,
    input_scale: float = 1.0,
    decoder_depth: int = 1,
    **kw,
) -> MaskedAutoencoder:
    audio = {"type": "scaled_audio", "target_length": target_length, "num_mel_bins": num_mel_bins}
    return MaskedAutoencoder(
        modalities={"audio": {**audio, "input_scale": input_scale}},
        embed_dim=64,
        depth=2,
        num_heads=4,
        decoder="mlp_decoder",
        decoder_params={"embed_dim": 64, "depth": decoder_depth, "hidden": 64},
        **kw,
    )

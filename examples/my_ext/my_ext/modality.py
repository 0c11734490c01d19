"""A modality (``type: scaled_audio`` in a model's modalities): AudioMAE's spectrogram branch with
its input scaled by ``input_scale`` before the patch embedding."""

from avmae.modalities import AudioModality


class ScaledAudio(AudioModality):
    def __init__(self, *, input_scale: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        self.input_scale = input_scale

    def embed(self, x):
        return super().embed(x * self.input_scale)

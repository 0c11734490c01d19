"""A dataset builder (``dataset: gained_audio``, ``data.params.gain_db: 6``): the audio of the run's
manifests, or of the demo clips (``data.demo: audio``), amplified by ``gain_db`` before the fbank."""

from dataclasses import dataclass

from avmae.data import AudioDataset, AudioFrontend
from avmae.train import DatasetBuilder, manifest_of
from avmae.train.datasets import audio_frontend, dataset_options


@dataclass
class GainedAudioOptions:
    gain_db: float = 0.0


class GainedFrontend(AudioFrontend):
    def __init__(self, gain: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gain = gain

    def compute_fbank(self, waveform, *, center=True):
        return super().compute_fbank(waveform * self.gain, center=center)


class GainedAudio(DatasetBuilder):
    options = GainedAudioOptions  # data.params, typed: data.params.gain_db=6 on the command line
    demos = ("audio",)  # the demo clips it can read

    def build(self, cfg, split):
        found = manifest_of(cfg, split)  # the run's manifests or the demo clips; None: no such split
        if found is None:
            return None
        manifest, label_csv = found
        base = audio_frontend(cfg)
        frontend = GainedFrontend(
            10 ** (self.options_of(cfg).gain_db / 20),
            sample_rate=base.sample_rate,
            num_mel_bins=base.num_mel_bins,
            target_length=base.target_length,
            mean=base.mean,
            std=base.std,
        )
        return AudioDataset(manifest, label_csv, frontend=frontend, **dataset_options(cfg, split))

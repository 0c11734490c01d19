"""A task (``task: noisy_pretrain``, ``task_params.noise_std: 0.1``): pretraining on inputs with
Gaussian noise added; it logs the noise it used (``train/input_noise_std``)."""

from dataclasses import dataclass

import torch

from avmae.train import PretrainTask


@dataclass
class NoisyPretrainOptions:
    noise_std: float = 0.1


class NoisyPretrain(PretrainTask):
    options = NoisyPretrainOptions  # self.params is an instance of it, from the config's task_params

    def compute_loss(self, model, inputs, batch):
        std = self.params.noise_std
        noisy = {m: x + std * torch.randn_like(x) for m, x in inputs.items()} if model.training else inputs
        loss, parts = super().compute_loss(model, noisy, batch)
        parts["input_noise_std"] = torch.tensor(std if model.training else 0.0, device=loss.device)
        return loss, parts

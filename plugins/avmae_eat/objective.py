"""EAT's objective: an EMA teacher's contextual targets, regressed per masked token and per clip.

Shapes: B clips, C clones of each (``out.num_clones``), L tokens, D encoder width.
"""

from __future__ import annotations

import copy
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from avmae.objectives import Objective, ObjectiveOutput

__all__ = ["EMATeacherRegression"]


class EMATeacherRegression(Objective):
    """Terms ``eat_frame`` (MSE of the decoder's predictions [B*C, L, D] to the teacher's targets
    on the masked tokens) and ``eat_utterance`` (MSE of the student's cls output [B*C, D] to the
    targets' mean over tokens); loss = frame_weight * eat_frame + utterance_weight * eat_utterance.

    The teacher is an exponential moving average of the student (encoder and patch embedding; the
    decoder is not copied), kept in eval mode and without gradients. It sees the whole clip once
    per step, shared by the clip's clones. Its targets: the outputs of its last ``top_k`` blocks
    (before the final norm, cls dropped), each instance-normalised over the tokens
    (``instance_norm``), averaged, then layer-normalised (``layer_norm_targets``).

    EMA decay: ``decay`` at step 0, rising linearly to ``end_decay`` at ``anneal_steps``, then kept.
    It is part of the model (``objectives.N.teacher.*`` in the weights), so a run resumes exactly.
    """

    def __init__(
        self,
        *,
        weight: float = 1.0,
        modality: str = "audio",
        top_k: int = 12,
        instance_norm: bool = True,
        layer_norm_targets: bool = True,
        frame_weight: float = 1.0,
        utterance_weight: float = 1.0,
        decay: float = 0.9998,
        end_decay: float = 0.99999,
        anneal_steps: int = 100_000,
    ) -> None:
        super().__init__(weight=weight)
        if top_k < 1:
            raise ValueError(f"eat_latent: top_k must be >= 1, got {top_k}")
        if not 0.0 <= decay <= end_decay <= 1.0:
            raise ValueError(f"eat_latent: need 0 <= decay ({decay}) <= end_decay ({end_decay}) <= 1")
        self.modality = modality
        self.top_k = int(top_k)
        self.instance_norm = bool(instance_norm)
        self.layer_norm_targets = bool(layer_norm_targets)
        self.frame_weight = float(frame_weight)
        self.utterance_weight = float(utterance_weight)
        self.decay, self.end_decay, self.anneal_steps = float(decay), float(end_decay), int(anneal_steps)
        self._names: List[str] = []

    # ------------------------------------------------------------------ the teacher
    def attach(self, model: nn.Module) -> None:
        if list(model.modalities) != [self.modality]:
            raise ValueError(
                f"eat_latent regresses one modality ({self.modality!r}); the model has {list(model.modalities)}"
            )
        if not getattr(model, "has_cls", False):
            raise ValueError("eat_latent's utterance loss needs a model with a cls token")
        if self.top_k > len(model.blocks):
            raise ValueError(f"eat_latent: top_k={self.top_k} exceeds the model's {len(model.blocks)} blocks")
        teacher = copy.deepcopy(model)  # called before the model holds its objectives: no recursion
        teacher.decoder = None  # targets come from the encoder alone
        teacher.requires_grad_(False)
        self.teacher = teacher.eval()
        self._names = [n for n, _ in teacher.named_parameters()]

    def decay_at(self, step: int) -> float:
        """The EMA decay after optimizer step ``step``."""
        if self.anneal_steps <= 0 or step >= self.anneal_steps:
            return self.end_decay
        return self.decay + (self.end_decay - self.decay) * step / self.anneal_steps

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        student = dict(model.named_parameters())
        a = 1.0 - self.decay_at(step)
        for name, t in zip(self._names, self.teacher.parameters()):
            t.lerp_(student[name].detach().to(t.dtype), a)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, ...] input of the modality -> targets [B, L, D] (float32)."""
        self.teacher.eval()
        layers = self.teacher.block_outputs({self.modality: x})[-self.top_k :]
        outs = []
        for y in layers:
            y = y[:, 1:].float()  # the cls token is not a target
            if self.instance_norm:  # over the tokens, per channel
                y = F.instance_norm(y.transpose(1, 2)).transpose(1, 2)
            outs.append(y)
        target = torch.stack(outs).mean(0)
        if self.layer_norm_targets:
            target = F.layer_norm(target, target.shape[-1:])
        return target

    # ------------------------------------------------------------------ the loss
    def forward(self, model, inputs, out) -> ObjectiveOutput:
        m, c = self.modality, out.num_clones
        target = self.targets(inputs[m])
        pred = out.pred[m].float()
        if pred.shape[-1] != target.shape[-1]:
            raise ValueError(
                f"eat_latent: the decoder predicts {pred.shape[-1]} values per token, the targets have"
                f" {target.shape[-1]} (decoder out_dim)"
            )
        per_token = (pred - target.repeat_interleave(c, dim=0)).pow(2).mean(dim=-1)
        mask = out.mask[m].float()
        frame = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
        utterance = (out.latent[:, 0].float() - target.mean(dim=1).repeat_interleave(c, dim=0)).pow(2).mean()
        loss = self.frame_weight * frame + self.utterance_weight * utterance
        return ObjectiveOutput(loss=loss, terms={"eat_frame": frame, "eat_utterance": utterance})

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, top_k={self.top_k}, decay={self.decay}->{self.end_decay} over {self.anneal_steps}"
            f" steps, frame_weight={self.frame_weight}, utterance_weight={self.utterance_weight}"
        )

"""Classifier on a pretrained encoder: AudioMAE's fine-tuning model.

x --embed--> tokens --(train: structured time/freq masking)--> [cls] + tokens --blocks-->
    mean over patch tokens --fc_norm--> head --> logits [B, C]

``global_pool="time_avg"`` keeps the frequency bands apart: the mean over time of each band's
tokens, ``fc_norm`` on each, concatenated (``F' x D`` features). A mean over every token throws away
where in frequency a pattern sat, which a pretrained encoder has already written into its tokens
but an encoder trained from scratch on a few hundred clips has not: measured on generated spoken
digits (400 clips, 10 classes, 200 steps from scratch, the demo encoder), "avg" reached 15 % training
accuracy and "time_avg" 79 % (59 % on held-out voices); see avmae.train.own_data.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional

import torch
import torch.nn as nn

from ..layers import drop_path_rates, init_mae_weights, make_block
from ..masking import structured_time_freq_mask
from .mae import build_modalities

__all__ = ["EncoderClassifier"]


class EncoderClassifier(nn.Module):
    """ViT encoder + mean pool + ``fc_norm`` + linear ``head`` over one modality.

    Args:
        modalities: {input key: modality params}; exactly one for now.
        num_classes: head outputs (0 gives the pooled features as output).
        mask_t_prob: training-time masking of time rows of the token grid (AudioMAE
            fine-tuning; 0 disables).
        mask_f_prob: the same for frequency columns.
        drop_path: stochastic depth.
        head_init_std: std of the head's normal init (AudioMAE: 2e-5).
        global_pool: "avg" (mean over patch tokens, cls excluded), "cls", or "time_avg" (the mean
            over time of each frequency band, each through ``fc_norm``, concatenated: ``F' * D``
            features; time-major token layout, no frequency-band masking).
        post_norm: post-LN blocks (EAT); pre_norm: a LayerNorm over ``[cls; tokens]`` before the
            first block (EAT); see ``MaskedAutoencoder``.

    ``head_name`` names the classifier head among the submodules (the part a linear probe trains).
    """

    head_name: ClassVar[str] = "head"

    def __init__(
        self,
        *,
        modalities: Mapping[str, Mapping[str, Any]],
        num_classes: int = 527,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        cls_token: bool = True,
        mask_t_prob: float = 0.0,
        mask_f_prob: float = 0.0,
        drop_path: float = 0.1,
        head_drop: float = 0.0,
        head_init_std: float = 2e-5,
        global_pool: str = "avg",
        norm_eps: float = 1e-6,
        post_norm: bool = False,
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.modalities = build_modalities(modalities, embed_dim)
        if len(self.modalities) != 1:
            raise ValueError(f"EncoderClassifier takes one modality, got {list(self.modalities)}")
        if global_pool not in ("avg", "cls", "time_avg"):
            raise ValueError(f"global_pool must be 'avg', 'cls' or 'time_avg', got {global_pool!r}")
        if global_pool == "cls" and not cls_token:
            raise ValueError("global_pool='cls' needs cls_token=True")
        for name, p in (("mask_t_prob", mask_t_prob), ("mask_f_prob", mask_f_prob)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.key = next(iter(self.modalities))
        self.embed_dim = embed_dim
        self.bands = 1
        if global_pool == "time_avg":
            mod = self.modalities[self.key]
            if getattr(mod, "layout", "tf") != "tf" or mask_f_prob > 0:
                raise ValueError("global_pool='time_avg' needs the time-major token layout and mask_f_prob=0")
            self.bands = mod.input_shape[-1] // mod.patch_size
        self.num_features = embed_dim * self.bands
        self.num_classes = num_classes
        self.mask_t_prob = mask_t_prob
        self.mask_f_prob = mask_f_prob
        self.global_pool = global_pool
        self.has_cls = cls_token
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=False)
        dpr = drop_path_rates(drop_path, depth)
        self.pre_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if pre_norm else None
        self.blocks = nn.ModuleList(
            [
                make_block(
                    embed_dim, num_heads, mlp_ratio=mlp_ratio, drop_path=dpr[i], norm_eps=norm_eps, post_norm=post_norm
                )
                for i in range(depth)
            ]
        )
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(head_drop)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head_init_std = head_init_std
        self.apply(init_mae_weights)
        if cls_token:
            nn.init.normal_(self.cls_token, std=0.02)
        self.reset_head()

    @property
    def modality(self):
        return self.modalities[self.key]

    def reset_head(self, num_classes: Optional[int] = None) -> None:
        """Re-create (when num_classes is given) and re-initialise the head: normal(std), bias 0."""
        if num_classes is not None and num_classes != self.num_classes:
            self.num_classes = num_classes
            self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, std=self.head_init_std)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set:
        return {"cls_token", "cls_pos_embed"}

    def forward_tokens(
        self,
        inputs: Mapping[str, torch.Tensor],
        *,
        mask: Optional[bool] = None,
        noise_t: Optional[torch.Tensor] = None,
        noise_f: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """-> [B, (1+)L', D] encoder outputs (no final norm, as AudioMAE fine-tuning).

        mask: apply the structured masking (default: in training mode when a prob > 0).
        noise_t [B, T'], noise_f [B, F']: optional masking noise (argsort ascending keeps).
        """
        if self.key not in inputs:
            raise KeyError(f"inputs lack modality {self.key!r}; got {list(inputs)}")
        x = self.modality.embed(inputs[self.key])
        if mask is None:
            mask = self.training and (self.mask_t_prob > 0 or self.mask_f_prob > 0)
        if mask:
            grid = self.modality.input_grid(inputs[self.key])
            x, _ = structured_time_freq_mask(x, grid, self.mask_t_prob, self.mask_f_prob, noise_t, noise_f)
        if self.has_cls:
            cls = (self.cls_token + self.cls_pos_embed).to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "cls":
            return self.fc_norm(x[:, 0])
        if self.global_pool == "time_avg":  # tokens t * F' + f: [B, T'*F', D] -> [B, F', D] -> [B, F'*D]
            x = x[:, 1 if self.has_cls else 0 :]
            return self.fc_norm(x.reshape(x.shape[0], -1, self.bands, x.shape[-1]).mean(dim=1)).flatten(1)
        return self.fc_norm(x[:, 1 if self.has_cls else 0 :].mean(dim=1))

    def forward_features(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """-> pooled, normed features [B, num_features] (D, or F' * D for "time_avg")."""
        return self.pool(self.forward_tokens(inputs))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(inputs)))

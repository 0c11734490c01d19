"""The masked-decoder interface shared by every registered decoder.

A decoder receives the encoder's visible tokens ``latent [B, N, D_enc]`` laid out as
``[cls?] + visible(modality 0) + visible(modality 1) + ...`` (the order of ``specs``) and each
modality's ``MaskInfo``. ``expand`` projects to the decoder width, re-inserts mask tokens, un-shuffles
to the original token order and adds fixed positional (and, with several modalities, learned
modality) embeddings. A subclass implements ``forward_blocks``; ``forward`` returns
``{modality: [B, L_m, patch_dim_m]}``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ..structures import GridSpec, MaskInfo

__all__ = ["Decoder"]


class Decoder(nn.Module):
    """Base class. Parameter names: ``embed``, ``mask_token``, ``pos_embed.<m>``, ``cls_pos_embed``,
    ``modality_embed.<m>`` (several modalities only), ``blocks``, ``norm``, ``pred.<m>``.

    Args:
        encoder_dim: width of the encoder tokens.
        specs: per-modality grid specs, in token order.
        has_cls: whether ``latent`` starts with a cls token.
        embed_dim: decoder width.
        norm_eps: LayerNorm epsilon.
        out_dim: values predicted per token (default: each modality's ``patch_dim``, the pixels of
            its patch; a latent-target objective asks for the encoder width instead).

    Class hooks a subclass may define, so the model presets and the checkpoint import need no
    list of decoders:

    - ``preset_params(size) -> dict``: its params at a named model size ("tiny", "demo",
      "vit_base", ...), e.g. fewer blocks for the small sizes (default: none, its own defaults);
    - ``official_params(sd) -> dict | None``: when a released AudioMAE pretraining state dict
      (``decoder_blocks.N.*`` keys) holds this decoder, its params (depth, heads, ...), else None.
    """

    def __init__(
        self,
        *,
        encoder_dim: int,
        specs: Mapping[str, GridSpec],
        has_cls: bool,
        embed_dim: int = 512,
        norm_eps: float = 1e-6,
        out_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.specs = dict(specs)
        self.has_cls = has_cls
        self.embed_dim = embed_dim
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.ParameterDict(
            {m: nn.Parameter(s.pos_table(embed_dim).unsqueeze(0), requires_grad=False) for m, s in self.specs.items()}
        )
        if has_cls:
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=False)
        if len(self.specs) > 1:
            self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, embed_dim)) for m in self.specs})
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.pred = nn.ModuleDict({m: nn.Linear(embed_dim, out_dim or s.patch_dim) for m, s in self.specs.items()})

    @classmethod
    def preset_params(cls, size: str) -> Dict[str, Any]:
        """Params at a named model size (default: none)."""
        return {}

    @classmethod
    def official_params(cls, sd: Mapping[str, torch.Tensor]) -> Optional[Dict[str, Any]]:
        """Params of this decoder in a released AudioMAE state dict, or None (default: never)."""
        return None

    def init_extra(self) -> None:
        """Normal(0.02) for the learned tokens, as MAE. Call after any module-wide init."""
        nn.init.normal_(self.mask_token, std=0.02)
        if len(self.specs) > 1:
            for p in self.modality_embed.values():
                nn.init.normal_(p, std=0.02)

    def expand(
        self, latent: torch.Tensor, masks: Mapping[str, MaskInfo]
    ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """latent [B, N, D_enc] -> (cls [B, 1, d] or None, {m: [B, L_m, d]} in original token order)."""
        x = self.embed(latent)
        B, _, d = x.shape
        start = 0
        cls = None
        if self.has_cls:
            cls = x[:, :1] + self.cls_pos_embed.to(x.dtype)
            start = 1
        out: Dict[str, torch.Tensor] = {}
        for m, spec in self.specs.items():
            info = masks[m]
            vis = x[:, start : start + info.num_visible]
            start += info.num_visible
            L = spec.num_tokens
            if info.ids_restore.shape[1] != L:
                raise ValueError(
                    f"the decoder was built for {L} {m} tokens (grid {spec.grid}), the input has"
                    f" {info.ids_restore.shape[1]}: build the model at this input length"
                    " (avmae.hub.load_pretrained(path, target_length=...))"
                )
            fill = self.mask_token.to(x.dtype).expand(B, L - info.num_visible, d)
            seq = torch.cat([vis, fill], dim=1)
            seq = torch.gather(seq, 1, info.ids_restore.unsqueeze(-1).expand(-1, -1, d))
            seq = seq + self.pos_embed[m].to(x.dtype)
            if len(self.specs) > 1:
                seq = seq + self.modality_embed[m].to(x.dtype)
            out[m] = seq
        if start != x.shape[1]:
            raise ValueError(f"latent has {x.shape[1]} tokens but the masks account for {start}")
        return cls, out

    def forward_blocks(
        self, cls: Optional[torch.Tensor], tokens: Dict[str, torch.Tensor]
    ) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, latent: torch.Tensor, masks: Mapping[str, MaskInfo]) -> Dict[str, torch.Tensor]:
        cls, tokens = self.expand(latent, masks)
        tokens = self.forward_blocks(cls, tokens)
        return {m: self.pred[m](self.norm(t)) for m, t in tokens.items()}

"""CAV-MAE's modules: ``CAVMAE`` (pretraining) and ``CAVMAEClassifier`` (fine-tuning), with the
shared block's ``ModalityNormBlock``; the architecture and the differences from the release are
described in ``avmae.models.cav_mae``, which registers the presets and re-exports these."""

from __future__ import annotations

from functools import partial
from typing import ClassVar, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp
from timm.models.vision_transformer import Attention

from ..layers import drop_path_rates, init_mae_weights, make_block
from .mae import MaskedAutoencoder, build_modalities, mae_objectives

__all__ = ["ModalityNormBlock", "CAVMAE", "CAVMAEClassifier", "FT_MODES", "LN_EPS", "MODALITY_KEYS"]

LN_EPS = 1e-5  # the release builds every norm with nn.LayerNorm's default eps
MODALITY_KEYS = ("audio", "video")  # the release's "a" and "v"


class ModalityNormBlock(nn.Module):
    """Pre-norm transformer block with shared attention / MLP weights and one pair of LayerNorms
    per input kind: ``norm1/norm2`` for joint input, ``modality_norm1/2.<m>`` for modality m alone.

    x: [B, N, D] -> [B, N, D]; ``forward(x, modality=None)`` uses the joint norms.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        modalities: Tuple[str, ...] = MODALITY_KEYS,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_eps: float = LN_EPS,
    ) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=norm_eps)
        self.norm1 = norm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.modality_norm1 = nn.ModuleDict({m: norm(dim) for m in modalities})
        self.modality_norm2 = nn.ModuleDict({m: norm(dim) for m in modalities})
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, modality: Optional[str] = None) -> torch.Tensor:
        if modality is None:
            n1, n2 = self.norm1, self.norm2
        else:
            n1, n2 = self.modality_norm1[modality], self.modality_norm2[modality]
        x = x + self.drop_path(self.attn(n1(x)))
        x = x + self.drop_path(self.mlp(n2(x)))
        return x


def _modality_configs(audio_length: int, num_mel_bins: int, image_size: int, patch_size: int, pos_trainable: bool):
    return {
        "audio": dict(
            target_length=audio_length,
            num_mel_bins=num_mel_bins,
            patch_size=patch_size,
            layout="ft",
            pos_embed="sincos2d",
            pos_trainable=pos_trainable,
        ),
        "video": dict(
            num_frames=1, image_size=image_size, patch_size=patch_size, tubelet=1, pos_trainable=pos_trainable
        ),
    }


def _check_depths(depth: int, modality_specific_depth: int) -> None:
    if not 0 <= modality_specific_depth < depth:
        raise ValueError(
            f"modality_specific_depth={modality_specific_depth} must leave at least one shared block of depth={depth}"
        )


def _shared_blocks(embed_dim: int, num_heads: int, mlp_ratio: float, drop_paths: List[float]) -> nn.ModuleList:
    """The blocks both modalities share, one per stochastic-depth rate in ``drop_paths``."""
    return nn.ModuleList(
        [ModalityNormBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, drop_path=d) for d in drop_paths]
    )


class CAVMAE(MaskedAutoencoder):
    """CAV-MAE pretraining model.

    ``model({"audio": [B,1,T,F], "video": [B,1,3,H,W]}, mask_ratio=None, noise={"audio": [B,La],
    "video": [B,Lv]})`` -> ``MAEOutput`` with losses ``mae_audio``, ``mae_video``, ``contrastive``
    (unweighted; ``loss`` = mae_loss_weight * (mae_audio + mae_video) + contrast_loss_weight *
    contrastive), ``pred`` {"audio": [B,La,256], "video": [B,Lv,768]}, ``mask``, and
    ``extras["contrastive_acc"]``.

    Args:
        audio_length: spectrogram frames T (1024).
        num_mel_bins: spectrogram mel bins F (128).
        image_size: frame side (224).
        patch_size: patch side (16).
        embed_dim: encoder width (768).
        depth: encoder blocks, a modality branch plus the shared blocks (12).
        num_heads: encoder attention heads (12).
        mlp_ratio: encoder MLP width, in multiples of ``embed_dim`` (4).
        modality_specific_depth: blocks per modality before the shared ones (11).
        decoder_embed_dim: the joint decoder's width (512).
        decoder_depth: the joint decoder's blocks (8).
        decoder_num_heads: the joint decoder's attention heads (16).
        norm_pix_loss: per-patch normalised targets (the released recipes use True).
        mask_ratio_a: default audio masking ratio (0.75).
        mask_ratio_v: default video masking ratio (0.75).
        mae_loss_weight: weight of the reconstruction losses (1.0).
        contrast_loss_weight: weight of the contrastive loss (0.01).
        bidirect_contrast: average both InfoNCE directions (default: column-wise only).
        contrastive_gather: negatives from every process under torch.distributed.
        pos_trainable: learn the positional tables (the release's ``tr_pos``; False).
        drop_path: stochastic depth.
    """

    def __init__(
        self,
        *,
        audio_length: int = 1024,
        num_mel_bins: int = 128,
        image_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        modality_specific_depth: int = 11,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
        mask_ratio_a: float = 0.75,
        mask_ratio_v: float = 0.75,
        mae_loss_weight: float = 1.0,
        contrast_loss_weight: float = 0.01,
        bidirect_contrast: bool = False,
        contrastive_gather: bool = True,
        pos_trainable: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        _check_depths(depth, modality_specific_depth)
        super().__init__(
            modalities=_modality_configs(audio_length, num_mel_bins, image_size, patch_size, pos_trainable),
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            joint_depth=depth - modality_specific_depth,
            cls_token=False,
            decoder="joint",
            decoder_params=dict(
                embed_dim=decoder_embed_dim,
                depth=decoder_depth,
                num_heads=decoder_num_heads,
                mlp_ratio=mlp_ratio,
                norm_eps=LN_EPS,
            ),
            mask_ratio={"audio": mask_ratio_a, "video": mask_ratio_v},
            objectives=mae_objectives(
                2,
                norm_pix_loss=norm_pix_loss,
                loss_weights={"audio": mae_loss_weight, "video": mae_loss_weight},
                contrastive_weight=contrast_loss_weight,
                contrastive_temperature=0.05,
                contrastive_bidirectional=bidirect_contrast,
                contrastive_gather=contrastive_gather,
            ),
            drop_path=drop_path,
            norm_eps=LN_EPS,
        )
        dpr = drop_path_rates(drop_path, depth)
        self.blocks = _shared_blocks(embed_dim, num_heads, mlp_ratio, dpr[modality_specific_depth:])
        self.modality_norm = nn.ModuleDict({m: nn.LayerNorm(embed_dim, eps=LN_EPS) for m in MODALITY_KEYS})
        # the rest was initialised by MaskedAutoencoder (MAE / CAV-MAE init); the new parts alike
        self.blocks.apply(init_mae_weights)
        self.modality_norm.apply(init_mae_weights)

    def single_modality(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """Modality m alone through the shared blocks with its own norms, then ``modality_norm[m]``."""
        for blk in self.blocks:
            x = blk(x, m)
        return self.modality_norm[m](x)

    @torch.no_grad()
    def forward_modality_features(self, inputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Unmasked single-modality features, the release's ``forward_feat`` (retrieval):
        {m: [B, L_m, D]} for each modality present in ``inputs``."""
        out = {}
        for m, mod in self.modalities.items():
            if m not in inputs:
                continue
            x = mod.embed(inputs[m]) + self.modality_embed[m].to(inputs[m].dtype)
            for blk in self.modality_blocks[m] if m in self.modality_blocks else ():
                x = blk(x)
            out[m] = self.single_modality(m, x)
        return out


FT_MODES = ("multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly")


class CAVMAEClassifier(nn.Module):
    """CAV-MAE fine-tuning model (the release's ``CAVMAEFT``): the pretraining encoder (same
    parameter names) + mean over tokens + ``mlp_head`` (LayerNorm, Linear). ``model(inputs)`` ->
    logits [B, num_classes].

    Modes (``mode=``, or per call ``model(inputs, mode=...)``):
    - "multimodal": cat(audio, video) -> shared blocks (joint norms) -> ``norm`` -> mean;
    - "audioonly" / "videoonly": one modality -> shared blocks (its norms) -> ``modality_norm`` -> mean;
    - "missingaudioonly" / "missingvideoonly" (trained multimodal, only audio / only video given; the
      release's names): the average of the joint-norm and the modality-norm pooled features.

    Positional tables are trainable by default (the release's fine-tuning ``tr_pos=True``).
    ``head_name`` names the classifier head among the submodules (the part a linear probe trains).
    """

    head_name: ClassVar[str] = "mlp_head"

    def __init__(
        self,
        *,
        num_classes: int = 527,
        mode: str = "multimodal",
        audio_length: int = 1024,
        num_mel_bins: int = 128,
        image_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        modality_specific_depth: int = 11,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        pos_trainable: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in FT_MODES:
            raise ValueError(f"unknown CAV-MAE mode {mode!r}; valid: {', '.join(FT_MODES)}")
        _check_depths(depth, modality_specific_depth)
        self.mode = mode
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.modalities = build_modalities(
            _modality_configs(audio_length, num_mel_bins, image_size, patch_size, pos_trainable), embed_dim
        )
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, embed_dim)) for m in MODALITY_KEYS})
        dpr = drop_path_rates(drop_path, depth)
        norm = partial(nn.LayerNorm, eps=LN_EPS)
        self.modality_blocks = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    [
                        make_block(embed_dim, num_heads, mlp_ratio=mlp_ratio, drop_path=dpr[i], norm_eps=LN_EPS)
                        for i in range(modality_specific_depth)
                    ]
                )
                for m in MODALITY_KEYS
            }
        )
        self.blocks = _shared_blocks(embed_dim, num_heads, mlp_ratio, dpr[modality_specific_depth:])
        self.norm = norm(embed_dim)
        self.modality_norm = nn.ModuleDict({m: norm(embed_dim) for m in MODALITY_KEYS})
        self.mlp_head = nn.Sequential(norm(embed_dim), nn.Linear(embed_dim, num_classes))
        self.apply(init_mae_weights)
        for mod in self.modalities.values():
            w = mod.patch_embed.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for p in self.modality_embed.values():
            nn.init.normal_(p, std=0.02)

    def no_weight_decay(self) -> set:
        return {f"modality_embed.{m}" for m in MODALITY_KEYS}

    def encode(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """Embed modality m and run its own blocks. -> [B, L_m, D]."""
        x = self.modalities[m].embed(x) + self.modality_embed[m].to(x.dtype)
        for blk in self.modality_blocks[m]:
            x = blk(x)
        return x

    def _shared(self, x: torch.Tensor, modality: Optional[str]) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, modality)
        return self.norm(x) if modality is None else self.modality_norm[modality](x)

    def forward_features(self, inputs: Mapping[str, torch.Tensor], mode: Optional[str] = None) -> torch.Tensor:
        """-> pooled features [B, D] for ``mode`` (default ``self.mode``)."""
        mode = mode or self.mode
        if mode not in FT_MODES:
            raise ValueError(f"unknown CAV-MAE mode {mode!r}; valid: {', '.join(FT_MODES)}")
        need = {"multimodal": MODALITY_KEYS, "audioonly": ("audio",), "missingaudioonly": ("audio",)}.get(
            mode, ("video",)
        )
        missing = [m for m in need if m not in inputs]
        if missing:
            raise KeyError(f"mode {mode!r} needs inputs {list(need)}; missing {missing}")
        if mode == "multimodal":
            x = torch.cat([self.encode(m, inputs[m]) for m in MODALITY_KEYS], dim=1)
            return self._shared(x, None).mean(dim=1)
        m = need[0]
        x = self.encode(m, inputs[m])
        own = self._shared(x, m).mean(dim=1)
        if mode.startswith("missing"):
            return (self._shared(x, None).mean(dim=1) + own) / 2
        return own

    def forward(self, inputs: Mapping[str, torch.Tensor], mode: Optional[str] = None) -> torch.Tensor:
        return self.mlp_head(self.forward_features(inputs, mode))

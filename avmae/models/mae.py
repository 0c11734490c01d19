"""MaskedAutoencoder: MAE pretraining over any set of registered modalities.

    inputs {m: x_m} --embed--> tokens --(clones)--> masker (registry) --> visible --modality blocks-->
        [cls] + concat --joint blocks--> norm --decoder (registry)--> {m: pred} --objectives (registry)--> loss

Each part is chosen by name: modalities, the decoder, a masker per modality (``avmae.masking``)
and the objectives (``avmae.objectives``: by default norm-pix masked-patch MSE; the presets build
theirs with ``mae_objectives``, adding InfoNCE when ``contrastive_weight > 0``). With one
modality every encoder block is a joint block and the model is AudioMAE's ``MaskedAutoencoderViT``;
parameter names then follow it (``blocks.N``, ``norm``, ``cls_token``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..layers import drop_path_rates, init_mae_weights, make_block
from ..masking import Masker, MaskerSpec, build_masker
from ..objectives import ObjectiveSpec, build_objectives
from ..registry import DECODERS, MODALITIES
from ..structures import MAEOutput, MaskInfo

_logger = logging.getLogger(__name__)

__all__ = ["MaskedAutoencoder", "build_modalities", "build_decoder", "mae_objectives", "preset_objectives", "LOSS_ARGS"]

ModalityConfig = Mapping[str, Mapping[str, Any]]

# the presets' loss options (the official recipes' names), turned into objective specs by ``mae_objectives``
LOSS_ARGS = (
    "norm_pix_loss",
    "loss_weights",
    "contrastive_weight",
    "contrastive_temperature",
    "contrastive_bidirectional",
    "contrastive_gather",
)


def mae_objectives(
    num_modalities: int = 1,
    *,
    norm_pix_loss: bool = True,
    loss_weights: Optional[Mapping[str, float]] = None,
    contrastive_weight: float = 0.0,
    contrastive_temperature: float = 0.05,
    contrastive_bidirectional: bool = False,
    contrastive_gather: bool = True,
) -> List[Dict[str, Any]]:
    """The objective specs of an MAE preset: ``mae_mse`` (``norm_pix_loss``: per-patch normalised
    targets; ``loss_weights``: {modality: weight} of the reconstruction terms, default 1 each)
    and, with ``contrastive_weight > 0``, ``info_nce`` between the first two modalities' pooled
    single-modality representations (``contrastive_temperature``, ``contrastive_bidirectional``;
    ``contrastive_gather``: negatives from every process under ``torch.distributed``, so the loss
    equals the global-batch loss)."""
    if contrastive_weight > 0 and num_modalities < 2:
        raise ValueError("contrastive_weight > 0 needs two modalities")
    specs: List[Dict[str, Any]] = [
        {"name": "mae_mse", "norm_pix": norm_pix_loss, "modality_weights": dict(loss_weights or {})}
    ]
    if contrastive_weight > 0:
        specs.append(
            {
                "name": "info_nce",
                "weight": contrastive_weight,
                "temperature": contrastive_temperature,
                "bidirectional": contrastive_bidirectional,
                "gather": contrastive_gather,
            }
        )
    return specs


def preset_objectives(overrides: Dict[str, Any], num_modalities: int, **loss: Any) -> List[ObjectiveSpec]:
    """A preset's objectives: takes ``objectives`` and the ``LOSS_ARGS`` out of its keyword
    ``overrides`` (a config's ``model.params``, a checkpoint's recorded params) -> the given
    ``objectives`` (the loss options are then unused, as before), else ``mae_objectives`` of the
    loss options (``loss``: the preset's own values, those in ``overrides`` first)."""
    loss.update({k: overrides.pop(k) for k in LOSS_ARGS if k in overrides})
    objectives = overrides.pop("objectives", None)
    return list(objectives) if objectives is not None else mae_objectives(num_modalities, **loss)


def build_modalities(configs: ModalityConfig, embed_dim: int) -> nn.ModuleDict:
    """{input key: params} -> ModuleDict of registered modalities. ``params["type"]`` picks a
    registered class other than the one named like the key."""
    mods = nn.ModuleDict()
    for key, params in configs.items():
        params = dict(params or {})
        mod = MODALITIES.build(params.pop("type", key), params, embed_dim=embed_dim)
        mod.key = key
        mods[key] = mod
    if not len(mods):
        raise ValueError("a model needs at least one modality")
    return mods


def build_decoder(spec: Union[str, Mapping[str, Any]], params: Optional[Mapping[str, Any]], **common) -> nn.Module:
    """``"swin"`` or ``{"name": "swin", ...params}`` (``params`` merged over) -> a registered decoder."""
    return DECODERS.build(spec, params, **common)


class MaskedAutoencoder(nn.Module):
    """Masked autoencoder over a dict of modalities.

    Args:
        modalities: {input key: modality params}, e.g. {"audio": {"target_length": 1024}}.
        embed_dim: encoder width.
        depth: encoder blocks.
        num_heads: encoder attention heads.
        mlp_ratio: encoder MLP width, in multiples of ``embed_dim``.
        joint_depth: blocks over the concatenated modalities (the rest are per modality);
            ignored with one modality (all blocks are joint).
        cls_token: prepend a learned cls token to the joint sequence (AudioMAE does).
        decoder: registered decoder name, or {"name": ..., params}.
        decoder_params: decoder constructor params (embed_dim, depth, num_heads, ...).
        mask_ratio: default ratio, a float for all or {modality: ratio}.
        maskers: {modality: masker} (a registered name or {"name": ..., <params>}); default: each
            modality's ``default_masking`` ("random"; "tube" for video tubelets).
        num_clones: encode each clip this many times per step, each clone with its own mask
            (EAT's multi-mask; the targets and any teacher pass are shared by the clones).
        objectives: the losses, a list of registered names or {"name", "weight", <params>};
            None: ``mae_objectives()`` (norm-pix masked-patch MSE). The presets take the official
            loss options (``LOSS_ARGS``: ``norm_pix_loss``, ``contrastive_weight``, ...) and pass
            ``mae_objectives(...)`` of them.
        drop_path: stochastic depth of the encoder.
        post_norm: post-LN encoder blocks (``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``, EAT /
            data2vec 2.0) instead of ViT's pre-LN ones.
        pre_norm: a LayerNorm (``pre_norm``) over ``[cls; tokens]`` before the first joint block (EAT).
        final_norm: the LayerNorm ``norm`` after the last block (AudioMAE); EAT has none.
        decoder: None builds the encoder alone (a released encoder to extract features from or to
            fine-tune): ``forward_features`` works, ``forward`` (pretraining) refuses.
    """

    def __init__(
        self,
        *,
        modalities: ModalityConfig,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        joint_depth: Optional[int] = None,
        cls_token: bool = True,
        decoder: Union[str, Mapping[str, Any]] = "swin",
        decoder_params: Optional[Mapping[str, Any]] = None,
        mask_ratio: Union[float, Mapping[str, float], None] = None,
        maskers: Optional[Mapping[str, MaskerSpec]] = None,
        num_clones: int = 1,
        objectives: Optional[Sequence[ObjectiveSpec]] = None,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        post_norm: bool = False,
        pre_norm: bool = False,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        self.modalities = build_modalities(modalities, embed_dim)
        names = list(self.modalities)
        single = len(names) == 1
        joint_depth = depth if (single or joint_depth is None) else joint_depth
        if not 0 <= joint_depth <= depth:
            raise ValueError(f"joint_depth={joint_depth} must be within [0, depth={depth}]")
        specific = depth - joint_depth
        dpr = drop_path_rates(drop_path, depth)
        self.embed_dim = embed_dim
        self.mask_ratio = self._ratios(mask_ratio)
        self.maskers = self._maskers(maskers)
        if int(num_clones) < 1:
            raise ValueError(f"num_clones must be >= 1, got {num_clones}")
        self.num_clones = int(num_clones)
        objective_list = build_objectives(mae_objectives(len(names)) if objectives is None else objectives)
        if not objective_list:
            raise ValueError("a pretraining model needs at least one objective")
        # predictions are per-patch normalised when the reconstruction objective says so (viz restores them)
        self.norm_pix_loss = any(getattr(o, "norm_pix", False) for o in objective_list)

        # ---- encoder ----
        self.has_cls = cls_token
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=False)
        self.modality_blocks = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    [
                        make_block(
                            embed_dim,
                            num_heads,
                            mlp_ratio=mlp_ratio,
                            drop_path=dpr[i],
                            norm_eps=norm_eps,
                            post_norm=post_norm,
                        )
                        for i in range(specific)
                    ]
                )
                for m in names
            }
            if specific
            else {}
        )
        if not single:
            self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, embed_dim)) for m in names})
        self.pre_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if pre_norm else None
        self.blocks = nn.ModuleList(
            [
                make_block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    drop_path=dpr[specific + i],
                    norm_eps=norm_eps,
                    post_norm=post_norm,
                )
                for i in range(joint_depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm else nn.Identity()

        # ---- decoder ----
        specs = {m: mod.spec() for m, mod in self.modalities.items()}
        self.decoder = (
            None
            if decoder is None
            else build_decoder(decoder, decoder_params, encoder_dim=embed_dim, specs=specs, has_cls=cls_token)
        )
        self.initialize_weights()

        # ---- objectives: attached last, to the finished model (a teacher copies it here) ----
        for objective in objective_list:
            objective.attach(self)
        self.objectives = nn.ModuleList(objective_list)

    def _ratios(self, ratio: Union[float, Mapping[str, float], None]) -> Dict[str, float]:
        out = {m: mod.default_mask_ratio for m, mod in self.modalities.items()}
        if isinstance(ratio, Mapping):
            unknown = set(ratio) - set(out)
            if unknown:
                raise ValueError(f"mask_ratio names unknown modalities {sorted(unknown)}; model has {sorted(out)}")
            out.update({m: float(r) for m, r in ratio.items()})
        elif ratio is not None:
            out = {m: float(ratio) for m in out}
        for m, r in out.items():
            if not 0.0 <= r < 1.0:
                raise ValueError(f"mask_ratio for {m!r} must be in [0, 1), got {r}")
        return out

    def _maskers(self, specs: Optional[Mapping[str, MaskerSpec]]) -> Dict[str, Masker]:
        specs = dict(specs or {})
        unknown = set(specs) - set(self.modalities)
        if unknown:
            raise ValueError(f"maskers names unknown modalities {sorted(unknown)}; model has {list(self.modalities)}")
        return {m: build_masker(specs.get(m, mod.default_masking)) for m, mod in self.modalities.items()}

    def initialize_weights(self) -> None:
        # fixed tables were filled at construction; the rest follows MAE
        self.apply(init_mae_weights)
        for mod in self.modalities.values():
            w = mod.patch_embed.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.has_cls:
            nn.init.normal_(self.cls_token, std=0.02)
        if hasattr(self, "modality_embed"):
            for p in self.modality_embed.values():
                nn.init.normal_(p, std=0.02)
        if self.decoder is not None and hasattr(self.decoder, "init_extra"):
            self.decoder.init_extra()

    def no_weight_decay(self) -> set:
        return {"cls_token", "cls_pos_embed"} | {f"modality_embed.{m}" for m in getattr(self, "modality_embed", {})}

    # ------------------------------------------------------------------ steps
    def _check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> None:
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise KeyError(
                f"inputs lack modalities {missing}; this model expects {list(self.modalities)}, got {list(inputs)}"
            )

    def embed_and_mask(
        self, inputs: Mapping[str, torch.Tensor], mask_ratio=None, noise=None, *, num_clones: int = 1
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, MaskInfo]]:
        """Embed each modality, repeat it ``num_clones`` times, mask it (its masker; ``noise[m]``
        [B * num_clones, L_m] when given) and run its own blocks. -> ({m: [B', K_m, D]}, {m: MaskInfo})."""
        self._check_inputs(inputs)
        ratios = self.mask_ratio if mask_ratio is None else self._ratios(mask_ratio)
        tokens, masks = {}, {}
        for m, mod in self.modalities.items():
            x = mod.embed(inputs[m])
            if hasattr(self, "modality_embed"):
                x = x + self.modality_embed[m].to(x.dtype)
            if num_clones > 1:
                x = x.repeat_interleave(num_clones, dim=0)
            x, mask, ids_restore, _ = self.maskers[m](
                x, mod.input_grid(inputs[m]), ratios[m], None if noise is None else noise.get(m)
            )
            for blk in self.modality_blocks[m] if m in self.modality_blocks else ():
                x = blk(x)
            tokens[m] = x
            masks[m] = MaskInfo(mask=mask, ids_restore=ids_restore, num_visible=x.shape[1])
        return tokens, masks

    def joint(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[cls] + concatenated tokens through the joint blocks and the final norm. -> [B, N, D]."""
        parts = list(tokens.values())
        if self.has_cls:
            B = parts[0].shape[0]
            cls = (self.cls_token + self.cls_pos_embed).to(parts[0].dtype).expand(B, -1, -1)
            parts = [cls] + parts
        x = self._pre_norm(torch.cat(parts, dim=1))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def _pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pre_norm is None else self.pre_norm(x)

    def forward_encoder(
        self, inputs, mask_ratio=None, noise=None
    ) -> Tuple[torch.Tensor, Dict[str, MaskInfo], Dict[str, torch.Tensor]]:
        """-> latent [B', (1+) sum K_m, D], masks, per-modality tokens before the joint blocks."""
        tokens, masks = self.embed_and_mask(inputs, mask_ratio, noise, num_clones=self.num_clones)
        return self.joint(tokens), masks, tokens

    def forward_decoder(self, latent: torch.Tensor, masks: Mapping[str, MaskInfo]) -> Dict[str, torch.Tensor]:
        if self.decoder is None:
            raise RuntimeError(
                f"{type(self).__name__} was built without a decoder (an encoder to extract features from or to"
                " fine-tune): use forward_features, or build it with a decoder to pretrain"
            )
        return self.decoder(latent, masks)

    def forward_loss(self, inputs: Mapping[str, torch.Tensor], out: MAEOutput) -> MAEOutput:
        """Apply the objectives: ``out.loss`` = sum of weight x loss, their terms into
        ``out.losses``, their metrics into ``out.extras``."""
        loss = 0
        for objective in self.objectives:
            result = objective(self, inputs, out)
            out.losses.update(result.terms)
            out.extras.update(result.metrics)
            loss = loss + objective.weight * result.loss
        out.loss = loss
        return out

    def single_modality(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """One modality's tokens alone through the joint blocks and the final norm. -> [B, K, D]."""
        x = self._pre_norm(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, inputs: Mapping[str, torch.Tensor], mask_ratio=None, noise=None) -> MAEOutput:
        latent, masks, tokens = self.forward_encoder(inputs, mask_ratio, noise)
        pred = self.forward_decoder(latent, masks)
        out = MAEOutput(
            loss=None,
            losses={},
            pred=pred,
            mask={m: i.mask for m, i in masks.items()},
            latent=latent,
            tokens=tokens,
            num_clones=self.num_clones,
        )
        return self.forward_loss(inputs, out)

    # ------------------------------------------------------------------ features
    def _unmasked_tokens(self, inputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        zero = {m: 0.0 for m in self.modalities}
        noise = {m: self._identity_noise(inputs[m], mod) for m, mod in self.modalities.items()}
        return self.embed_and_mask(inputs, mask_ratio=zero, noise=noise)[0]

    def block_outputs(self, inputs: Mapping[str, torch.Tensor]) -> List[torch.Tensor]:
        """Every token, nothing masked: the output of each joint block, before the final norm.
        -> list of ``len(self.blocks)`` tensors [B, (1+) L, D] (what a teacher's targets are made of)."""
        parts = list(self._unmasked_tokens(inputs).values())
        if self.has_cls:
            cls = (self.cls_token + self.cls_pos_embed).to(parts[0].dtype).expand(parts[0].shape[0], -1, -1)
            parts = [cls] + parts
        x = self._pre_norm(torch.cat(parts, dim=1))
        outs = []
        for blk in self.blocks:
            x = blk(x)
            outs.append(x)
        return outs

    @torch.no_grad()
    def forward_features(
        self, inputs: Mapping[str, torch.Tensor], contextual_from: Optional[int] = None
    ) -> torch.Tensor:
        """Encoder on all tokens (no masking). -> [B, N, D] after the final norm.

        contextual_from: when given, average the normed outputs of every joint block with index
        > contextual_from (AudioMAE's "contextual" features use 8 for ViT-B: blocks 9-11).
        """
        if contextual_from is None:
            return self.joint(self._unmasked_tokens(inputs))
        outs = [self.norm(x) for i, x in enumerate(self.block_outputs(inputs)) if i > contextual_from]
        if not outs:
            raise ValueError(f"contextual_from={contextual_from} leaves no block of {len(self.blocks)}")
        return torch.stack(outs).mean(0)

    @staticmethod
    def _identity_noise(x: torch.Tensor, mod) -> torch.Tensor:
        # increasing noise keeps every token in its original order
        return torch.arange(math.prod(mod.input_grid(x)), device=x.device, dtype=torch.float32).expand(x.shape[0], -1)

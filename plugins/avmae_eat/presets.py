"""EAT model presets: AudioMAE's ViT encoder with a cls token, EAT's masking, decoder and objective.

===========  =====  =====  =====  ==========================================  ========================
preset       width  depth  heads  pretraining                                  input
===========  =====  =====  =====  ==========================================  ========================
eat_vit_base 768    12     12     16 clones, inverse blocks of 5, mask 0.8,    1024 x 128 (10 s)
                                  6 conv layers, targets of all 12 blocks
eat_demo     192    4      3      8 clones, blocks of 3, 2 conv layers, top 4  256 x 128 (the CPU demo)
eat_tiny     64     2      4      4 clones, blocks of 3, 2 conv layers, top 2  64 x 128 (tests)
===========  =====  =====  =====  ==========================================  ========================

Every value is a keyword argument (``model.params`` in a run config).

``faithful=True`` builds the released EAT encoder (``avmae.models.eat``: post-LN blocks, a
LayerNorm over ``[cls; patches]`` before the first block, no final norm, the fixed 768 x 8 row
table sliced to the input) with this plugin's masking, decoder and objective, so it pretrains
the model the released checkpoints hold; the default (``faithful=False``) is the EAT-style model:
AudioMAE's pre-LN ViT with its final norm and table. Either fine-tunes with the AudioMAE recipes
(``eat_base_cls`` for the faithful one). Where both still differ from the released pretraining
(the targets are block outputs here, the FFN outputs there; the decoder's LayerNorm is affine
here, without parameters there) is listed in docs/checkpoints.md.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from avmae.models import MaskedAutoencoder
from avmae.models.eat import eat_encoder

__all__ = ["EAT_SIZES", "eat", "eat_vit_base", "eat_demo", "eat_tiny"]

EAT_SIZES: Dict[str, Dict[str, Any]] = {
    "vit_base": dict(
        embed_dim=768, depth=12, num_heads=12, target_length=1024, num_clones=16, block=5, decoder_depth=6
    ),
    "demo": dict(embed_dim=192, depth=4, num_heads=3, target_length=256, num_clones=8, block=3, decoder_depth=2),
    "tiny": dict(embed_dim=64, depth=2, num_heads=4, target_length=64, num_clones=4, block=3, decoder_depth=2),
}


def eat(
    size: str,
    *,
    target_length: Optional[int] = None,
    num_mel_bins: int = 128,
    mask_ratio: float = 0.8,
    num_clones: Optional[int] = None,
    block: Optional[int] = None,
    decoder_depth: Optional[int] = None,
    decoder_groups: int = 16,
    top_k: Optional[int] = None,
    decay: float = 0.9998,
    end_decay: float = 0.99999,
    anneal_steps: int = 100_000,
    utterance_weight: float = 1.0,
    faithful: bool = False,
    **overrides: Any,
) -> MaskedAutoencoder:
    """An EAT pretraining model of a named size (``EAT_SIZES``); other keyword arguments go to
    ``MaskedAutoencoder`` (e.g. ``drop_path``). ``faithful``: the released EAT encoder (see the
    module doc) instead of AudioMAE's ViT."""
    if size not in EAT_SIZES:
        raise ValueError(f"unknown EAT size {size!r}; valid: {', '.join(EAT_SIZES)}")
    s = EAT_SIZES[size]
    width = s["embed_dim"]
    kw: Dict[str, Any] = dict(embed_dim=width, depth=s["depth"], num_heads=s["num_heads"])
    kw.update(overrides)
    pretraining: Dict[str, Any] = dict(
        decoder="eat_cnn",
        decoder_params=dict(
            embed_dim=width, out_dim=kw["embed_dim"], depth=decoder_depth or s["decoder_depth"], groups=decoder_groups
        ),
        mask_ratio=mask_ratio,
        maskers={"audio": {"name": "inverse_block", "block": block or s["block"]}},
        num_clones=num_clones or s["num_clones"],
        objectives=[
            {
                "name": "eat_latent",
                "top_k": top_k or kw["depth"],
                "decay": decay,
                "end_decay": end_decay,
                "anneal_steps": anneal_steps,
                "utterance_weight": utterance_weight,
            }
        ],
    )
    if faithful:
        return eat_encoder(
            "base", target_length=target_length or s["target_length"], num_mel_bins=num_mel_bins, **pretraining, **kw
        )
    return MaskedAutoencoder(
        modalities={
            "audio": dict(
                target_length=target_length or s["target_length"], num_mel_bins=num_mel_bins, pos_embed="audiomae"
            )
        },
        cls_token=True,
        **pretraining,
        **kw,
    )


def eat_vit_base(**kw: Any) -> MaskedAutoencoder:
    """EAT ViT-B/16 pretraining model (the paper's EAT-base)."""
    return eat("vit_base", **kw)


def eat_demo(**kw: Any) -> MaskedAutoencoder:
    """EAT of the CPU demo's size (``audiomae_demo``'s encoder)."""
    return eat("demo", **kw)


def eat_tiny(**kw: Any) -> MaskedAutoencoder:
    """A tiny EAT for tests."""
    return eat("tiny", **kw)

"""EAT / SSLAM encoders, exactly as released (Chen et al., IJCAI 2024; SSLAM, ICLR 2025: same code
and keys), built from avmae's parts:

    fbank [B, 1, T, 128] --16x16 conv--> [B, N, D] + first N rows of a fixed 2-D sin-cos table of
    768 x 8 rows --prepend cls (no position)--> LayerNorm (``pre_norm``) --post-LN blocks--> tokens
    (no final norm)

- the block variant: ``post_norm=True`` (``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``);
- the pre-norm: ``pre_norm=True`` (a LayerNorm over ``[cls; patches + positions]``);
- the position rule: ``pos_embed="sincos2d_f32"`` (MAE's 2-D sin-cos computed in float32 as
  theirs is) on the time-major grid (first D/2 channels the frequency index, last D/2 the time
  index), stored for ``pos_max_length`` = 768 x 16 frames and sliced to the input's token count,
  so any input length up to 12,288 frames runs as theirs does;
- every LayerNorm eps 1e-6; no final norm.

``eat_base`` / ``eat_large``: the encoder (a ``MaskedAutoencoder`` without a decoder unless one is
given: ``forward_features`` returns every token, cls first, as EAT's ``extract_features``).
``eat_base_cls`` / ``eat_large_cls``: the fine-tuned model (cls token -> ``fc_norm`` eps 1e-6 ->
``head``; ``global_pool="avg"`` averages the patch tokens only, their ``MEAN_POOLING``).

The frontend is AudioMAE's (Kaldi fbank, zero padding to ``target_length`` before normalising),
with EAT's rounded statistics (``EAT_STATS``). The models carry ``pad_to_target = True``: EAT
extracts features of a short clip padded to ``target_length`` (no padding mask), so
``avmae.extract`` and the HEAR wrapper pad short clips to the window instead of running them at
their own length (``avmae.hub.length_step``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from ..registry import register_model
from .classifier import EncoderClassifier
from .mae import MaskedAutoencoder

__all__ = ["EAT_SIZES", "EAT_STATS", "EAT_TABLE_ROWS", "eat_encoder", "eat_classifier"]

EAT_SIZES: Dict[str, Dict[str, int]] = {
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}

# (mean, std) of the un-normalised fbank, as EAT's dataset code normalises: (x - mean) / (2 * std)
EAT_STATS: Dict[str, Tuple[float, float]] = {
    "audioset": (-4.268, 4.569),
    "esc50": (-6.627, 5.359),
    "speechcommands": (-6.846, 5.565),
}

EAT_TABLE_ROWS = 768  # time rows of the released positional table (``max_length``): 12,288 frames


def _audio(target_length: int, num_mel_bins: int, pos_max_length: Optional[int]) -> Dict[str, Any]:
    return dict(
        target_length=target_length,
        num_mel_bins=num_mel_bins,
        pos_embed="sincos2d_f32",
        pos_max_length=pos_max_length or EAT_TABLE_ROWS * 16,
    )


def _shape(size: str, kw: Dict[str, Any]) -> Dict[str, Any]:
    if size not in EAT_SIZES:
        raise ValueError(f"unknown EAT size {size!r}; valid: {', '.join(EAT_SIZES)}")
    s = dict(EAT_SIZES[size])
    for k in ("embed_dim", "depth", "num_heads"):  # explicit shapes (tests, other widths) win
        if k in kw:
            s[k] = kw.pop(k)
    return s


def eat_encoder(
    size: str = "base",
    *,
    target_length: int = 1024,
    num_mel_bins: int = 128,
    pos_max_length: Optional[int] = None,
    decoder: Any = None,
    **kw: Any,
) -> MaskedAutoencoder:
    """The EAT encoder of a named size (``EAT_SIZES``). ``decoder=None``: the encoder alone;
    other keyword arguments go to ``MaskedAutoencoder`` (a decoder, maskers and objectives make
    it a pretraining model, as the EAT pretraining plugin's ``faithful=True`` presets do)."""
    s = _shape(size, kw)
    model = MaskedAutoencoder(
        modalities={"audio": _audio(target_length, num_mel_bins, pos_max_length)},
        cls_token=True,
        decoder=decoder,
        post_norm=True,
        pre_norm=True,
        final_norm=False,
        norm_eps=1e-6,
        **s,
        **kw,
    )
    model.pad_to_target = True
    return model


def eat_classifier(
    size: str = "base",
    *,
    num_classes: int = 527,
    target_length: int = 1024,
    num_mel_bins: int = 128,
    pos_max_length: Optional[int] = None,
    global_pool: str = "cls",
    **kw: Any,
) -> EncoderClassifier:
    """The fine-tuned EAT model: the encoder, the cls token (``global_pool="cls"``, EAT's default
    ``CLS_TOKEN`` mode; "avg": the mean of the patch tokens), ``fc_norm`` (eps 1e-6), ``head``.
    Other keyword arguments go to ``EncoderClassifier`` (``mask_t_prob``, ``drop_path``, ...)."""
    s = _shape(size, kw)
    model = EncoderClassifier(
        modalities={"audio": _audio(target_length, num_mel_bins, pos_max_length)},
        num_classes=num_classes,
        cls_token=True,
        global_pool=global_pool,
        post_norm=True,
        pre_norm=True,
        norm_eps=1e-6,
        **s,
        **kw,
    )
    model.pad_to_target = True
    return model


def _register(size: str) -> None:
    s = EAT_SIZES[size]

    def encoder(**kw: Any) -> MaskedAutoencoder:
        return eat_encoder(size, **kw)

    def classifier(**kw: Any) -> EncoderClassifier:
        return eat_classifier(size, **kw)

    encoder.__doc__ = (
        f"EAT-{size} / SSLAM encoder ({s['embed_dim']}-d, {s['depth']} post-LN blocks, {s['num_heads']} heads);"
        " see avmae.models.eat."
    )
    classifier.__doc__ = f"EAT-{size} fine-tuned classifier (cls token, fc_norm, head); see avmae.models.eat."
    register_model(f"eat_{size}")(encoder)
    register_model(f"eat_{size}_cls")(classifier)


for _name in EAT_SIZES:
    _register(_name)

"""AST, the Audio Spectrogram Transformer (Gong et al., Interspeech 2021): the supervised baseline.

    x [B, 1, T, F] --transpose--> [B, 1, F, T] --16x16 conv, stride (fstride, tstride)--> tokens
        [B, F'*T', D] (overlapping patches, frequency-major: k = f * T' + t)
        --[cls, dist] + learned pos_embed--> DeiT blocks --> norm --> (x[:, 0] + x[:, 1]) / 2
        --head (LayerNorm + Linear)--> logits [B, C]

Legend: b batch, d width, f / t rows / columns of the token grid (frequency, time).

Checkpoints. This model's parameters are ``encoder.*`` (the DeiT backbone, called ``v`` in the
released code) and ``head.{0,1}.*`` (the released ``mlp_head``). The ``ast`` format, registered
with ``avmae.checkpoint`` at import, reads the released DataParallel state dicts
(``module.v.*``, ``module.mlp_head.*``) and this project's own files; DeiT's unused
``v.head`` / ``v.head_dist`` are ignored and reported. A positional table of another grid is
adapted as the released code does (``resample_pos_grid``). ``init_from_deit`` starts from an
ImageNet DeiT / timm ViT file (AST's ImageNet pretraining).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..checkpoint import CheckpointError, LoadReport, read_state_dict, register_format
from ..layers import make_block
from ..modalities.audio import PatchEmbed2d
from ..registry import register_model

_logger = logging.getLogger(__name__)

__all__ = [
    "AST_SIZES",
    "ASTEncoder",
    "ASTClassifier",
    "ast_classifier",
    "ast_grid",
    "resample_pos_grid",
    "adapt_pos_embed",
    "init_from_deit",
    "RELEASED_GRID",
]

Grid = Tuple[int, int]

# DeiT distilled backbones of the released code: tiny224, small224, base224 / base384
AST_SIZES: Dict[str, Dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}

# grid of the released AudioSet model (audioset_10_10_0.4593.pth: 128 x 1024, stride 10)
RELEASED_GRID: Grid = (12, 101)

_NUM_PREFIX = 2  # cls and distillation tokens


def ast_grid(num_mel_bins: int, target_length: int, fstride: int, tstride: int, patch_size: int = 16) -> Grid:
    """(F', T') token grid of a ``patch_size`` conv with strides (fstride, tstride) on [F, T]."""
    for name, v in (("num_mel_bins", num_mel_bins), ("target_length", target_length)):
        if v < patch_size:
            raise ValueError(f"{name}={v} is smaller than patch_size={patch_size}")
    for name, v in (("fstride", fstride), ("tstride", tstride)):
        if v <= 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    return (num_mel_bins - patch_size) // fstride + 1, (target_length - patch_size) // tstride + 1


# ---------------------------------------------------------------------------------------------
# positional table adaptation


def _resize_axis(grid: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    """grid [1, D, F, T]: cut ``size`` rows from the middle of ``axis`` (2 or 3) when it is not
    longer, else bilinear interpolation (align_corners=False) along it, the other axis kept."""
    old = grid.shape[axis]
    if size <= old:
        start = old // 2 - size // 2
        return grid.narrow(axis, start, size)
    out = list(grid.shape[2:])
    out[axis - 2] = size
    return F.interpolate(grid, size=tuple(out), mode="bilinear", align_corners=False)


def resample_pos_grid(pos: torch.Tensor, src_grid: Grid, dst_grid: Grid) -> torch.Tensor:
    """AST's adaptation of a learned table to another grid. pos: [1, F*T, D] -> [1, F'*T', D].

    Time first, then frequency; each axis is cut from the middle (start ``old // 2 - new // 2``)
    when the new size is not larger, else bilinearly interpolated. This is what the released code
    does both for DeiT's square grid (ImageNet init) and for the 12 x 101 AudioSet table.
    """
    f, t = src_grid
    if pos.shape[1] != f * t:
        raise ValueError(f"positional table has {pos.shape[1]} rows, grid {src_grid} needs {f * t}")
    if tuple(src_grid) == tuple(dst_grid):
        return pos
    dtype = pos.dtype
    grid = rearrange(pos.float(), "b (f t) d -> b d f t", f=f, t=t)
    grid = _resize_axis(grid, dst_grid[1], axis=3)
    grid = _resize_axis(grid, dst_grid[0], axis=2)
    return rearrange(grid, "b d f t -> b (f t) d").to(dtype)


def adapt_pos_embed(
    pos_embed: torch.Tensor, src_grid: Grid, dst_grid: Grid, num_prefix: int = _NUM_PREFIX
) -> torch.Tensor:
    """[1, P + F*T, D] -> [1, P + F'*T', D]: the P prefix rows (cls, dist) kept, the grid resampled."""
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    return torch.cat([prefix, resample_pos_grid(grid, src_grid, dst_grid)], dim=1)


def _source_grid(num_tokens: int, dst_grid: Grid) -> Grid:
    """Grid of a checkpoint's positional table, from its token count alone.

    The released code assumes 12 x 101 (its only AudioSet model); otherwise the table is taken
    to share the model's frequency rows (same mel bins and fstride, another length).
    """
    if num_tokens == dst_grid[0] * dst_grid[1]:
        return dst_grid
    if num_tokens == RELEASED_GRID[0] * RELEASED_GRID[1]:
        return RELEASED_GRID
    if num_tokens % dst_grid[0] == 0:
        return dst_grid[0], num_tokens // dst_grid[0]
    raise CheckpointError(
        f"cannot tell the grid of a {num_tokens}-token positional table for a model with grid {dst_grid}; "
        "adapt it with avmae.models.ast.adapt_pos_embed and load the result"
    )


# ---------------------------------------------------------------------------------------------
# model


def _init_vit(module: nn.Module) -> None:
    # DeiT's init: truncated-normal Linear weights (std .02), zero bias, LayerNorm (1, 0)
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ASTEncoder(nn.Module):
    """DeiT backbone over overlapping spectrogram patches. x [B, 1, T, F] -> tokens [B, 2 + F'*T', D].

    Token 0 is cls, token 1 the distillation token, then the grid frequency-major.
    """

    def __init__(
        self,
        *,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        fstride: int = 10,
        tstride: int = 10,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.input_shape = (1, target_length, num_mel_bins)
        self.grid = ast_grid(num_mel_bins, target_length, fstride, tstride, patch_size)
        self.strides = (fstride, tstride)
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed2d(
            in_chans=1, embed_dim=embed_dim, patch_size=patch_size, stride=(fstride, tstride)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, _NUM_PREFIX + self.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth, linear in depth
        self.blocks = nn.ModuleList(
            [
                make_block(embed_dim, num_heads, mlp_ratio=mlp_ratio, drop_path=dpr[i], norm_eps=norm_eps)
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.blocks.apply(_init_vit)
        self.norm.apply(_init_vit)
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    num_tokens = num_patches  # the name avmae's modalities use

    @property
    def target_length(self) -> int:
        return self.input_shape[1]

    @property
    def num_mel_bins(self) -> int:
        return self.input_shape[2]

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"audio input must be [B, {', '.join(map(str, self.input_shape))}] "
                f"(batch, channel, time frames, mel bins), got {list(x.shape)}"
            )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, T, F] -> [B, 2 + F'*T', D]: prefix tokens and patches, positions added."""
        self.check_input(x)
        patches = self.patch_embed(x.transpose(2, 3))  # the conv runs on [B, 1, F, T]
        prefix = torch.cat([self.cls_token, self.dist_token], dim=1).to(patches.dtype).expand(x.shape[0], -1, -1)
        return self.pos_drop(torch.cat([prefix, patches], dim=1) + self.pos_embed.to(patches.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class ASTClassifier(nn.Module):
    """AST: ``ASTEncoder`` + mean of the cls and distillation outputs + ``head`` (LayerNorm, Linear).

    Called like every avmae classifier: ``model({"audio": x}) -> logits [B, C]``, x [B, 1, T, F].

    Args:
        num_classes: head outputs (0: no head, the pooled features are the output).
        target_length, num_mel_bins: input frames T and mel bins F.
        fstride, tstride: patch strides along frequency / time (10: overlap 6, 16: no overlap).
        embed_dim, depth, num_heads, mlp_ratio: DeiT backbone size.
        drop_rate: dropout after the positional embedding; drop_path: stochastic depth.
        head_norm_eps: eps of the head's LayerNorm (PyTorch's default, as released).
        mask_t_prob, mask_f_prob: accepted for the fine-tuning trainer, which passes AudioMAE's
            token masking to every classifier; AST masks the spectrogram instead
            (``data.augment.freqm`` / ``timem``), so they must be 0.

    ``head_name`` names the classifier head among the submodules (the part a linear probe trains).
    """

    key = "audio"
    head_name: ClassVar[str] = "head"

    def __init__(
        self,
        *,
        num_classes: int = 527,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        fstride: int = 10,
        tstride: int = 10,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        head_norm_eps: float = 1e-5,
        mask_t_prob: float = 0.0,
        mask_f_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if mask_t_prob or mask_f_prob:
            raise ValueError(
                f"AST has no token masking (mask_t_prob={mask_t_prob}, mask_f_prob={mask_f_prob}); "
                "use SpecAugment on the spectrogram (data.augment.freqm / timem)"
            )
        self.encoder = ASTEncoder(
            target_length=target_length,
            num_mel_bins=num_mel_bins,
            fstride=fstride,
            tstride=tstride,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_rate=drop_rate,
            drop_path=drop_path,
            norm_eps=norm_eps,
        )
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.head_norm_eps = head_norm_eps
        self.head: nn.Module = self._make_head(num_classes)

    @property
    def grid(self) -> Grid:
        return self.encoder.grid

    @property
    def modalities(self) -> Dict[str, ASTEncoder]:
        """{input key: the branch that reads it}, as avmae's other models expose (``input_shape``,
        ``num_tokens``); the trainer takes the batch entries named here as inputs."""
        return {self.key: self.encoder}

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return nn.Sequential(
            nn.LayerNorm(self.embed_dim, eps=self.head_norm_eps), nn.Linear(self.embed_dim, num_classes)
        )

    def reset_head(self, num_classes: Optional[int] = None) -> None:
        """A fresh head (LayerNorm and Linear, PyTorch's default init), as the released code makes
        for a new label set; ``num_classes`` changes its size."""
        if num_classes is not None:
            self.num_classes = num_classes
        ref = self.encoder.pos_embed
        self.head = self._make_head(self.num_classes).to(device=ref.device, dtype=ref.dtype)

    def no_weight_decay(self) -> set:
        return {"encoder.cls_token", "encoder.dist_token", "encoder.pos_embed"}

    def forward_tokens(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """-> [B, 2 + F'*T', D] normed encoder outputs."""
        if self.key not in inputs:
            raise KeyError(f"inputs lack modality {self.key!r}; got {list(inputs)}")
        return self.encoder(inputs[self.key])

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, D]: mean of the cls and distillation outputs."""
        return (x[:, 0] + x[:, 1]) / 2

    def forward_features(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """-> pooled features [B, D] (the head's input)."""
        return self.pool(self.forward_tokens(inputs))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.forward_features(inputs))


def ast_classifier(
    size: str, *, deit_checkpoint: Optional[Union[str, os.PathLike]] = None, **overrides: Any
) -> ASTClassifier:
    """AST of a named size (``AST_SIZES``); ``deit_checkpoint`` initialises it from a DeiT file."""
    if size not in AST_SIZES:
        raise KeyError(f"unknown AST size {size!r}; valid: {', '.join(AST_SIZES)}")
    model = ASTClassifier(**{**AST_SIZES[size], **overrides})
    if deit_checkpoint is not None:
        init_from_deit(model, deit_checkpoint)
    return model


def _register(size: str) -> None:
    def factory(**kw: Any) -> ASTClassifier:
        return ast_classifier(size, **kw)

    s = AST_SIZES[size]
    factory.__doc__ = (
        f"AST with a DeiT-{size} backbone ({s['embed_dim']}-d, {s['depth']} blocks, {s['num_heads']} heads); see"
        " avmae.models.ast.ast_classifier."
    )
    register_model(f"ast_{size}")(factory)


for _size in AST_SIZES:
    _register(_size)


# ---------------------------------------------------------------------------------------------
# checkpoints


def _require_ast(model: nn.Module) -> ASTClassifier:
    if not isinstance(model, ASTClassifier):
        raise CheckpointError(
            f"an AST checkpoint needs an AST model (e.g. create_model('ast_base')), got {type(model).__name__}"
        )
    return model


def _detect_ast(sd: Mapping[str, torch.Tensor]) -> bool:
    """Released AST (``v.*``, ``mlp_head.*``; after ``module.`` is stripped), this project's AST
    files (``encoder.dist_token``), and DeiT / timm distilled ViTs (a top-level ``dist_token``)."""
    return any(k in sd for k in ("v.dist_token", "encoder.dist_token", "dist_token"))


def _map_ast(sd: Mapping[str, torch.Tensor], model: nn.Module):
    """A released AST state dict or this project's AST file -> this model's keys."""
    model = _require_ast(model)
    if "dist_token" in sd:
        return _map_deit(sd, model)
    out: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    for k, v in sd.items():
        if k.startswith(("v.head.", "v.head_dist.", "v.pre_logits.")):
            ignored.append(k)  # DeiT's ImageNet heads, unused by AST
        elif k.startswith("v."):
            out["encoder." + k[2:]] = v
        elif k.startswith("mlp_head."):
            out["head." + k[len("mlp_head.") :]] = v
        else:
            out[k] = v  # this project's names, or left for the strict check to report
    if model.num_classes <= 0:
        ignored += [k for k in out if k.startswith("head.")]
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    pos = out.get("encoder.pos_embed")
    if pos is not None and pos.shape[1] != _NUM_PREFIX + model.encoder.num_patches:
        src = _source_grid(pos.shape[1] - _NUM_PREFIX, model.grid)
        out["encoder.pos_embed"] = adapt_pos_embed(pos, src, model.grid)
        _logger.info("AST positional table adapted from grid %s to %s", src, model.grid)
    return out, ignored, []


def _map_deit(sd: Mapping[str, torch.Tensor], model: ASTClassifier):
    """DeiT (distilled) or timm ViT ImageNet weights -> AST, as the released code starts.

    RGB patch kernels are summed into one channel; the square positional grid is cut from the
    middle or interpolated to the audio grid; the head stays fresh. A ViT without a distillation
    token leaves ``dist_token`` and its positional row at their initial values.
    """
    out: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    fresh = [k for k in model.state_dict() if k.startswith("head.")]
    num_prefix = 2 if "dist_token" in sd else 1
    if num_prefix == 1:
        fresh.append("encoder.dist_token")
    for k, v in sd.items():
        if k.startswith(("head.", "head_dist.", "pre_logits.", "fc_norm.")):
            ignored.append(k)
        elif k == "patch_embed.proj.weight":
            out["encoder." + k] = v.sum(dim=1, keepdim=True) if v.shape[1] != 1 else v
        elif k == "pos_embed":
            n = v.shape[1] - num_prefix
            side = math.isqrt(n)
            if side * side != n:
                raise CheckpointError(f"ImageNet positional table of {n} patch rows is not a square grid")
            grid = resample_pos_grid(v[:, num_prefix:], (side, side), model.grid)
            prefix = v[:, :num_prefix]
            if num_prefix == 1:
                prefix = torch.cat([prefix, model.encoder.pos_embed.detach()[:, 1:2].to(v.dtype)], dim=1)
            out["encoder.pos_embed"] = torch.cat([prefix, grid], dim=1)
            _logger.info("ImageNet positional grid %dx%d resampled to %s", side, side, model.grid)
        else:
            out["encoder." + k] = v
    return out, ignored, fresh


register_format("ast", _detect_ast, _map_ast)


def init_from_deit(
    model: nn.Module,
    checkpoint: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
    *,
    strict: bool = True,
) -> LoadReport:
    """Initialise an AST model from ImageNet DeiT / timm ViT weights (a file or a state dict).

    Returns the report: DeiT's heads are ``ignored``, this model's head is ``reinitialized``.
    """
    model = _require_ast(model)
    if isinstance(checkpoint, Mapping):
        path, sd = "<state dict>", dict(checkpoint)
    else:
        path = os.fspath(checkpoint)
        sd, _ = read_state_dict(path)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if "patch_embed.proj.weight" not in sd or "pos_embed" not in sd:
        raise CheckpointError(f"{path}: not a DeiT / timm ViT state dict (first keys: {list(sd)[:5]})")
    mapped, ignored, fresh = _map_deit(sd, model)
    report = LoadReport(path=path, format="deit" if "dist_token" in sd else "timm-vit", ignored=sorted(ignored))
    own = model.state_dict()
    for k, v in mapped.items():
        if k in own and v.shape != own[k].shape:
            raise CheckpointError(
                f"{path}: tensor {k!r} has shape {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in the"
                " model (another size?)"
            )
    missing = sorted(set(own) - set(mapped))
    report.reinitialized = sorted(k for k in set(fresh) if k in own)
    report.missing = [k for k in missing if k not in fresh]
    report.unexpected = sorted(set(mapped) - set(own))
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__}: missing {report.missing[:8]}, unexpected"
            f" {report.unexpected[:8]}"
        )
    to_load = {k: v for k, v in mapped.items() if k in own}
    model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    _logger.info("%s", report.summary())
    return report

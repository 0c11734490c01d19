"""Test oracle: the released EAT / SSLAM encoder and fine-tuned classifier as plain tensor math,
and writers of its checkpoint layouts (fairseq pretraining / fine-tuned ``.pt``, HF-port folder).

Written from the published facts of the released code (cwx-worst-one/EAT ``models/images.py``,
``models/base.py``, ``models/modules.py``, ``models/mae.py``, ``EAT_pretraining.py``,
``EAT_audio_classification.py``); no code of theirs is used:

  * patch embedding: Conv2d(1, D, 16, stride 16) on [B, 1, T, F], tokens time-major (k = t*F' + f);
  * positions: a fixed table of ``max_length`` (768) x F' rows, built by numpy in float32 from the
    MAE 2-D sin-cos formula with ``meshgrid(w, h)``: the first D/2 channels encode the column (the
    frequency index f), the last D/2 the row (the time index t); the first N rows are added to the
    N patch tokens (``positions[:, :N]``);
  * the cls token (``extra_tokens``) is prepended after the positions, without a position;
  * ``context_encoder.norm``: a LayerNorm (eps 1e-6) over [cls; patches] (``prenet_depth`` 0);
  * blocks with ``layer_norm_first: false``: x = x + attn(x); x = norm1(x); x = norm2(x + mlp(x));
    attention with a fused qkv Linear (bias), q scaled by head_dim^-0.5, softmax, proj; MLP fc1,
    exact (erf) GELU, fc2; LayerNorm eps 1e-6; no final norm;
  * fine-tuned: x[:, 0] (``CLS_TOKEN``) or the mean of the patch tokens (``MEAN_POOLING``) ->
    ``fc_norm`` (LayerNorm eps 1e-6) -> ``head``.

Everything is explicit: the conv as a patch reshape and a matmul, LayerNorm / GELU / softmax
written out. All arithmetic runs in the input's dtype (float64 inputs give a high-precision reference).
"""

from __future__ import annotations

import enum
import json
import math
import sys
import types
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = [
    "eat_positions",
    "make_eat_state_dict",
    "eat_forward",
    "eat_classify",
    "write_fairseq_pretrain",
    "write_fairseq_finetune",
    "write_hf_folder",
]

StateDict = Dict[str, torch.Tensor]
P = "modality_encoders.IMAGE."


def eat_positions(dim: int, rows: int = 768, cols: int = 8) -> torch.Tensor:
    """[1, rows*cols, dim]: the released table, in numpy float32 as their code computes it."""
    grid_h = np.arange(rows, dtype=np.float32)
    grid_w = np.arange(cols, dtype=np.float32)
    w_of, h_of = np.meshgrid(grid_w, grid_h)  # w first: [rows, cols] each

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(d // 2, dtype=np.float32)
        omega /= d / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, w_of), one_d(dim // 2, h_of)], axis=1)
    return torch.from_numpy(emb).float().unsqueeze(0)


def make_eat_state_dict(
    *,
    dim: int = 64,
    depth: int = 2,
    mlp_ratio: float = 4.0,
    rows: int = 768,
    cols: int = 8,
    num_classes: Optional[int] = None,
    decoder_layers: int = 2,
    seed: int = 0,
) -> StateDict:
    """Random weights in the fairseq pretraining names (student, CNN decoder), plus ``fc_norm`` /
    ``head`` when ``num_classes`` is given. LayerNorms get non-trivial random affine parameters."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, std: float = 0.05, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    sd: StateDict = {
        P + "local_encoder.proj.weight": rnd(dim, 1, 16, 16),
        P + "local_encoder.proj.bias": rnd(dim),
        P + "extra_tokens": rnd(1, 1, dim, std=0.5),
        P + "fixed_positional_encoder.positions": eat_positions(dim, rows, cols),
        P + "context_encoder.norm.weight": rnd(dim, std=0.1, mean=1.0),
        P + "context_encoder.norm.bias": rnd(dim, std=0.1),
    }
    hidden = int(dim * mlp_ratio)
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": rnd(dim, std=0.1, mean=1.0),
                b + "norm1.bias": rnd(dim, std=0.1),
                b + "attn.qkv.weight": rnd(3 * dim, dim, std=dim**-0.5),
                b + "attn.qkv.bias": rnd(3 * dim),
                b + "attn.proj.weight": rnd(dim, dim, std=dim**-0.5),
                b + "attn.proj.bias": rnd(dim),
                b + "norm2.weight": rnd(dim, std=0.1, mean=1.0),
                b + "norm2.bias": rnd(dim, std=0.1),
                b + "mlp.fc1.weight": rnd(hidden, dim, std=dim**-0.5),
                b + "mlp.fc1.bias": rnd(hidden),
                b + "mlp.fc2.weight": rnd(dim, hidden, std=hidden**-0.5),
                b + "mlp.fc2.bias": rnd(dim),
            }
        )
    for i in range(decoder_layers):  # Decoder2d: conv (groups 16), no-affine LayerNorm, GELU
        sd[P + f"decoder.blocks.{i}.0.weight"] = rnd(dim, dim // 16, 3, 3)
        sd[P + f"decoder.blocks.{i}.0.bias"] = rnd(dim)
    if decoder_layers:
        sd[P + "decoder.proj.weight"] = rnd(dim, dim)
        sd[P + "decoder.proj.bias"] = rnd(dim)
    if num_classes is not None:
        sd["fc_norm.weight"] = rnd(dim, std=0.1, mean=1.0)
        sd["fc_norm.bias"] = rnd(dim, std=0.1)
        sd["head.weight"] = rnd(num_classes, dim, std=0.2)
        sd["head.bias"] = rnd(num_classes)
    return sd


# ------------------------------------------------------------------------------------ the math


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _linear(x: torch.Tensor, sd: StateDict, name: str) -> torch.Tensor:
    return x @ sd[name + ".weight"].to(x.dtype).T + sd[name + ".bias"].to(x.dtype)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _post_ln_block(x: torch.Tensor, sd: StateDict, prefix: str, num_heads: int) -> torch.Tensor:
    B, N, D = x.shape
    hd = D // num_heads

    def ln(name: str, y: torch.Tensor) -> torch.Tensor:
        return _layer_norm(y, sd[f"{prefix}{name}.weight"].to(y.dtype), sd[f"{prefix}{name}.bias"].to(y.dtype))

    qkv = _linear(x, sd, prefix + "attn.qkv").reshape(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
    scores = q @ k.transpose(-2, -1)
    scores = scores - scores.max(dim=-1, keepdim=True).values
    attn = scores.exp() / scores.exp().sum(dim=-1, keepdim=True)
    y = (attn @ v).transpose(1, 2).reshape(B, N, D)
    x = ln("norm1", x + _linear(y, sd, prefix + "attn.proj"))
    h = _linear(_gelu(_linear(x, sd, prefix + "mlp.fc1")), sd, prefix + "mlp.fc2")
    return ln("norm2", x + h)


def eat_forward(sd: StateDict, fbank: torch.Tensor, num_heads: int) -> torch.Tensor:
    """fbank [B, 1, T, F] -> every token of the last block [B, 1 + (T/16)*(F/16), D], cls first."""
    B, _, T, F = fbank.shape
    p = 16
    dt = fbank.dtype
    patches = fbank.reshape(B, T // p, p, F // p, p).permute(0, 1, 3, 2, 4).reshape(B, (T // p) * (F // p), p * p)
    w = sd[P + "local_encoder.proj.weight"].to(dt).reshape(-1, p * p)
    x = patches @ w.T + sd[P + "local_encoder.proj.bias"].to(dt)
    x = x + sd[P + "fixed_positional_encoder.positions"].to(dt)[:, : x.shape[1]]
    cls = sd[P + "extra_tokens"].to(dt).expand(B, -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = _layer_norm(x, sd[P + "context_encoder.norm.weight"].to(dt), sd[P + "context_encoder.norm.bias"].to(dt))
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        x = _post_ln_block(x, sd, f"blocks.{i}.", num_heads)
    return x


def eat_classify(sd: StateDict, fbank: torch.Tensor, num_heads: int, mode: str = "CLS_TOKEN") -> torch.Tensor:
    """The fine-tuned model's logits [B, C] (``CLS_TOKEN`` or ``MEAN_POOLING``)."""
    x = eat_forward(sd, fbank, num_heads)
    x = x[:, 0] if mode == "CLS_TOKEN" else x[:, 1:].mean(dim=1)
    dt = x.dtype
    x = _layer_norm(x, sd["fc_norm.weight"].to(dt), sd["fc_norm.bias"].to(dt))
    return x @ sd["head.weight"].to(dt).T + sd["head.bias"].to(dt)


# ------------------------------------------------------------------------------------ the layouts


class _Fake:
    """Names the config classes of EAT's code (``models.EAT_audio_classification.PredictionMode``)
    while a file is written, so that the pickle references them as the released files do; the
    module is gone again before any test reads the file."""

    def __enter__(self) -> Any:
        self.mod = types.ModuleType("models.EAT_audio_classification")

        class PredictionMode(enum.Enum):
            MEAN_POOLING = enum.auto()
            CLS_TOKEN = enum.auto()
            LIN_SOFTMAX = enum.auto()

        PredictionMode.__module__ = self.mod.__name__
        PredictionMode.__qualname__ = "PredictionMode"
        self.mod.PredictionMode = PredictionMode
        self.saved = {k: sys.modules.get(k) for k in ("models", self.mod.__name__)}
        sys.modules["models"] = types.ModuleType("models")
        sys.modules[self.mod.__name__] = self.mod
        return PredictionMode

    def __exit__(self, *exc: Any) -> None:
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _omega(cfg: Dict[str, Any]) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.create(cfg)


def _trainer_fields() -> Dict[str, Any]:
    import argparse

    return {
        "args": argparse.Namespace(fp16=True, seed=1),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "ModelCriterion", "num_updates": 10}],
        "task_state": {},
        "extra_state": {"epoch": 10, "train_iterator": {"epoch": 10}},
        "last_optimizer_state": None,
    }


def write_fairseq_pretrain(sd: StateDict, path: Path, *, num_heads: int, ema: Optional[StateDict] = None) -> Path:
    """A pretraining ``.pt``: the student (with the CNN decoder) and ``_ema``: the teacher's
    parameters (``ema``; default: the student's own values times 0.9, so a test can tell them apart),
    the config a DictConfig (``cfg.model``: the data2vec_multi model; ``cfg.task``)."""
    student = {k: v for k, v in sd.items() if not k.startswith(("fc_norm.", "head."))}
    teacher = ema if ema is not None else {k: v * 0.9 for k, v in student.items() if "positions" not in k}
    dim = student[P + "local_encoder.proj.weight"].shape[0]
    cfg = {
        "_name": None,
        "model": {
            "_name": "data2vec_multi",
            "embed_dim": int(dim),
            "num_heads": int(num_heads),
            "depth": 1 + max(int(k.split(".")[1]) for k in student if k.startswith("blocks.")),
            "layer_norm_first": False,
            "norm_eps": 1e-6,
            "average_top_k_layers": 12,
            "clone_batch": 16,
            "modalities": {"image": {"in_chans": 1, "target_length": 1024, "max_length": 768, "prenet_depth": 0}},
        },
        "task": {"_name": "mae_image_pretraining", "target_length": 1024, "esc50_eval": False, "spcv2_eval": False},
    }
    model = dict(student)
    model["_ema"] = dict(teacher)
    obj = {"cfg": _omega(cfg), "model": model, **_trainer_fields()}
    torch.save(obj, path)
    return path


def write_fairseq_finetune(
    sd: StateDict, path: Path, *, num_heads: int, mode: str = "CLS_TOKEN", esc50: bool = False
) -> Path:
    """A fine-tuned ``.pt``: every encoder key prefixed ``model.``, ``fc_norm`` / ``head``, no
    decoder, no ``_ema``; ``cfg.model.prediction_mode`` an enum of EAT's own module."""
    model = {}
    for k, v in sd.items():
        if k.startswith(P + "decoder."):
            continue
        model[k if k.startswith(("fc_norm.", "head.")) else "model." + k] = v
    with _Fake() as PredictionMode:
        cfg = {
            "model": {
                "_name": "mae_image_classification",
                "prediction_mode": PredictionMode[mode],
                "model_path": "EAT-base_epoch10_pt.pt",
                "num_classes": int(sd["head.weight"].shape[0]),
                "pretrained_model_args": {"model": {"num_heads": int(num_heads), "norm_eps": 1e-6}},
            },
            "task": {"_name": "mae_image_classification", "target_length": 1024, "esc50_eval": esc50},
        }
        obj = {"cfg": _omega(cfg), "model": model, **_trainer_fields()}
        torch.save(obj, path)
    return path


def write_hf_folder(sd: StateDict, folder: Path, *, num_heads: int, torch_bin: bool = False) -> Path:
    """The HF-port folder: ``config.json`` and ``model.safetensors`` (``pytorch_model.bin`` with
    ``torch_bin``) with ``model.*`` keys (``context_encoder.norm`` -> ``model.pre_norm``), decoder
    and teacher dropped."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, v in sd.items():
        if k.startswith(P + "decoder."):
            continue
        if k.startswith(P + "context_encoder.norm."):
            out["model.pre_norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith(P):
            out["model." + k[len(P) :]] = v
        else:
            out["model." + k] = v
    if torch_bin:
        torch.save(out, folder / "pytorch_model.bin")
    else:
        save_file(
            {k: v.contiguous() for k, v in out.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"}
        )
    dim = int(sd[P + "local_encoder.proj.weight"].shape[0])
    config = {"model_type": "eat", "architectures": ["EATModel"], "embed_dim": dim, "num_heads": num_heads}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder

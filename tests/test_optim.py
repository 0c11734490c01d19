"""Optimizer pieces: lr scaling, parameter groups, layer decay, warm-up + cosine schedule."""

import math

import pytest
import torch

import avmae
from avmae.config import load_config
from avmae.train import build_optimizer, layer_id, lr_at, param_groups, plan_run, scaled_lr, set_lr


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_scaled_lr_rule():
    assert scaled_lr(2e-4, 512) == pytest.approx(4e-4)  # AudioMAE AS-2M
    assert scaled_lr(1e-3, 32) == pytest.approx(1.25e-4)  # AS-20K fine-tuning


def test_plan_derives_effective_batch_and_lr_once():
    cfg = load_config([], ["train.batch_size=8", "train.grad_accum=4", "optim.blr=2e-4", "schedule.epochs=3", "schedule.warmup_epochs=1"])
    plan = plan_run(cfg, train_items=1000, num_processes=2)
    assert plan.effective_batch == 64
    assert plan.lr == pytest.approx(2e-4 * 64 / 256)
    assert plan.steps_per_epoch == 1000 // 64
    assert plan.total_steps == 3 * plan.steps_per_epoch and plan.warmup_steps == plan.steps_per_epoch
    explicit = plan_run(load_config([], ["optim.lr=1e-3"]), train_items=1000, num_processes=1)
    assert explicit.lr == 1e-3 and explicit.lr_rule == "optim.lr"
    short = plan_run(load_config([], ["schedule.max_steps=7"]), train_items=1000, num_processes=1)
    assert short.total_steps == 7 and short.warmup_steps <= 7


def test_param_groups_weight_decay_and_frozen_tables():
    model = avmae.create_model("audiomae_tiny", target_length=64)
    groups = param_groups(model, 0.05)
    by_wd = {g["weight_decay"]: _names(model, g) for g in groups}
    decay, no_decay = by_wd[0.05], by_wd[0.0]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and "modalities.audio.pos_embed" in frozen  # fixed sin-cos tables
    assert not (frozen & (decay | no_decay))  # excluded from the optimizer
    assert "cls_token" in no_decay  # no_weight_decay()
    assert all(n in no_decay for n in decay | no_decay if n.endswith(".bias"))
    assert "blocks.0.norm1.weight" in no_decay  # 1-D (norm) params
    assert "blocks.0.attn.qkv.weight" in decay and "decoder.mask_token" in decay
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay


def test_layer_decay_ids_and_scales():
    model = avmae.create_model("audiomae_tiny_cls", num_classes=3, target_length=64)
    depth = len(model.blocks)
    n = depth + 1
    assert layer_id("cls_token", n) == 0
    assert layer_id("modalities.audio.patch_embed.proj.weight", n) == 0
    assert layer_id("blocks.0.attn.qkv.weight", n) == 1
    assert layer_id(f"blocks.{depth - 1}.mlp.fc1.bias", n) == depth
    assert layer_id("fc_norm.weight", n) == n and layer_id("head.weight", n) == n
    assert layer_id("modality_blocks.video.1.attn.qkv.weight", 6, num_specific=2) == 2
    assert layer_id("blocks.0.norm1.weight", 6, num_specific=2) == 3

    groups = param_groups(model, 0.05, layer_decay=0.75)
    scale_of = {}
    for g in groups:
        for name in _names(model, g):
            scale_of[name] = g["lr_scale"]
    assert scale_of["cls_token"] == pytest.approx(0.75 ** n)
    assert scale_of["blocks.0.attn.qkv.weight"] == pytest.approx(0.75 ** (n - 1))
    assert scale_of["head.weight"] == 1.0
    opt = build_optimizer(groups, lr=1e-3)
    set_lr(opt, 2e-3)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(2e-3 * g["lr_scale"])


def test_warmup_then_cosine():
    kw = dict(base_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    assert lr_at(0, **kw) == 0.0  # MAE: the schedule starts at 0
    assert lr_at(5, **kw) == pytest.approx(0.5)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(200, **kw) == pytest.approx(0.1)
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay
    assert lr_at(3, base_lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_optimizer_refuses_no_trainable_params():
    model = torch.nn.Linear(2, 2)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(param_groups(model, 0.0), lr=1.0)

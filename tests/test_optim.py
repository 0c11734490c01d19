"""Optimizer pieces: lr scaling, parameter groups, layer decay, warm-up + cosine schedule."""

import math

import pytest
import torch

import avmae
from avmae.config import ConfigError, load_config
from avmae.train import build_optimizer, layer_id, lr_at, param_groups, plan_run, scaled_lr, set_lr
from avmae.train.optim import fused_adamw_devices, resolve_fused, set_fused


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_scaled_lr_rule():
    assert scaled_lr(2e-4, 512) == pytest.approx(4e-4)  # AudioMAE AS-2M
    assert scaled_lr(1e-3, 32) == pytest.approx(1.25e-4)  # AS-20K fine-tuning


def test_plan_derives_effective_batch_and_lr_once():
    cfg = load_config(
        [],
        ["train.batch_size=8", "train.grad_accum=4", "optim.blr=2e-4", "schedule.epochs=3", "schedule.warmup_epochs=1"],
    )
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
    assert scale_of["cls_token"] == pytest.approx(0.75**n)
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
    assert lr_at(3, base_lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.3))
    )


def test_optimizer_refuses_no_trainable_params():
    model = torch.nn.Linear(2, 2)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(param_groups(model, 0.0), lr=1.0)


# --------------------------------------------------------------------------- fused AdamW

CPU_FUSED = "cpu" in fused_adamw_devices()


def _steps(opt, n, seed=0):
    """``n`` steps with the same random gradients for every optimizer (the same seed): the
    implementations are compared on identical inputs, free of matmul rounding in a backward."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def _tiny_groups(seed=0):
    torch.manual_seed(seed)
    model = avmae.create_model("audiomae_tiny", target_length=64)
    return model, param_groups(model, 0.05, layer_decay=0.75)


def test_fused_option_is_validated_and_read_as_a_word():
    assert load_config([]).optim.fused == "auto"
    assert load_config([], ["optim.fused=true"]).optim.fused == "true"  # a YAML boolean, stored as the word
    assert load_config([], ["optim.fused=false"]).optim.fused == "false"
    with pytest.raises(ConfigError, match="^optim.fused: must be one of"):
        load_config([], ["optim.fused=sometimes"])


def test_resolve_fused_per_device():
    assert resolve_fused("false", ["cuda"]) is False
    assert resolve_fused("auto", ["meta"]) is False  # no fused kernels there: the default implementation
    with pytest.raises(ConfigError, match="^optim.fused: .*no fused AdamW for meta"):
        resolve_fused("true", ["meta"])
    assert resolve_fused("auto", ["cpu"]) is CPU_FUSED
    assert resolve_fused("auto", ["cpu", "meta"]) is False  # every device must have the kernels


@pytest.mark.skipif(not CPU_FUSED, reason="this torch has no fused AdamW on the CPU")
def test_build_optimizer_honours_fused():
    _, groups = _tiny_groups()
    assert build_optimizer(groups, lr=1e-3, fused="true").defaults["fused"] is True
    assert build_optimizer(groups, lr=1e-3).defaults["fused"] is True  # auto, on the CPU
    assert not build_optimizer(groups, lr=1e-3, fused="false").defaults["fused"]
    assert not build_optimizer(groups, lr=1e-3, fused="auto", devices=["meta"]).defaults["fused"]
    assert build_optimizer(groups, lr=1e-3, fused=True).defaults["fused"] is True


@pytest.mark.skipif(not CPU_FUSED, reason="this torch has no fused AdamW on the CPU")
def test_fused_and_default_adamw_take_the_same_steps():
    (ma, ga), (mb, gb) = _tiny_groups(), _tiny_groups()
    fused = build_optimizer(ga, lr=2e-3, fused="true")
    plain = build_optimizer(gb, lr=2e-3, fused="false")
    _steps(fused, 3)
    _steps(plain, 3)
    moved = 0.0
    for (name, a), b, init in zip(ma.named_parameters(), mb.parameters(), _tiny_groups()[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, (a - init).abs().max().item())
    assert moved > 1e-3  # the steps did move the weights


@pytest.mark.skipif(not CPU_FUSED, reason="this torch has no fused AdamW on the CPU")
@pytest.mark.parametrize("first, then", [("true", "false"), ("false", "true")])
def test_optimizer_state_loads_across_implementations(first, then):
    (ma, ga), (mb, gb) = _tiny_groups(), _tiny_groups()
    a = build_optimizer(ga, lr=2e-3, fused=first)
    b = build_optimizer(gb, lr=2e-3, fused=first)
    _steps(a, 2)
    _steps(b, 2)
    # b continues with the other implementation from a state dict its own implementation wrote
    b2 = build_optimizer(gb, lr=2e-3, fused=then)
    b2.load_state_dict(b.state_dict())
    set_fused(b2, then == "true")
    assert bool(b2.defaults["fused"]) == (then == "true") and all(
        bool(g["fused"]) == (then == "true") for g in b2.param_groups
    )
    assert all(s["step"].dtype == torch.float32 and s["step"].device.type == "cpu" for s in b2.state.values())
    _steps(a, 2, seed=1)
    _steps(b2, 2, seed=1)
    assert all(float(s["step"]) == 4 for s in b2.state.values())
    for (name, pa), pb in zip(ma.named_parameters(), mb.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)

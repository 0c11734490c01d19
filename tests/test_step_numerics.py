"""A training step with the trainer's speed paths (fused attention where it fuses, fused AdamW) in
fp32 and under bf16 autocast agrees with the fp32 reference step (plain-math attention, torch's
default AdamW) within stated tolerances:

- fp32: loss to 1e-5 relative, every gradient to 1e-4 of its largest entry, the weights after
  one AdamW step to 1e-2 of the learning rate where the gradient is not rounding noise;
- bf16 autocast: loss to 2e-2 relative (bf16 keeps 8 bits of mantissa: ~4e-3 per rounding),
  every gradient of more than 64 entries at cosine similarity >= 0.99 with the reference.
"""

import copy

import pytest
import torch

import avmae
from avmae.layers import WindowAttention
from avmae.train.optim import build_optimizer, param_groups

pytestmark = pytest.mark.usefixtures("one_thread")
LR = 1e-3


def set_fused(model, fused):
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
        if isinstance(m, WindowAttention):
            m.fused = fused


def one_step(model, inputs, noise, *, bf16, fused_adamw):
    opt = build_optimizer(
        param_groups(model, 0.05),
        lr=LR,
        betas=(0.9, 0.95),
        fused="true" if fused_adamw else "false",
        devices=[torch.device("cpu")],
    )
    torch.manual_seed(1)  # the same dropout draws (position-bias MLP) on every path
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(inputs, noise=noise).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return loss.detach().float(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module", params=["swin", "global", "hybrid"])
def setup(request):
    torch.manual_seed(0)
    ref = avmae.create_model("audiomae_tiny", decoder=request.param, target_length=64).train()
    x = {"audio": torch.randn(3, 1, 64, 128)}
    grid = ref.modalities["audio"].grid
    noise = {"audio": torch.rand(3, grid[0] * grid[1])}
    set_fused(ref, False)
    reference = one_step(copy.deepcopy(ref), x, noise, bf16=False, fused_adamw=False)
    ours = copy.deepcopy(ref)
    set_fused(ours, True)
    return ours, x, noise, reference


def test_fp32_step_equals_the_reference(setup):
    from avmae.train.optim import fused_adamw_devices

    ours, x, noise, (loss_ref, grads_ref, params_ref) = setup
    loss, grads, params = one_step(
        copy.deepcopy(ours), x, noise, bf16=False, fused_adamw="cpu" in fused_adamw_devices()
    )
    assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)
    assert grads.keys() == grads_ref.keys()
    for n, g in grads.items():
        assert (g - grads_ref[n]).abs().max() <= 1e-4 * grads_ref[n].abs().max().clamp_min(1e-12), n
    for n, p in params.items():
        # AdamW's first step moves each weight by about lr * sign(grad): compared where the gradient
        # is not rounding noise (the key bias of attention has a zero gradient in exact arithmetic)
        g = grads_ref.get(n)
        keep = g.abs() > 1e-3 * g.abs().max() if g is not None else torch.ones_like(p, dtype=torch.bool)
        assert (p - params_ref[n])[keep].abs().max() <= 1e-2 * LR, n


def test_bf16_step_agrees_with_the_fp32_reference(setup):
    ours, x, noise, (loss_ref, grads_ref, _) = setup
    loss, grads, _ = one_step(copy.deepcopy(ours), x, noise, bf16=True, fused_adamw=False)
    assert abs(loss - loss_ref) <= 2e-2 * abs(loss_ref), (loss, loss_ref)
    for n, g in grads.items():
        if g.numel() > 64:
            cos = torch.nn.functional.cosine_similarity(g.float().flatten(), grads_ref[n].flatten(), dim=0)
            assert cos >= 0.99, (n, cos.item())

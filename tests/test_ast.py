"""AST: presets, released-checkpoint import, positional-table adaptation, DeiT init, training.

Weights in the released layout are random and tiny (DeiT-Ti width, 2 blocks); every logit check
compares ``avmae`` (float32) with the plain-math oracle in tests/reference/official_ast.py
(float64).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import avmae  # noqa: E402
from avmae.checkpoint import CheckpointError  # noqa: E402
from avmae.models.ast import ASTClassifier, adapt_pos_embed, init_from_deit, resample_pos_grid  # noqa: E402
from tests.reference import official_ast as ref  # noqa: E402

DIM, DEPTH, HEADS, CLASSES = 192, 2, 3, 11  # ast_tiny's width and heads, two blocks
TOL = 1e-4
POS_TOL = 3e-5  # float32 interpolation weights (as in the released code) against float64


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def tiny(**kw) -> ASTClassifier:
    kw.setdefault("depth", DEPTH)
    kw.setdefault("num_classes", CLASSES)
    return avmae.create_model("ast_tiny", **kw).eval()


@pytest.fixture(scope="module")
def official():
    """A released-layout AST state dict (1024 frames, stride 10: grid 12 x 101)."""
    return ref.make_official_ast_state_dict(embed_dim=DIM, depth=DEPTH, num_classes=CLASSES, seed=0)


@pytest.fixture(scope="module")
def official_file(official, tmp_path_factory):
    path = tmp_path_factory.mktemp("ast") / "audioset_10_10.pth"
    torch.save(official, path)
    return path


def spectrogram(frames: int, batch: int = 2, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 128, generator=g)


def compare(model: ASTClassifier, official, x: torch.Tensor, *, pos=None, fstride=10, tstride=10) -> float:
    with torch.no_grad():
        got = model({"audio": x.unsqueeze(1)})
    want = ref.official_ast_forward(
        official, x.double(), num_heads=HEADS, fstride=fstride, tstride=tstride, pos_embed=pos
    )
    assert got.shape == want.shape
    return rel_err(got, want)


# ------------------------------------------------------------------------------------------------
# oracle self-checks (against torch's own conv / interpolate)


def test_oracle_pieces_match_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 7, 9, dtype=torch.float64, generator=g)
    for size in ((7, 23), (13, 9), (7, 9), (20, 31)):
        want = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        assert torch.allclose(ref.official_bilinear(x, size), want, atol=1e-12)
    spec = torch.randn(2, 1, 40, 70, dtype=torch.float64, generator=g)
    w = torch.randn(6, 1, 16, 16, dtype=torch.float64, generator=g)
    b = torch.randn(6, dtype=torch.float64, generator=g)
    want = F.conv2d(spec, w, b, stride=(10, 6)).flatten(2).transpose(1, 2)
    assert torch.allclose(ref._patch_embed(spec, w, b, 10, 6), want, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# presets


def test_presets_registered_and_shapes():
    assert {"ast_tiny", "ast_small", "ast_base"} <= set(avmae.list_models("ast_*"))
    model = tiny(target_length=256)
    assert model.grid == (12, 25)
    assert model.encoder.pos_embed.shape == (1, 12 * 25 + 2, DIM)
    x = torch.randn(3, 1, 256, 128)
    assert model({"audio": x}).shape == (3, CLASSES)
    assert model.forward_features({"audio": x}).shape == (3, DIM)
    assert tiny(fstride=16, tstride=16).grid == (8, 64)
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(names)
    with pytest.raises(ValueError, match="audio input must be"):
        model({"audio": torch.randn(1, 1, 128, 256)})
    # what the trainer and the feature extractor read
    assert list(model.modalities) == ["audio"] and model.modalities["audio"].input_shape == (1, 256, 128)
    assert model.modalities["audio"].num_tokens == 12 * 25
    assert tiny(mask_t_prob=0.0, mask_f_prob=0.0).grid == (12, 101)
    with pytest.raises(ValueError, match="SpecAugment"):
        tiny(mask_t_prob=0.2)


def test_reset_head_and_headless():
    model = tiny(target_length=128)
    model.reset_head(5)
    assert model.num_classes == 5 and model.head[1].out_features == 5
    assert torch.equal(model.head[0].weight, torch.ones(DIM))
    features = tiny(target_length=128, num_classes=0)
    assert features({"audio": torch.randn(2, 1, 128, 128)}).shape == (2, DIM)


def test_ast_base_parameter_count():
    with torch.device("meta"):  # shapes only
        model = avmae.create_model("ast_base", num_classes=527, target_length=1024)
    assert model.grid == (12, 101)
    n = sum(p.numel() for p in model.parameters())
    assert n == ref.official_num_params(768, 12, 527, 1212) == 86_594_063
    assert model.encoder.pos_embed.shape == (1, 1214, 768)
    assert model.encoder.norm.eps == 1e-6 and model.encoder.blocks[0].norm1.eps == 1e-6


# ------------------------------------------------------------------------------------------------
# released checkpoints


def test_released_checkpoint_logits_match_oracle(official, official_file):
    model = tiny()
    report = avmae.load_checkpoint(model, official_file)
    assert report.format == "ast"
    assert report.ignored == ["v.head.bias", "v.head.weight", "v.head_dist.bias", "v.head_dist.weight"]
    assert not report.missing and not report.unexpected
    err = compare(model, official, spectrogram(1024))
    print(f"AST 1024 frames: max relative error {err:.2e}")
    assert err < TOL


@pytest.mark.parametrize(
    "frames, strides, grid",
    [(512, (10, 10), (12, 50)), (1200, (10, 10), (12, 119)), (1024, (16, 16), (8, 64))],
    ids=["cut-512", "interpolate-1200", "no-overlap-16"],
)
def test_released_checkpoint_adapted_to_other_grid(official, official_file, frames, strides, grid):
    model = tiny(target_length=frames, fstride=strides[0], tstride=strides[1])
    assert model.grid == grid
    avmae.load_checkpoint(model, official_file)
    pos = ref.official_audioset_pos_embed(official["module.v.pos_embed"].double(), *grid)
    assert rel_err(model.encoder.pos_embed.detach(), pos) < POS_TOL
    err = compare(model, official, spectrogram(frames), pos=pos, fstride=strides[0], tstride=strides[1])
    print(f"AST {frames} frames, strides {strides}: max relative error {err:.2e}")
    assert err < TOL


def test_cut_keeps_the_middle_exactly(official):
    pos = official["module.v.pos_embed"]
    out = adapt_pos_embed(pos, (12, 101), (12, 50))
    grid = pos[:, 2:].reshape(1, 12, 101, DIM)
    assert torch.equal(out[:, :2], pos[:, :2])
    assert torch.equal(out[:, 2:].reshape(1, 12, 50, DIM), grid[:, :, 25:75])


def test_new_label_set_needs_reset_head(official_file):
    model = tiny(target_length=512, num_classes=50)
    with pytest.raises(CheckpointError, match="head.1.weight"):
        avmae.load_checkpoint(model, official_file)
    report = avmae.load_checkpoint(model, official_file, reset_head=True)
    assert report.reinitialized == ["head.1.weight", "head.1.bias"]
    # the released fine-tuning path: the whole mlp_head is new
    assert model.head[1].out_features == 50
    assert torch.equal(model.head[0].weight, torch.ones(DIM))


def test_own_checkpoint_round_trip(official_file, tmp_path):
    model = tiny(target_length=512)
    avmae.load_checkpoint(model, official_file)
    path = avmae.save_checkpoint(model, tmp_path / "ast.safetensors", model_name="ast_tiny")
    again = tiny(target_length=512)
    report = avmae.load_checkpoint(again, path)
    assert report.format == "ast" and not report.ignored
    x = torch.randn(2, 1, 512, 128)
    with torch.no_grad():
        assert torch.equal(model({"audio": x}), again({"audio": x}))


def test_ast_checkpoint_refuses_other_models(official_file):
    with pytest.raises(CheckpointError, match="AST model"):
        avmae.load_checkpoint(avmae.create_model("audiomae_tiny_cls"), official_file)


def test_unknown_source_grid_is_an_error(tmp_path):
    sd = ref.make_official_ast_state_dict(embed_dim=DIM, depth=1, num_classes=CLASSES, grid=(7, 13))
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="adapt_pos_embed"):
        avmae.load_checkpoint(tiny(depth=1, target_length=512), tmp_path / "odd.pth")


# ------------------------------------------------------------------------------------------------
# ImageNet (DeiT) init


@pytest.mark.parametrize(
    "side, frames, fstride",
    [(24, 1024, 10), (14, 96, 10), (8, 96, 4)],
    ids=["deit384-cut-freq-interp-time", "deit224-cut-both", "small-grid-interp-both"],
)
def test_deit_init_matches_released_code(side, frames, fstride, tmp_path):
    deit = ref.make_deit_state_dict(embed_dim=DIM, depth=DEPTH, side=side)
    torch.save({"model": deit}, tmp_path / "deit.pth")
    model = tiny(target_length=frames, fstride=fstride)
    report = init_from_deit(model, tmp_path / "deit.pth")
    assert report.ignored == ["head.bias", "head.weight", "head_dist.bias", "head_dist.weight"]
    assert report.reinitialized == ["head.0.bias", "head.0.weight", "head.1.bias", "head.1.weight"]
    enc = model.encoder
    assert torch.equal(enc.patch_embed.proj.weight, ref.official_imagenet_patch_weight(deit["patch_embed.proj.weight"]))
    assert torch.equal(enc.cls_token, deit["cls_token"]) and torch.equal(enc.dist_token, deit["dist_token"])
    want = ref.official_imagenet_pos_embed(deit["pos_embed"].double(), *model.grid)
    assert rel_err(enc.pos_embed.detach(), want) < POS_TOL

    # the whole model then computes the released model's function
    official = {"module.v." + k: v for k, v in deit.items() if not k.startswith("head")}
    official["module.v.patch_embed.proj.weight"] = enc.patch_embed.proj.weight.detach()
    official.update({f"module.mlp_head.{k}": v.detach() for k, v in model.head.state_dict().items()})
    err = compare(model, official, spectrogram(frames), pos=want, fstride=fstride)
    assert err < TOL


def test_deit_init_from_factory_and_plain_vit(tmp_path):
    deit = ref.make_deit_state_dict(embed_dim=DIM, depth=DEPTH, side=14)
    torch.save(deit, tmp_path / "deit.pth")
    model = avmae.create_model("ast_tiny", depth=DEPTH, target_length=128, deit_checkpoint=tmp_path / "deit.pth")
    assert torch.equal(model.encoder.blocks[1].mlp.fc2.weight, deit["blocks.1.mlp.fc2.weight"])

    vit = ref.make_deit_state_dict(embed_dim=DIM, depth=DEPTH, side=14, distilled=False)
    model = tiny(target_length=128)
    dist, dist_pos = model.encoder.dist_token.detach().clone(), model.encoder.pos_embed[:, 1].detach().clone()
    report = init_from_deit(model, vit)
    assert report.format == "timm-vit" and "encoder.dist_token" in report.reinitialized
    assert torch.equal(model.encoder.dist_token, dist) and torch.equal(model.encoder.pos_embed[:, 1], dist_pos)
    assert torch.equal(model.encoder.pos_embed[:, 0], vit["pos_embed"][:, 0])

    with pytest.raises(CheckpointError, match="shape"):
        init_from_deit(tiny(target_length=128, embed_dim=64, num_heads=4), deit)


def test_resample_is_separable_and_identity_on_same_grid():
    pos = torch.randn(1, 6 * 9, 8)
    assert resample_pos_grid(pos, (6, 9), (6, 9)) is pos
    both = resample_pos_grid(pos, (6, 9), (10, 14))
    grid = pos.reshape(1, 6, 9, 8).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(10, 14), mode="bilinear", align_corners=False)
    assert torch.allclose(both, want.flatten(2).transpose(1, 2), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# training


def test_short_training_lowers_the_loss():
    torch.manual_seed(0)
    model = avmae.create_model("ast_tiny", embed_dim=64, depth=2, num_heads=4, num_classes=4, target_length=64)
    x = torch.randn(8, 1, 64, 128)
    y = torch.arange(8) % 4
    x = x + y.view(-1, 1, 1, 1).float() * 0.5  # a learnable cue
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=5e-7, betas=(0.95, 0.999))
    model.train()
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model({"audio": x}), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------------------------------------
# recipes


@pytest.mark.parametrize("name, grid", [("audioset", (12, 101)), ("esc50", (12, 50)), ("speechcommands", (12, 12))])
def test_recipes_load_and_build(name, grid):
    config = pytest.importorskip("avmae.config")
    cfg = config.load_config([Path(__file__).resolve().parents[1] / "configs" / "ast" / f"{name}.yaml"])
    assert cfg.task == "finetune" and cfg.model.name == "ast_base"
    params = {k: v for k, v in cfg.model.params.items() if k != "deit_checkpoint"}  # weights not shipped
    with torch.device("meta"):
        model = avmae.create_model(
            cfg.model.name, **params, target_length=cfg.data.target_length, num_mel_bins=cfg.data.num_mel_bins
        )
    assert model.grid == grid

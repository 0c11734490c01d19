"""Audio-visual models: the frequency-major audio layout, the joint decoder, avmae's AV presets,
CAV-MAE training behaviour and the contrastive loss (including negatives across processes)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import avmae
from avmae.decoders import JointDecoder
from avmae.layers import SwinBlock
from avmae.layers.pos_embed import sincos_2d
from avmae.losses import accuracy_from_logits, contrastive_logits, info_nce
from avmae.modalities import AudioModality
from avmae.structures import GridSpec, MaskInfo

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# audio layout


def test_ft_layout_is_frequency_major():
    mod = AudioModality(embed_dim=16, target_length=64, num_mel_bins=32, layout="ft")
    assert mod.grid == (2, 4) and mod.pos_embed_kind == "sincos2d"
    assert torch.equal(mod.pos_embed[0], sincos_2d(16, (2, 4)))
    x = torch.randn(2, 1, 64, 32)
    p = mod.patchify(x)
    for k in range(8):
        f, t = divmod(k, 4)  # k = f * T' + t
        patch = x[:, 0, t * 16 : (t + 1) * 16, f * 16 : (f + 1) * 16]  # [B, time, freq]
        assert torch.equal(p[:, k], patch.transpose(1, 2).reshape(2, 256))  # row-major in frequency
    assert torch.equal(mod.unpatchify(p), x)


def test_ft_layout_embeds_like_cav_mae():
    mod = AudioModality(embed_dim=16, target_length=64, num_mel_bins=32, layout="ft")
    x = torch.randn(2, 1, 64, 32)
    # CAV-MAE: a.unsqueeze(1).transpose(2, 3) -> Conv2d -> flatten(2).transpose(1, 2), with the kernel as is
    conv = F.conv2d(x.transpose(2, 3), mod.patch_embed.proj.weight, mod.patch_embed.proj.bias, stride=16)
    expect = conv.flatten(2).transpose(1, 2) + mod.pos_embed
    assert torch.allclose(mod.embed(x), expect, atol=1e-6)
    # and the kernel is a linear map of the (frequency-major) patchified pixels
    w = mod.patch_embed.proj.weight.reshape(16, 256)
    assert torch.allclose(mod.patchify(x) @ w.t() + mod.patch_embed.proj.bias + mod.pos_embed, mod.embed(x), atol=1e-5)


def test_tf_layout_is_unchanged_by_default():
    mod = AudioModality(embed_dim=16, target_length=64, num_mel_bins=32)
    assert mod.layout == "tf" and mod.grid == (4, 2) and mod.pos_embed_kind == "audiomae"


def test_bad_audio_layouts_fail():
    with pytest.raises(ValueError, match="layout"):
        AudioModality(embed_dim=16, layout="xy")
    with pytest.raises(ValueError, match="sincos2d"):
        AudioModality(embed_dim=16, layout="ft", pos_embed="audiomae")


# ---------------------------------------------------------------------------------------------
# joint decoder

SPECS = {"audio": GridSpec("audio", (8, 4), 256, "sincos2d"), "video": GridSpec("video", (2, 2, 2), 1536, "sincos3d")}


def _masks(B, keep):
    out = {}
    for m, spec in SPECS.items():
        L = spec.num_tokens
        ids = torch.stack([torch.randperm(L) for _ in range(B)])
        out[m] = MaskInfo(mask=torch.zeros(B, L), ids_restore=torch.argsort(ids, 1), num_visible=keep[m])
    return out


def _decoder(**kw):
    return JointDecoder(encoder_dim=24, specs=SPECS, has_cls=False, embed_dim=32, num_heads=4, **kw).eval()


def test_joint_decoder_global_shapes():
    dec = _decoder(depth=2)
    assert "joint" in avmae.list_decoders() and dec.local_depth == 0
    assert [type(b).__name__ for b in dec.blocks] == ["Block", "Block"]
    out = dec(torch.randn(3, 5 + 2, 24), _masks(3, {"audio": 5, "video": 2}))
    assert out["audio"].shape == (3, 32, 256) and out["video"].shape == (3, 8, 1536)


def test_joint_decoder_local_layers_keep_audio_local_and_video_to_itself():
    torch.manual_seed(0)
    local = {"audio": {"window": [4, 4], "shift": [2, 0]}}
    dec = _decoder(depth=3, local_modalities=local, local_depth=2)
    kinds = [type(b).__name__ for b in dec.blocks]
    assert kinds == ["MixedBlock", "MixedBlock", "Block"]
    assert isinstance(dec.blocks[0].local["audio"], SwinBlock)
    assert dec.blocks[0].local["audio"].shift == (0, 0) and dec.blocks[1].local["audio"].shift == (2, 0)
    audio, video = torch.randn(2, 32, 32), torch.randn(2, 8, 32)
    # one unshifted mixed layer: audio window (rows 0-3) is independent of rows 4-7 and of video
    _, base = dec.blocks[0](None, {"audio": audio, "video": video})
    a2, v2 = audio.clone(), video.clone()
    a2[:, 31] += 1.0  # a token of the second window
    v2[:, 0] += 1.0
    _, moved = dec.blocks[0](None, {"audio": a2, "video": video})
    assert torch.allclose(moved["audio"][:, :16], base["audio"][:, :16]) and not torch.allclose(
        moved["audio"][:, 16:], base["audio"][:, 16:]
    )
    assert torch.allclose(moved["video"], base["video"])
    _, moved = dec.blocks[0](None, {"audio": audio, "video": v2})
    # the other video tokens see token 0 through attention: changed, if only slightly (exact comparison)
    assert torch.allclose(moved["audio"], base["audio"]) and not torch.equal(
        moved["video"][:, 1:], base["video"][:, 1:]
    )
    # the top global block mixes the modalities
    full = dec.forward_blocks(None, {"audio": audio, "video": video})
    full2 = dec.forward_blocks(None, {"audio": audio, "video": v2})
    assert not torch.allclose(full["audio"], full2["audio"])


def test_joint_decoder_with_cls_and_only_local_modalities():
    specs = {"audio": SPECS["audio"]}
    dec = JointDecoder(
        encoder_dim=24, specs=specs, has_cls=True, embed_dim=32, num_heads=4, depth=2, local_modalities={"audio": {}}
    ).eval()
    assert dec.local_depth == 1 and dec.blocks[0].other is not None
    L = 32
    masks = {"audio": MaskInfo(mask=torch.zeros(2, L), ids_restore=torch.arange(L).expand(2, L), num_visible=6)}
    out = dec(torch.randn(2, 1 + 6, 24), masks)
    assert out["audio"].shape == (2, L, 256)


def test_joint_decoder_rejects_bad_configs():
    with pytest.raises(ValueError, match="not among"):
        _decoder(local_modalities={"text": {}})
    with pytest.raises(ValueError, match="2-D token grid"):
        _decoder(local_modalities={"video": {}})
    with pytest.raises(ValueError, match="unknown keys"):
        _decoder(local_modalities={"audio": {"windw": [4, 4]}})
    with pytest.raises(ValueError, match="needs local_modalities"):
        _decoder(local_depth=1)
    with pytest.raises(ValueError, match="does not tile"):
        _decoder(local_modalities={"audio": {"window": [3, 3]}})
    with pytest.raises(ValueError, match="local_depth"):
        _decoder(depth=2, local_modalities={"audio": {}}, local_depth=3)


# ---------------------------------------------------------------------------------------------
# avmae's own AV model


def _av_inputs(B, T=64, frames=4, img=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(B, 1, T, 128, generator=g), "video": torch.randn(B, frames, 3, img, img, generator=g)}


def test_avmae_tiny_contract():
    model = avmae.create_model("avmae_tiny")
    assert set(avmae.list_models("avmae_*")) >= {"avmae_tiny", "avmae_demo", "avmae_vit_base"}
    out = model(_av_inputs(3))
    assert set(out.losses) == {"mae_audio", "mae_video", "contrastive"}
    assert out.pred["audio"].shape == (3, 32, 256) and out.pred["video"].shape == (3, 32, 1536)
    assert 0.0 <= out.extras["contrastive_acc"].item() <= 1.0
    # audio: random 0.8; video: whole tubes (2 time steps x 16 positions; 2 of 16 positions kept)
    assert out.mask["audio"].sum(1).tolist() == [32 - int(32 * 0.2)] * 3
    m = out.mask["video"].reshape(3, 2, 16)
    assert torch.equal(m, m[:, :1].expand_as(m)) and (m[:, 0] == 0).sum(1).tolist() == [2, 2, 2]
    expect = sum(out.losses[f"mae_{k}"] for k in ("audio", "video")) + 0.01 * out.losses["contrastive"]
    assert torch.allclose(out.loss, expect)
    kinds = [type(b).__name__ for b in model.decoder.blocks]
    assert kinds == ["MixedBlock", "Block"]
    assert len(model.modality_blocks["video"]) == 1 and len(model.blocks) == 1


def waves(B, shape, g):
    """Smooth plane waves on the last two axes plus a per-sample offset: learnable structure."""
    H, W = shape[-2], shape[-1]
    h, w = torch.arange(H).float().view(H, 1), torch.arange(W).float().view(1, W)
    freq = torch.rand(B, 2, generator=g) * 0.3 + 0.05
    phase = torch.rand(B, 1, 1, generator=g) * 6.28
    offset = torch.rand(B, 1, 1, generator=g) * 4 - 2
    x = torch.sin(h * freq[:, :1, None] + w * freq[:, 1:, None] + phase) + offset
    return x.view(B, *([1] * (len(shape) - 2)), H, W).expand(B, *shape).contiguous()


def _loss_falls(model, x, steps=8):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(steps):  # fresh random masks every step: the model has to learn, not memorise
        out = model(x)
        losses.append(out.loss.item())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return out, losses


def test_avmae_tiny_loss_falls():
    torch.manual_seed(0)
    model = avmae.create_model("avmae_tiny", norm_pix_loss=False)
    g = torch.Generator().manual_seed(2)
    x = {"audio": waves(4, (1, 64, 128), g), "video": waves(4, (4, 3, 64, 64), g)}
    _, losses = _loss_falls(model, x)
    assert losses[-1] < 0.8 * losses[0], losses


def test_avmae_presets_sizes():
    demo = avmae.create_model("avmae_demo")
    assert demo.modalities["audio"].grid == (16, 8) and demo.modalities["video"].grid == (2, 4, 4)
    out = demo(_av_inputs(2, T=256))
    assert out.pred["video"].shape == (2, 32, 1536)
    base = avmae.create_model("avmae_vit_base")
    assert base.embed_dim == 768 and len(base.modality_blocks["audio"]) == 11 and len(base.blocks) == 1
    assert base.modalities["audio"].grid == (64, 8) and base.modalities["video"].grid == (4, 14, 14)
    assert [type(b).__name__ for b in base.decoder.blocks] == ["MixedBlock"] * 4 + ["Block"] * 4
    frames = avmae.create_model("avmae_tiny", tubelet=1, num_frames=1, decoder_params={"local_depth": 0})
    assert frames.modalities["video"].default_masking == "random" and frames.decoder.local_depth == 0


def test_av_model_input_errors():
    model = avmae.create_model("avmae_tiny")
    with pytest.raises(KeyError, match="video"):
        model({"audio": torch.randn(1, 1, 64, 128)})
    with pytest.raises(ValueError, match="video input"):
        model({"audio": torch.randn(1, 1, 64, 128), "video": torch.randn(1, 3, 4, 64, 64)})


# ---------------------------------------------------------------------------------------------
# CAV-MAE behaviour (equivalence with the release: test_cav_mae_equivalence.py)


def test_cav_mae_tiny_contract_and_loss_falls():
    torch.manual_seed(0)
    model = avmae.create_model("cav_mae_tiny", norm_pix_loss=False)
    g = torch.Generator().manual_seed(2)
    x = {"audio": waves(4, (1, 64, 128), g), "video": waves(4, (1, 3, 64, 64), g)}
    out, losses = _loss_falls(model, x)
    assert losses[-1] < 0.8 * losses[0], losses
    assert set(out.losses) == {"mae_audio", "mae_video", "contrastive"} and "contrastive_acc" in out.extras
    assert out.pred["audio"].shape == (4, 32, 256) and out.pred["video"].shape == (4, 16, 768)
    assert out.mask["audio"].sum(1).tolist() == [24.0] * 4 and out.mask["video"].sum(1).tolist() == [12.0] * 4
    feats = model.forward_modality_features(x)
    assert feats["audio"].shape == (4, 32, 64) and feats["video"].shape == (4, 16, 64)


def test_cav_mae_classifier_modes_and_errors():
    clf = avmae.create_model("cav_mae_tiny_ft", num_classes=3)
    a, v = torch.randn(2, 1, 64, 128), torch.randn(2, 1, 3, 64, 64)
    assert clf({"audio": a, "video": v}).shape == (2, 3)
    assert clf({"audio": a}, mode="audioonly").shape == (2, 3)
    assert clf.modalities["audio"].pos_embed.requires_grad  # trainable when fine-tuning, as released
    with pytest.raises(KeyError, match="video"):
        clf({"audio": a}, mode="multimodal")
    with pytest.raises(ValueError, match="unknown CAV-MAE mode"):
        clf({"audio": a}, mode="audio")
    with pytest.raises(ValueError, match="unknown CAV-MAE mode"):
        avmae.create_model("cav_mae_tiny_ft", mode="both")
    with pytest.raises(ValueError, match="shared block"):
        avmae.create_model("cav_mae_tiny", modality_specific_depth=2)


# ---------------------------------------------------------------------------------------------
# contrastive loss


def test_info_nce_matches_cav_mae_formula():
    a, v = torch.randn(6, 16), torch.randn(6, 16)
    an, vn = F.normalize(a, dim=-1), F.normalize(v, dim=-1)
    total = an @ vn.t() / 0.05
    one = -torch.mean(torch.diag(F.log_softmax(total, dim=0)))
    two = -torch.mean(torch.diag(F.log_softmax(total.t(), dim=0)))
    assert torch.allclose(info_nce(a, v), one, atol=1e-5)
    assert torch.allclose(info_nce(a, v, bidirectional=True), (one + two) / 2, atol=1e-5)
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 1.0]])
    # columns: 0 -> row 0 (hit), 1 -> row 2 (miss), 2 -> row 1 (miss); rows: 0 hit, 1 miss, 2 miss
    assert accuracy_from_logits(logits).item() == pytest.approx(1 / 3)
    same = contrastive_logits(a, a, 1.0)
    assert accuracy_from_logits(same, bidirectional=True).item() == 1.0


def test_gather_path_with_a_fake_process_group(monkeypatch):
    """Each of two fake processes sees the other's rows as negatives; the loss is the full batch's."""
    import torch.distributed as dist

    A, V = torch.randn(8, 16), torch.randn(8, 16)
    full = info_nce(A, V)
    for rank in (0, 1):
        rows = slice(4 * rank, 4 * rank + 4)

        def fake_all_gather(x, rank=rank, rows=rows):
            parts = [A.clone(), V.clone()]
            other = [p[slice(4 * (1 - rank), 4 * (1 - rank) + 4)] for p in parts]
            theirs = other[0] if x.shape == A[rows].shape and torch.equal(x.detach(), A[rows]) else other[1]
            return (x, theirs) if rank == 0 else (theirs, x)

        import torch.distributed.nn.functional as dnf

        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
        monkeypatch.setattr(dnf, "all_gather", fake_all_gather)
        assert torch.allclose(info_nce(A[rows], V[rows], gather=True), full, atol=1e-6)
        assert torch.allclose(info_nce(A[rows], V[rows], gather=False), info_nce(A[rows], V[rows]))


_GATHER_SCRIPT = r"""
import json, os, sys
import torch
import torch.distributed as dist
import avmae
from avmae.losses import info_nce

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
A, V = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
n = 8 // world
rows = slice(rank * n, rank * n + n)
a = A[rows].clone().requires_grad_()
v = V[rows].clone().requires_grad_()
loss = info_nce(a, v, gather=True, bidirectional=True)
loss.backward()
Af, Vf = A.clone().requires_grad_(), V.clone().requires_grad_()
ref = info_nce(Af, Vf, bidirectional=True)
ref.backward()
res = {
    "loss": loss.item(), "ref": ref.item(),
    "grad_err": (a.grad - world * Af.grad[rows]).abs().max().item(),
}
# the model: each process holds half the batch; the contrastive term equals the full batch's
torch.manual_seed(0)
model = avmae.create_model("cav_mae_tiny").eval()
x = {"audio": torch.randn(4, 1, 64, 128, generator=g), "video": torch.randn(4, 1, 3, 64, 64, generator=g)}
noise = {"audio": torch.rand(4, 32, generator=g), "video": torch.rand(4, 16, generator=g)}
half = slice(rank * 2, rank * 2 + 2)
with torch.no_grad():
    part = model({k: t[half] for k, t in x.items()}, noise={k: t[half] for k, t in noise.items()})
    next(o for o in model.objectives if type(o).__name__ == "InfoNCE").gather = False
    whole = model(x, noise=noise)
res["model"] = part.losses["contrastive"].item()
res["model_ref"] = whole.losses["contrastive"].item()
res["acc"], res["acc_ref"] = part.extras["contrastive_acc"].item(), whole.extras["contrastive_acc"].item()
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(res, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_negatives_gathered_across_two_processes(tmp_path):
    script = tmp_path / "gather.py"
    script.write_text(textwrap.dedent(_GATHER_SCRIPT))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        res = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert res["loss"] == pytest.approx(res["ref"], rel=1e-5)
        assert res["grad_err"] < 1e-5  # each process's rows get world_size x the global gradient
        assert res["model"] == pytest.approx(res["model_ref"], rel=1e-5)
        assert res["acc"] == pytest.approx(res["acc_ref"])

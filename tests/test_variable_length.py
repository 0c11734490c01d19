"""Variable-length AudioMAE: an official-layout checkpoint built for 1024 frames, run at 128, 512, 1024
and 2048 frames (as built, and rebuilt with ``load_pretrained(..., target_length=)``), against the
plain-math oracle of tests/reference given the positional table the model should use: the
checkpoint's first rows for shorter inputs, the official formula continued for longer ones."""

import pytest
import torch
import torch.nn.functional as F

import avmae
from avmae.hub import load_pretrained
from avmae.modalities.audio import AudioModality
from tests.reference import official_audiomae as ref

RTOL = 1e-4
D, HEADS = 64, 4

pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12)).item()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    pre = ref.make_official_pretrain_state_dict(
        embed_dim=D,
        depth=2,
        num_heads=HEADS,
        decoder_embed_dim=64,
        decoder_depth=2,
        decoder_num_heads=4,
        decoder_mode=1,
        img_size=(1024, 128),
        seed=3,
        swin_depth=2,
        swin_heads=4,
    )
    ft = ref.make_official_finetune_state_dict(
        embed_dim=D, depth=2, num_heads=HEADS, num_classes=5, img_size=(1024, 128), seed=4
    )
    ref.to_official_pretrain_checkpoint(pre, root / "pretrained.pth")
    ref.to_official_finetune_checkpoint(ft, root / "finetuned.pth")
    return pre, ft, root / "pretrained.pth", root / "finetuned.pth"


def _table(sd, frames):
    """The [1, 1 + L, D] table (cls row first) a model should use at ``frames``: the first rows of the
    checkpoint's, or the official formula on a grid 64 time rows wide continued past them."""
    rows = frames // 16 * 8
    if frames <= 1024:
        return sd["pos_embed"][:, : 1 + rows]
    table = ref.official_pos_embed(D, (frames // 16 // 8, 64))  # (k % 64, k // 64) for k < rows
    assert torch.equal(table[:, :513], sd["pos_embed"])  # the trained positions are kept
    return table


def _oracle_features(sd, x):
    """The official encoder without masking (final norm) on ``x`` with the table for its length."""
    sd = {**sd, "pos_embed": _table(sd, x.shape[2])}
    L = x.shape[2] // 16 * 8
    noise = torch.arange(L, dtype=torch.float32).expand(x.shape[0], -1)  # keeps every token in order
    return ref.official_forward_encoder(sd, x, noise, mask_ratio=0.0, num_heads=HEADS)[0]


@pytest.mark.parametrize("frames", [128, 512, 1024, 2048])
def test_pretrained_encoder_runs_at_any_length(official, frames):
    pre, _, path, _ = official
    model, rep = load_pretrained(path)
    assert rep.model_params["target_length"] == 1024 and model.modalities["audio"].input_shape == (1, 1024, 128)
    torch.manual_seed(frames)
    x = torch.randn(2, 1, frames, 128)
    with torch.no_grad():
        got = model.forward_features({"audio": x})
    assert got.shape == (2, 1 + frames // 16 * 8, D)
    assert _rel(got, _oracle_features(pre, x)) < RTOL


def test_the_built_length_uses_the_table_itself(official):
    """At 1024 frames nothing is resized: the loaded parameter is the table, so the output is the
    one the model gave before it took other lengths."""
    _, _, path, _ = official
    model, _ = load_pretrained(path)
    mod = model.modalities["audio"]
    assert mod.pos_embed_for(64) is mod.pos_embed
    x = torch.randn(1, 1, 1024, 128)
    with torch.no_grad():
        tokens = mod.embed(x)
        want = mod.patch_embed(x) + mod.pos_embed
    assert torch.equal(tokens, want)


@pytest.mark.parametrize("frames", [128, 512])
def test_load_pretrained_at_a_shorter_length_keeps_the_trained_positions(official, frames):
    pre, _, path, _ = official
    model, rep = load_pretrained(path, target_length=frames)
    mod = model.modalities["audio"]
    assert mod.input_shape == (1, frames, 128) and rep.model_params["pos_base_length"] == 1024
    assert "modalities.audio.pos_embed" in rep.resized and "decoder.pos_embed.audio" in rep.resized
    rows = frames // 16 * 8
    assert torch.equal(mod.pos_embed, pre["pos_embed"][:, 1 : 1 + rows])
    assert torch.equal(model.decoder.pos_embed["audio"], pre["decoder_pos_embed"][:, 1 : 1 + rows])
    # a fresh model built the same way has the same table (pos_base_length): nothing depends on the load
    fresh = avmae.create_model(rep.model_name, **rep.model_params)
    assert torch.equal(fresh.modalities["audio"].pos_embed, mod.pos_embed)
    x = torch.randn(2, 1, frames, 128)
    with torch.no_grad():
        assert _rel(model.forward_features({"audio": x}), _oracle_features(pre, x)) < RTOL
        out = model({"audio": x}, mask_ratio=0.8)  # the shifted-window decoder on the shorter grid
    assert out.pred["audio"].shape == (2, rows, 256) and torch.isfinite(out.loss)


def test_decoder_at_another_length_says_what_to_do(official):
    _, _, path, _ = official
    model, _ = load_pretrained(path)
    with pytest.raises(ValueError, match="target_length"):
        model({"audio": torch.randn(1, 1, 128, 128)})


@pytest.mark.parametrize("frames", [128, 512, 2048])
def test_finetuned_classifier_at_other_lengths(official, frames):
    _, ft, _, path = official
    x = torch.randn(2, 1, frames, 128)
    want = ref.official_finetune_forward({**ft, "pos_embed": _table(ft, frames)}, x, num_heads=HEADS)
    model, _ = load_pretrained(path)  # built for 1024 frames, run at another length
    with torch.no_grad():
        assert _rel(model({"audio": x}), want) < RTOL
    model, rep = load_pretrained(path, target_length=frames)  # built for this length
    with torch.no_grad():
        assert _rel(model({"audio": x}), want) < RTOL
    assert rep.model_params["pos_base_length"] == 1024


def test_structured_masking_follows_the_input_grid(official):
    _, _, _, path = official
    model, _ = load_pretrained(path)
    model.mask_t_prob, model.mask_f_prob = 0.5, 0.25
    x = torch.randn(2, 1, 128, 128)
    tokens = model.forward_tokens({"audio": x}, mask=True, noise_t=torch.rand(2, 8), noise_f=torch.rand(2, 8))
    assert tokens.shape == (2, 1 + 4 * 6, D)  # 8 time rows, half kept; 8 columns, 6 kept


def test_learned_table_is_cut_or_interpolated_like_ast():
    mod = AudioModality(embed_dim=32, target_length=256, num_mel_bins=64, pos_trainable=True)
    with torch.no_grad():
        mod.pos_embed.normal_()
    grid = mod.pos_embed.reshape(1, 16, 4, 32)
    assert torch.equal(mod.pos_embed_for(4), grid[:, :4].reshape(1, 16, 32))
    want = F.interpolate(grid.permute(0, 3, 1, 2), size=(24, 4), mode="bilinear", align_corners=False).permute(
        0, 2, 3, 1
    )
    torch.testing.assert_close(mod.pos_embed_for(24), want.reshape(1, 96, 32))
    assert mod.embed(torch.randn(1, 1, 384, 64)).shape == (1, 96, 32)


def test_frequency_major_layout_cuts_along_time():
    """CAV-MAE's layout ("ft", a true-geometry table): cutting or continuing along time gives the
    table built for that grid."""
    from avmae.layers.pos_embed import sincos_2d

    mod = AudioModality(embed_dim=32, target_length=128, num_mel_bins=64, layout="ft")
    for t in (4, 8, 12):
        torch.testing.assert_close(mod.pos_embed_for(t)[0], sincos_2d(32, (4, t)))
    x = torch.randn(1, 1, 64, 64)
    assert mod.unpatchify(mod.patchify(x)).equal(x)


def test_checkpoint_of_another_length_loads_with_its_positions(tmp_path):
    short = avmae.create_model("audiomae_tiny", target_length=64).eval()
    path = avmae.save_checkpoint(short, tmp_path / "w.safetensors")
    longer = avmae.create_model("audiomae_tiny", target_length=128)
    rep = avmae.load_checkpoint(longer, path)
    assert "modalities.audio.pos_embed" in rep.resized and not rep.regenerated
    table = longer.modalities["audio"].pos_embed
    assert torch.equal(table[:, :32], short.modalities["audio"].pos_embed)  # the saved rows kept
    shorter = avmae.create_model("audiomae_tiny", target_length=32)
    avmae.load_checkpoint(shorter, path)
    assert torch.equal(shorter.modalities["audio"].pos_embed, short.modalities["audio"].pos_embed[:, :16])
    assert "resized (2)" in rep.summary() and all(len(line) < 200 for line in rep.summary().splitlines())

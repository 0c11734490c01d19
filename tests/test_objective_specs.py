"""The presets turn the official loss options (norm_pix_loss, contrastive_*, loss weights) into
objective specs; MaskedAutoencoder itself takes objectives only."""

import pytest
import torch

import avmae
from avmae.models.mae import LOSS_ARGS, MaskedAutoencoder, mae_objectives


def _loss(model, x, noise):
    model.eval()
    with torch.no_grad():
        return model(x, noise=noise).losses


def test_preset_loss_options_equal_the_objective_specs_they_stand_for():
    torch.manual_seed(0)
    x = {"audio": torch.randn(2, 1, 64, 128)}
    noise = {"audio": torch.rand(2, 32)}
    legacy = avmae.create_model("audiomae_tiny", target_length=64, norm_pix_loss=False)
    spec = avmae.create_model("audiomae_tiny", target_length=64, objectives=[{"name": "mae_mse", "norm_pix": False}])
    spec.load_state_dict(legacy.state_dict())
    assert not legacy.norm_pix_loss and avmae.create_model("audiomae_tiny", target_length=64).norm_pix_loss
    a, b = _loss(legacy, x, noise), _loss(spec, x, noise)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_av_presets_build_infonce_from_the_contrastive_options():
    model = avmae.create_model(
        "avmae_tiny", contrastive_weight=1.0, contrastive_temperature=0.1, contrastive_bidirectional=True
    )
    names = [type(o).__name__ for o in model.objectives]
    assert names == ["MaskedReconstruction", "InfoNCE"]
    nce = model.objectives[1]
    assert nce.temperature == 0.1 and nce.bidirectional and nce.weight == 1.0
    cav = avmae.create_model("cav_mae_tiny", bidirect_contrast=True, contrast_loss_weight=0.1, mae_loss_weight=3.0)
    assert cav.objectives[1].bidirectional and cav.objectives[1].weight == 0.1
    assert mae_objectives(2, contrastive_weight=0.0) == [{"name": "mae_mse", "norm_pix": True, "modality_weights": {}}]
    with pytest.raises(ValueError, match="needs two modalities"):
        avmae.create_model("audiomae_tiny", contrastive_weight=1.0)


def test_the_model_takes_objectives_only():
    for name in LOSS_ARGS:
        with pytest.raises(TypeError, match=name):
            MaskedAutoencoder(modalities={"audio": {"target_length": 64}}, embed_dim=64, depth=1, **{name: None})


def test_a_checkpoint_recording_loss_options_loads_back(tmp_path):
    from avmae.hub import load_pretrained

    model = avmae.create_model("avmae_tiny", contrastive_weight=0.5, contrastive_temperature=0.2)
    path = avmae.save_checkpoint(model, tmp_path / "w.safetensors")
    again, _ = load_pretrained(path)
    assert again.avmae_spec["params"]["contrastive_temperature"] == 0.2
    assert again.objectives[1].temperature == 0.2 and again.objectives[1].weight == 0.5
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())

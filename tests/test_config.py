"""Config: dataclass defaults, YAML deltas, dotlist overrides, errors that name the key."""

import pytest

from avmae.config import CONFIG_DIR, Config, ConfigError, load_config, save_config, to_dict


def test_defaults_are_valid():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.task == "pretrain" and cfg.modality == "audio"
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.data.target_length % 16 == 0


def test_yaml_then_dotlist_merge(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("optim:\n  blr: 1.0e-3\n  weight_decay: 0.1\ntrain:\n  batch_size: 4\n")
    b = tmp_path / "b.yaml"
    b.write_text("optim.blr: 2.0e-3\nmodel:\n  params:\n    decoder: global\n")  # flat dotted keys too
    cfg = load_config([a, b], ["train.batch_size=2", "optim.betas=[0.9,0.999]", "model.params.decoder_params.depth=1"])
    assert cfg.optim.blr == 2e-3  # b overrides a
    assert cfg.optim.weight_decay == 0.1  # from a, untouched by b
    assert cfg.train.batch_size == 2  # dotlist wins
    assert cfg.optim.betas == (0.9, 0.999)
    assert cfg.model.params == {"decoder": "global", "decoder_params": {"depth": 1}}


def test_yaml_no_means_no_mixed_precision(tmp_path):
    f = tmp_path / "mp.yaml"
    f.write_text("train:\n  mixed_precision: no\n")
    assert load_config([f]).train.mixed_precision == "no"
    assert load_config([], ["train.mixed_precision=no"]).train.mixed_precision == "no"


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.blrr=1e-3", "optim.blrr"),  # unknown key
        ("nonsense=1", "nonsense"),
        ("optim.blr=fast", "optim.blr"),  # wrong type
        ("train.batch_size=1.5", "train.batch_size"),
        ("optim.betas=[0.9]", "optim.betas"),
    ],
)
def test_unknown_key_and_wrong_type_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_unknown_key_in_yaml_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("schedule:\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"schedule\.warmup.*bad\.yaml"):
        load_config([f])


@pytest.mark.parametrize(
    "override, key",
    [
        ("masking.mask_ratio=1.0", "masking.mask_ratio"),
        ("masking.mask_ratio=-0.1", "masking.mask_ratio"),
        ("data.target_length=0", "data.target_length"),
        ("data.num_mel_bins=-16", "data.num_mel_bins"),
        ("masking.maskers.audio=no_such_masker", "masking.maskers.audio"),
        ("objectives=[{name: no_such_objective}]", "objectives[0]"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.grad_accum=0", "train.grad_accum"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("optim.blr=0", "optim.blr"),
        ("optim.layer_decay=1.5", "optim.layer_decay"),
        ("optim.betas=[0.9,1.0]", "optim.betas"),
        ("schedule.epochs=0", "schedule.epochs"),
        ("schedule.warmup_epochs=50", "schedule.warmup_epochs"),
        ("data.on_error=ignore", "data.on_error"),
        ("data.norm=imagenet", "data.norm"),
        ("data.mean=1.0", "data.std"),
        ("data.train_manifest=/no/such/manifest.json", "data.train_manifest"),
        ("model.name=no_such_model", "model.name"),
        ("model.params.target_length=512", "model.params.target_length"),
        ("checkpoint.init_from=/no/such/ckpt", "checkpoint.init_from"),
        ("masking.per_modality.video=1.2", "masking.per_modality.video"),
    ],
)
def test_impossible_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    assert info.value.key == key, str(info.value)


def test_cache_with_augmentation_is_refused():
    with pytest.raises(ConfigError, match="data.cache"):
        load_config([], ["data.cache=true", "data.augment.freqm=24"])


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config([], ["optim.blr=3e-3", "model.params.decoder=global", "train.mixed_precision=no"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config([path])
    assert to_dict(again) == to_dict(cfg)


def test_shipped_configs_load():
    files = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert {"demo_audio.yaml", "demo_finetune.yaml", "pretrain_as2m.yaml"} <= {f.name for f in files}
    for f in files:
        load_config([f])


def test_as2m_recipe():
    cfg = load_config([CONFIG_DIR / "audiomae" / "pretrain_as2m.yaml"])
    assert cfg.model.name == "audiomae_vit_base" and cfg.model.params["decoder"] == "swin"
    assert cfg.masking.mask_ratio == 0.8 and cfg.data.target_length == 1024
    assert cfg.optim.blr == 2e-4 and cfg.optim.weight_decay == 1e-4 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.schedule.epochs == 33 and cfg.schedule.warmup_epochs == 3
    # effective batch 512 with the documented 64 processes
    assert cfg.train.batch_size * cfg.train.grad_accum * 64 == 512


def test_fused_accepts_python_booleans():
    from avmae.config import validate

    cfg = Config()
    cfg.optim.fused = True
    validate(cfg)
    assert cfg.optim.fused == "true"
    assert load_config([], ["optim.fused=false"]).optim.fused == "false"


@pytest.mark.parametrize(
    "override, key", [("data.target_length=1000", "data.target_length"), ("data.num_mel_bins=100", "data.num_mel_bins")]
)
def test_an_input_the_patches_do_not_tile_names_the_data_key_when_the_model_is_built(override, key):
    """The patch size is the model's: the config cannot judge divisibility, the model can, and its
    error names the config key that set the param."""
    from avmae.train import PretrainTask

    cfg = load_config([], ["model.name=audiomae_tiny", override])  # a valid config: lengths are > 0
    with pytest.raises(ConfigError) as info:
        PretrainTask(cfg).build_model(None)
    assert info.value.key == key and "multiple of patch_size=16" in str(info.value)

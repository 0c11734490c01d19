"""Configs that cannot run fail before any work, naming the key: the values test_config.py does not
cover, model params the model rejects (a window that does not tile the token grid) before any
dataset is built, a batch larger than the data, the training data a run must name (manifests, or
the demo clips of the demo configs), a warm-up longer than the run, and the CLI's clean error and
exit status (an unknown --modality lists the valid ones)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avmae.config import ConfigError, load_config
from avmae.train import DATASETS, Trainer, register_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.max_skip_fraction=1.5", "data.max_skip_fraction"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.allow_outside_root=sometimes", "data.allow_outside_root"),  # wrong type
        ("data.augment.mixup=2", "data.augment.mixup"),
        ("data.augment.freqm=200", "data.augment.freqm"),  # wider than the 128 mel bins
        ("data.augment.strength=1", "data.augment.strength"),  # unknown nested key
        ("data.sample_rate=0", "data.sample_rate"),
        ("masking.mask_t_prob=1.0", "masking.mask_t_prob"),
        ("optim.clip_grad=0", "optim.clip_grad"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.eps=0", "optim.eps"),
        ("schedule.max_steps=0", "schedule.max_steps"),
        ("train.max_nonfinite=0", "train.max_nonfinite"),
        ("train.loss=hinge", "train.loss"),
        ("eval.every_n_epochs=-2", "eval.every_n_epochs"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("logging.every_n_steps=0", "logging.every_n_steps"),
        ("checkpoint.keep_last=-1", "checkpoint.keep_last"),
        ("checkpoint.every_n_steps=-5", "checkpoint.every_n_steps"),
        ("model.params.num_mel_bins=64", "model.params.num_mel_bins"),
        ("model.params.mask_ratio=0.5", "model.params.mask_ratio"),
        ("data.sample_weights=/no/such/weights.csv", "data.sample_weights"),
    ],
)
def test_more_impossible_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    assert info.value.key == key, str(info.value)


def test_min_lr_above_lr_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_config([], ["optim.lr=1e-4", "schedule.min_lr=1e-3"])
    assert info.value.key == "schedule.min_lr"


@pytest.fixture()
def spy_builder():
    """A dataset builder that records whether any data work started."""
    calls = []

    @register_dataset("spy")
    def build(cfg, split):
        calls.append(split)
        return None

    yield calls
    DATASETS.remove("spy")


def test_model_params_the_model_rejects_fail_before_any_dataset_is_built(spy_builder, tmp_path):
    cfg = load_config(
        [],
        [
            "modality=spy",
            "model.name=audiomae_tiny",
            "model.params.decoder=swin",
            "model.params.decoder_params.window=[3,3]",
            "data.target_length=64",
            "data.num_mel_bins=64",
            "train.cpu=true",
            "train.mixed_precision=no",
            "logging.tensorboard=false",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    with pytest.raises(ConfigError) as info:
        Trainer(cfg).fit()
    assert info.value.key == "model.params" and "does not tile" in str(info.value)
    assert spy_builder == []  # no data work was done


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"audio": torch.zeros(1, 32, 32), "label": torch.zeros(0), "index": i}


def test_a_batch_larger_than_the_data_names_the_batch_size(tmp_path):
    cfg = load_config(
        [],
        [
            "model.name=audiomae_tiny",
            "model.params.decoder=global",
            "data.target_length=32",
            "data.num_mel_bins=32",
            "data.num_workers=0",
            "train.batch_size=4",
            "train.grad_accum=2",
            "train.cpu=true",
            "train.mixed_precision=no",
            "logging.tensorboard=false",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    with pytest.raises(ConfigError) as info:
        Trainer(cfg, datasets=(Items(), None)).fit()
    assert info.value.key == "train.batch_size" and "effective batch (8" in str(info.value)


def test_cli_prints_one_clean_line_and_exits_2_before_any_work(tmp_path):
    cache = tmp_path / "cache"  # where the demo data would be generated
    env = {**os.environ, "AVMAE_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cases = [
        # a recipe without its manifests stops before any work (it used to train ViT-B on the demo clips)
        (["--config", "configs/audiomae/pretrain_as2m.yaml"], "data.train_manifest"),
        (["optim.blrr=1e-3"], "optim.blrr"),
        (
            [
                "model.name=audiomae_tiny",
                "data.target_length=64",
                "model.params.decoder_params.window=[3,3]",
                "train.cpu=true",
            ],
            "model.params",
        ),
    ]
    for i, (args, key) in enumerate(cases):
        proc = subprocess.run(
            [sys.executable, str(REPO / "tools" / "train.py"), "--output-dir", str(tmp_path / f"run{i}"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("config error:")]
        assert len(errors) == 1 and errors[0].startswith(f"config error: {key}:"), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    assert not cache.exists() or not any(cache.iterdir())  # no demo data was generated
    assert not (tmp_path / "run0").exists()  # nor a run folder for the recipe without data


# ---------------------------------------------------------------------- training data: manifest or demo


def test_a_config_without_manifest_or_demo_names_the_missing_key(tmp_path):
    cfg = load_config(
        ["configs/audiomae/pretrain_as2m.yaml"], [f"output_dir={tmp_path / 'run'}"]
    )  # loads: it can be printed
    assert cfg.data.train_manifest is None and cfg.data.demo is None
    with pytest.raises(ConfigError) as info:
        Trainer(cfg)
    assert info.value.key == "data.train_manifest" and "data.demo=audio" in str(info.value)
    assert not (tmp_path / "run").exists()
    for modality in ("av", "audio_shards"):  # every built-in builder checks before any work
        with pytest.raises(ConfigError) as info:
            Trainer(
                load_config([], [f"modality={modality}", "model.name=avmae_tiny", f"output_dir={tmp_path / modality}"])
            )
        assert info.value.key == "data.train_manifest" and not (tmp_path / modality).exists()


def test_the_demo_configs_name_their_demo_data():
    for name, demo in (
        ("demo_audio", "audio"),
        ("demo_finetune", "audio"),
        ("demo_linprobe", "audio"),
        ("demo_ast", "audio"),
        ("demo_av", "av"),
    ):
        cfg = load_config([f"configs/{name}.yaml"])
        assert cfg.data.demo == demo and cfg.data.demo == cfg.modality and cfg.data.train_manifest is None, name


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        (["data.demo=video"], "data.demo", "['audio', 'av']"),
        (["data.demo=audio", "modality=av"], "data.demo", "data.demo=av"),  # the audio clips have no video
        (["data.demo=audio", "data.label_csv=configs/demo_audio.yaml"], "data.train_manifest", "data.label_csv is"),
    ],
)
def test_demo_values_that_cannot_run_name_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config([], overrides)
    assert info.value.key == key and words in str(info.value), str(info.value)


def test_a_manifest_is_read_instead_of_the_demo_clips_of_a_demo_config(tmp_path, monkeypatch):
    from avmae.data import ensure_demo_audio
    from avmae.train.datasets import build_audio_dataset

    clips = ensure_demo_audio(tmp_path / "mine", num_train_per_class=1, num_eval_per_class=1, seconds=0.5)
    monkeypatch.setenv("AVMAE_CACHE", str(tmp_path / "cache"))
    cfg = load_config(
        ["configs/demo_finetune.yaml"],
        [f"data.train_manifest={clips / 'train.json'}", f"data.label_csv={clips / 'class_labels_indices.csv'}"],
    )
    train = build_audio_dataset(cfg, "train")
    assert len(train) == 6 and build_audio_dataset(cfg, "eval") is None  # the given manifests only
    assert not (tmp_path / "cache").exists()  # the demo clips were not generated
    demo = load_config(["configs/demo_finetune.yaml"])
    monkeypatch.setattr("avmae.data.ensure_demo_audio", lambda: clips)  # where the demo clips would be
    assert len(build_audio_dataset(demo, "train")) == 6 and len(build_audio_dataset(demo, "eval")) == 6


def test_a_warm_up_longer_than_the_run_says_how_to_fix_it():
    with pytest.raises(ConfigError) as info:
        load_config(["configs/demo_audio.yaml"], ["schedule.epochs=2"])
    message = str(info.value)
    assert info.value.key == "schedule.warmup_epochs" and "schedule.warmup_epochs=0.2" in message
    fixed = load_config(
        ["configs/demo_audio.yaml"], ["schedule.epochs=2", "schedule.warmup_epochs=0.2"]
    )  # the suggestion works
    assert fixed.schedule.warmup_epochs == 0.2


def test_the_cli_lists_the_valid_modalities_in_one_line(load_tool, capsys):
    train = load_tool("train")
    assert train.main(["--modality", "video"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error: --modality: unknown modality 'video'")
    assert all(name in err[0] for name in ("audio", "av", "audio_shards"))
    assert train.main(["--modality", "audio_shards"]) == 2  # a registered builder without a demo config
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no demo config" in err[0] and "--config" in err[0]
    assert train.main(["--modality", "audio", "schedule.epochs=2", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "schedule.warmup_epochs=0.2" in err[0]

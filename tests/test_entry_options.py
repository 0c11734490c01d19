"""Entries' own options (avmae.options): a dataset builder's ``data.params``, a task's
``task_params``, a masker's and an objective's spec params are typed, merged and checked like the
built-in sections; task- and dataset-specific checks live in the entries; ``dataset`` selects the
builder (``modality`` still works)."""

from dataclasses import dataclass

import pytest
import torch

import avmae
from avmae.config import ConfigError, load_config, save_config
from avmae.masking import RandomMasker
from avmae.registry import DATASETS, MASKERS, TASKS
from avmae.train import DatasetBuilder, manifest_of
from avmae.train.pretrain import PretrainTask


@dataclass
class GainOptions:
    gain_db: float = 0.0
    channels: int = 1


class GainedAudio(DatasetBuilder):
    """The audio builder's data, louder by ``data.params.gain_db``."""

    options = GainOptions
    video_views = True  # claims several views, so eval.video_views is its to accept

    def build(self, cfg, split):
        from avmae.train import build_audio_dataset

        ds = build_audio_dataset(cfg, split)
        if ds is not None:
            ds.gain = 10 ** (self.options_of(cfg).gain_db / 20)
        return ds


@dataclass
class WarmOptions:
    warm_steps: int = 2


class WarmPretrain(PretrainTask):
    options = WarmOptions


@dataclass
class StripeOptions:
    width: int = 2


class StripeMasker(RandomMasker):
    options = StripeOptions

    def __init__(self, *, width: int = 2) -> None:
        self.width = width


@pytest.fixture
def entries():
    avmae.register_dataset("gained_audio")(GainedAudio)
    avmae.register_task("warm_pretrain")(WarmPretrain)
    avmae.register_masker("stripes")(StripeMasker)
    yield
    DATASETS.remove("gained_audio")
    TASKS.remove("warm_pretrain")
    MASKERS.remove("stripes")


def test_a_dataset_builders_options_are_typed_merged_and_saved(entries, tmp_path):
    cfg = load_config([], ["dataset=gained_audio", "data.params.gain_db=3"])
    assert cfg.modality == cfg.dataset == "gained_audio"
    assert cfg.data.params == {"gain_db": 3.0, "channels": 1}  # typed, defaults filled in
    assert DATASETS.instance("gained_audio").options_of(cfg) == GainOptions(gain_db=3.0)
    again = load_config([save_config(cfg, tmp_path / "c.yaml")])
    assert again.data.params == cfg.data.params and again.dataset == "gained_audio"
    with pytest.raises(ConfigError, match=r"data.params.gain: not an option of dataset 'gained_audio'.*gain_db"):
        load_config([], ["dataset=gained_audio", "data.params.gain=3"])
    with pytest.raises(ConfigError, match=r"data.params.channels"):
        load_config([], ["dataset=gained_audio", "data.params.channels=many"])
    with pytest.raises(ConfigError, match=r"data.params.gain_db: dataset 'audio' takes no data.params"):
        load_config([], ["data.params.gain_db=3"])
    # the builder's own checks: it makes views, so eval.video_views is accepted for a classifier
    assert load_config([], ["dataset=gained_audio", "task=finetune", "eval.video_views=2"]).eval.video_views == 2
    with pytest.raises(ConfigError, match="eval.video_views.*'audio'"):
        load_config([], ["task=finetune", "eval.video_views=2"])


def test_a_tasks_and_a_maskers_options(entries):
    cfg = load_config([], ["task=warm_pretrain", "task_params.warm_steps=5"])
    assert cfg.task_params == {"warm_steps": 5}
    assert WarmPretrain(cfg).params == WarmOptions(warm_steps=5)
    with pytest.raises(ConfigError, match=r"task_params.warmup: not an option of task 'warm_pretrain'"):
        load_config([], ["task=warm_pretrain", "task_params.warmup=5"])
    with pytest.raises(ConfigError, match=r"task_params.x: task 'pretrain' takes no task_params"):
        load_config([], ["task_params.x=1"])
    # the task's own check (pretraining evaluates one view) runs for a subclass too
    with pytest.raises(ConfigError, match="eval.video_views.*one view"):
        load_config([], ["task=warm_pretrain", "dataset=av", "eval.video_views=2"])
    ok = load_config([], ["masking.maskers={audio: {name: stripes, width: 4}}"])
    assert ok.masking.maskers["audio"]["width"] == 4
    with pytest.raises(ConfigError, match=r"masking.maskers.audio.height: not an option of masker 'stripes'"):
        load_config([], ["masking.maskers={audio: {name: stripes, height: 4}}"])


def test_dataset_and_modality_name_the_same_thing():
    assert load_config([], ["modality=av"]).dataset == "av"
    assert load_config([], ["dataset=av"]).modality == "av"
    with pytest.raises(ConfigError, match="dataset: names the dataset builder"):
        load_config([], ["dataset=av", "modality=audio_shards"])
    with pytest.raises(ConfigError, match="unknown dataset builder 'nope'.*audio_shards"):
        load_config([], ["dataset=nope"])
    with pytest.raises(ConfigError, match="data.demo.*not read by dataset 'av'"):
        load_config([], ["dataset=av", "data.demo=audio"])


def test_any_builder_reads_a_manifest_or_the_demo_clips(entries, tmp_path):
    from avmae.data import ensure_demo_audio

    demo = ensure_demo_audio(tmp_path / "demo", num_train_per_class=1, num_eval_per_class=1, seconds=0.5)
    args = [f"data.train_manifest={demo / 'train.json'}", f"data.label_csv={demo / 'class_labels_indices.csv'}"]
    cfg = load_config([], ["dataset=gained_audio", "data.params.gain_db=6", "data.target_length=64", *args])
    assert manifest_of(cfg, "train") == (str(demo / "train.json"), str(demo / "class_labels_indices.csv"))
    assert manifest_of(cfg, "eval") is None
    ds = DATASETS.instance("gained_audio").build(cfg, "train")
    assert len(ds) == 6 and ds.gain == pytest.approx(10**0.3)
    assert torch.isfinite(ds[0]["audio"]).all()

"""CAV-MAE through the trainer: ``cav_mae_*`` pretraining takes the pretraining task's keywords
(``target_length``, ``mask_ratio``) as avmae's own audio-visual presets do, and its checkpoints
reload; a linear probe of ``cav_mae_*_ft`` trains its ``mlp_head`` alone."""

import math

import pytest
import torch
from conftest import tiny_av_config
from safetensors.torch import load_file, save_file

import avmae
from avmae.config import ConfigError
from avmae.hub import load_pretrained
from avmae.models.cav_mae import CAVMAE
from avmae.train import Trainer, list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo(tiny_av_demo):
    return tiny_av_demo


def av_config(demo, out, *extra):
    return tiny_av_config(demo, out, "pretrain", "cav_mae_tiny", *extra)


def _weights(run):
    return list_checkpoints(run)[-1] / "model.safetensors"


@pytest.fixture(scope="module")
def pretrained(demo, tmp_path_factory):
    """A 3-step cav_mae_tiny pretraining run at mask ratio 0.5 (not the model's 0.75): (run folder, TrainResult)."""
    run = tmp_path_factory.mktemp("cav") / "pre"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run, Trainer(av_config(demo, run, "masking.mask_ratio=0.5")).fit()
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ the factory
def test_factory_takes_the_pretraining_keywords():
    model = avmae.create_model("cav_mae_tiny", target_length=128, num_mel_bins=128, mask_ratio=0.6)
    assert model.modalities["audio"].input_shape == (1, 128, 128)
    assert model.mask_ratio == {"audio": 0.6, "video": 0.6}
    # the release's defaults when the ratio is not given; per modality by name
    assert avmae.create_model("cav_mae_tiny").mask_ratio == {"audio": 0.75, "video": 0.75}
    assert avmae.create_model("cav_mae_tiny", mask_ratio={"video": 0.9}).mask_ratio == {"audio": 0.75, "video": 0.9}
    assert avmae.create_model("cav_mae_tiny", mask_ratio=0.5, mask_ratio_v=0.5).mask_ratio == {
        "audio": 0.5,
        "video": 0.5,
    }
    with pytest.raises(ValueError, match="mask_ratio_a=0.75.*disagree"):
        avmae.create_model("cav_mae_tiny", mask_ratio=0.8, mask_ratio_a=0.75)
    with pytest.raises(ValueError, match=r"\['image'\], not modalities"):
        avmae.create_model("cav_mae_tiny", mask_ratio={"image": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        avmae.create_model("cav_mae_tiny", mask_ratio=1.0)
    with pytest.raises(ValueError, match="audio_length=32.*disagree"):
        avmae.create_model("cav_mae_tiny", target_length=64, audio_length=32)
    with pytest.raises(ValueError, match="one video frame"):
        avmae.create_model("cav_mae_tiny", num_frames=4)
    assert avmae.create_model("cav_mae_tiny_ft", num_frames=1, num_classes=2).num_classes == 2
    with pytest.raises(ValueError, match="one video frame"):
        avmae.create_model("cav_mae_tiny_ft", num_frames=2)


# ------------------------------------------------------------------------------ the trainer
def test_pretraining_runs_through_the_trainer_and_reloads(demo, pretrained):
    run, result = pretrained
    assert result.steps == 3 and math.isfinite(result.last_loss)
    assert {"loss", "mae_audio", "mae_video", "contrastive", "retrieval/a2v_r1", "retrieval/v2a_r1"} <= set(result.eval)
    assert all(math.isfinite(result.eval[k]) for k in ("loss", "mae_audio", "mae_video", "contrastive"))

    saved = load_file(str(_weights(run)))
    assert not any(k.startswith("mlp_head.") for k in saved) and any(k.startswith("decoder.") for k in saved)
    # load_checkpoint into a model built as the run's config says
    model = avmae.create_model("cav_mae_tiny", target_length=64, mask_ratio=0.5)
    report = avmae.load_checkpoint(model, _weights(run))
    assert report.format == "avmae" and not report.missing and not report.unexpected and report.loaded == len(saved)
    # load_pretrained rebuilds it from the run alone, masking ratio included
    again, info = load_pretrained(run)
    assert isinstance(again, CAVMAE) and info.model_name == "cav_mae_tiny"
    assert again.mask_ratio == {"audio": 0.5, "video": 0.5}
    own = again.state_dict()
    assert set(own) == set(saved) and all(torch.equal(own[k], saved[k]) for k in saved)

    # the reloaded model computes the same losses as the trained weights, and masks half of each modality
    inputs = {"audio": torch.randn(2, 1, 64, 128), "video": torch.randn(2, 1, 3, 64, 64)}
    noise = {"audio": torch.rand(2, 32), "video": torch.rand(2, 16)}
    with torch.no_grad():
        a, b = model.eval()(inputs, noise=noise), again.eval()(inputs, noise=noise)
    assert torch.isfinite(a.loss) and torch.equal(a.loss, b.loss)
    assert a.mask["audio"].sum(1).tolist() == [16.0, 16.0] and a.mask["video"].sum(1).tolist() == [8.0, 8.0]


def test_per_modality_ratios_and_option_errors(demo, tmp_path):
    trainer = Trainer(av_config(demo, tmp_path / "per", "masking.per_modality={video: 0.25}"))
    model = trainer.task.build_model(None)
    assert model.mask_ratio == {"audio": 0.75, "video": 0.75}  # masking.mask_ratio unset: CAV-MAE's own
    assert trainer.task.mask_ratio == {"audio": 0.75, "video": 0.25}  # passed at every forward
    inputs = {"audio": torch.randn(1, 1, 64, 128), "video": torch.randn(1, 1, 3, 64, 64)}
    out = trainer.task.compute_loss(model, inputs, inputs)
    assert math.isfinite(out[0].item())

    bad = {
        "model.params.num_frames=4": "one video frame",
        "model.params.audio_length=32": "audio_length=32.*disagree",
        "model.params.mask_ratio_v=0.75": "mask_ratio_v=0.75.*disagree",
    }
    for i, (option, message) in enumerate(bad.items()):
        with pytest.raises(ConfigError, match=f"model.params.*{message}"):
            Trainer(av_config(demo, tmp_path / f"bad{i}", option, "masking.mask_ratio=0.6")).fit()
        assert not list_checkpoints(tmp_path / f"bad{i}")
    with pytest.raises(ConfigError, match="masking.per_modality.*'image'"):
        Trainer(av_config(demo, tmp_path / "badm", "masking.per_modality={image: 0.5}")).fit()


# ------------------------------------------------------------------------------ linear probe
def test_linear_probe_trains_only_the_mlp_head(demo, pretrained, tmp_path):
    """cav_mae_tiny_ft probed on the pretraining run's encoder: after training, the ``mlp_head``
    (LayerNorm and Linear) moved and every other tensor is the initial one."""
    run, _ = pretrained
    start = avmae.create_model("cav_mae_tiny_ft", num_classes=6)
    report = avmae.load_checkpoint(start, _weights(run), reset_head=True)
    assert sorted(report.reinitialized) == [
        "mlp_head.0.bias",
        "mlp_head.0.weight",
        "mlp_head.1.bias",
        "mlp_head.1.weight",
    ]
    init = {k: v.contiguous() for k, v in start.state_dict().items()}
    save_file(init, str(tmp_path / "init.safetensors"))

    cfg = av_config(
        demo,
        tmp_path / "lp",
        "task=linprobe",
        "model.name=cav_mae_tiny_ft",
        f"checkpoint.init_from={tmp_path / 'init.safetensors'}",
        "optim.lr=1e-2",
        "optim.weight_decay=0",
    )
    result = Trainer(cfg).fit()
    assert result.steps == 3 and math.isfinite(result.last_loss) and "acc" in result.eval

    probed = load_file(str(_weights(tmp_path / "lp")))
    assert set(probed) == set(init)
    head = sorted(k for k in init if k.startswith("mlp_head."))
    assert len(head) == 4
    assert [k for k in init if not torch.equal(probed[k], init[k])] == [k for k in init if k in head]


def test_reload_of_a_run_with_mask_ratio_unset_passes_no_ratio(tmp_path):
    """masking.mask_ratio: null (the default) reaches the factory as no keyword, as in the trainer,
    so a factory whose ratio is a float with its own default rebuilds the run's model."""
    import yaml

    from avmae.registry import register_model

    name = "test_float_ratio_audiomae"
    if name not in avmae.list_models():

        @register_model(name)
        def _float_ratio(mask_ratio: float = 0.6, **kw):
            return avmae.create_model("audiomae_tiny", mask_ratio=float(mask_ratio), **kw)

    run = tmp_path / "run"
    run.mkdir()
    model = avmae.create_model(name, target_length=64)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    cfg = {
        "task": "pretrain",
        "model": {"name": name, "params": {}},
        "data": {"target_length": 64, "num_mel_bins": 128},
        "masking": {"mask_ratio": None},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    again, info = load_pretrained(run)
    assert "mask_ratio" not in info.model_params and again.mask_ratio == {"audio": 0.6}


def test_per_modality_ratios_of_a_model_without_default_ratios_need_every_modality():
    """A registered pretraining model with no ``mask_ratio`` mapping: masking.per_modality naming
    one modality, masking.mask_ratio unset, is a ConfigError naming the keys (not a KeyError)."""
    from avmae.config import load_config
    from avmae.registry import register_model
    from avmae.train import PretrainTask

    name = "test_no_default_ratios"
    if name not in avmae.list_models():

        @register_model(name)
        def _no_default_ratios(**kw):
            model = torch.nn.Module()
            model.modalities = torch.nn.ModuleDict({"audio": torch.nn.Identity(), "video": torch.nn.Identity()})
            return model

    def task(*extra):
        return PretrainTask(load_config([], [f"model.name={name}", "masking.per_modality={video: 0.5}", *extra]))

    with pytest.raises(ConfigError, match=r"masking.per_modality.*\['audio'\].*masking.mask_ratio"):
        task().build_model(None)
    t = task("masking.per_modality={video: 0.5, audio: 0.6}")
    t.build_model(None)
    assert t.mask_ratio == {"audio": 0.6, "video": 0.5}
    t = task("masking.mask_ratio=0.7")
    t.build_model(None)
    assert t.mask_ratio == {"audio": 0.7, "video": 0.5}

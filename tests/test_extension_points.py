"""The extension surface: maskers, objectives, decoders' own defaults, config selection, and a
package installed from outside (a real distribution with entry points) that adds an objective, a
masker and a task, selected from the config, and trains through tools/train.py."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import avmae
from avmae.config import ConfigError, load_config
from avmae.hub import load_pretrained
from avmae.losses import masked_mse
from avmae.masking import (
    InverseBlockMasker,
    TimeFreqMasker,
    build_masker,
    keep_by_noise,
    num_kept,
    structured_time_freq_mask,
)
from avmae.registry import MASKERS, OBJECTIVES, RegistryError

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------- maskers


def test_builtin_maskers_are_registered_and_unknown_names_list_them():
    assert {"random", "tube", "inverse_block", "time_freq"} <= set(MASKERS.names())
    with pytest.raises(RegistryError, match="inverse_block"):
        build_masker("blocks")
    with pytest.raises(ValueError, match="rejected its params"):
        build_masker({"name": "inverse_block", "size": 3})


def _kept_neighbours(keep: torch.Tensor) -> float:
    """Mean number of kept 4-neighbours of a kept token; keep: [B, T, F] bool."""
    k = keep.float()
    n = torch.zeros_like(k)
    n[:, 1:] += k[:, :-1]
    n[:, :-1] += k[:, 1:]
    n[:, :, 1:] += k[:, :, :-1]
    n[:, :, :-1] += k[:, :, 1:]
    return float((n * k).sum() / k.sum())


def test_inverse_block_keeps_mae_count_in_blocks():
    grid, ratio, B = (64, 8), 0.8, 32
    masker = InverseBlockMasker(block=5)
    g = torch.Generator().manual_seed(0)
    noise = masker.noise(B, grid, ratio, generator=g)
    x = torch.randn(B, 512, 4)
    kept, mask, ids_restore, ids_keep = masker(x, grid, ratio, noise)
    assert kept.shape == (B, num_kept(512, ratio), 4) and (mask == 0).sum(1).tolist() == [num_kept(512, ratio)] * B
    # the same noise gives the same mask; a generator makes the noise reproducible
    assert torch.equal(masker(x, grid, ratio, noise)[1], mask)
    assert torch.equal(masker.noise(B, grid, ratio, generator=torch.Generator().manual_seed(0)), noise)
    # kept tokens come in blocks: far more kept neighbours than under random masking
    blocks = _kept_neighbours((mask == 0).reshape(B, 64, 8))
    rand = _kept_neighbours((build_masker("random")(x, grid, ratio)[1] == 0).reshape(B, 64, 8))
    assert blocks > 2.0 and rand < 1.2, (blocks, rand)
    with pytest.raises(ValueError, match="2-D"):
        masker.noise(2, (4, 4, 4), 0.5)


def test_time_freq_masker_keeps_what_the_fine_tuning_masking_keeps_in_its_order():
    B, T, F, D = 3, 8, 4, 2
    x = torch.randn(B, T * F, D)
    nt, nf = torch.rand(B, T), torch.rand(B, F)
    masker = TimeFreqMasker(time_ratio=0.25, freq_ratio=0.5)
    kept, mask, _, _ = masker(x, (T, F), 0.0, masker.noise_from(nt, nf, (T, F), 0.0))
    ref_kept, ref_removed = structured_time_freq_mask(x, (T, F), 0.25, 0.5, nt, nf)
    assert torch.equal(kept, ref_kept) and torch.equal(mask, ref_removed)
    # unset shares: about `ratio` of the tokens masked, whole rows and columns
    auto = TimeFreqMasker()
    assert auto.keep_count((64, 8), 0.75) == int(64 * 0.5) * int(8 * 0.5)


def test_keep_by_noise_checks_the_noise_shape():
    with pytest.raises(ValueError, match="noise must have shape"):
        keep_by_noise(torch.zeros(2, 8, 3), 4, torch.rand(2, 7))


def test_a_model_uses_the_masker_it_is_given():
    model = avmae.create_model(
        "audiomae_tiny", target_length=64, maskers={"audio": {"name": "inverse_block", "block": 2}}
    )
    assert isinstance(model.maskers["audio"], InverseBlockMasker) and model.maskers["audio"].block == 2
    out = model({"audio": torch.randn(2, 1, 64, 128)})
    assert out.mask["audio"].shape == (2, 32) and (out.mask["audio"] == 0).sum(1).tolist() == [num_kept(32, 0.8)] * 2
    with pytest.raises(ValueError, match="unknown modalities"):
        avmae.create_model("audiomae_tiny", target_length=64, maskers={"video": "tube"})


# ----------------------------------------------------------------------------------- objectives


def test_builtin_objectives_and_weights():
    assert {"mae_mse", "info_nce"} <= set(OBJECTIVES.names())
    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 128)
    noise = {"audio": torch.rand(2, 32)}
    one = avmae.create_model(
        "audiomae_tiny", target_length=64, objectives=[{"name": "mae_mse", "norm_pix": False}]
    ).eval()
    two = avmae.create_model(
        "audiomae_tiny",
        target_length=64,
        objectives=[
            {"name": "mae_mse", "weight": 2.0, "params": {"norm_pix": True}},
            {"name": "mae_mse", "norm_pix": False, "weight": 0.5},
        ],
    ).eval()
    two.load_state_dict(one.state_dict())
    a, b = one({"audio": x}, noise=noise), two({"audio": x}, noise=noise)
    target = one.modalities["audio"].patchify(x)
    plain = masked_mse(a.pred["audio"], target, a.mask["audio"], norm_pix=False)
    normed = masked_mse(a.pred["audio"], target, a.mask["audio"], norm_pix=True)
    torch.testing.assert_close(a.loss, plain)
    torch.testing.assert_close(b.loss, 2.0 * normed + 0.5 * plain)
    assert not one.norm_pix_loss and two.norm_pix_loss  # viz restores patch statistics when any objective normalises
    with pytest.raises(ValueError, match="rejected its params"):
        avmae.create_model("audiomae_tiny", target_length=64, objectives=[{"name": "mae_mse", "temperature": 1.0}])
    with pytest.raises(ValueError, match="two of the model's modalities"):
        avmae.create_model("audiomae_tiny", target_length=64, objectives=["info_nce"])


def test_clones_share_targets_and_differ_in_masks():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 128)
    one = avmae.create_model("audiomae_tiny", target_length=64).eval()
    three = avmae.create_model("audiomae_tiny", target_length=64, num_clones=3).eval()
    three.load_state_dict(one.state_dict())
    noise = torch.rand(2, 32)
    same = three({"audio": x}, noise={"audio": noise.repeat_interleave(3, 0)})  # every clone the clip's mask
    ref = one({"audio": x}, noise={"audio": noise})
    assert same.pred["audio"].shape == (6, 32, 256) and same.num_clones == 3
    torch.testing.assert_close(same.pred["audio"][::3], ref.pred["audio"])
    torch.testing.assert_close(same.loss, ref.loss)  # the targets are the clip's, repeated
    own = three({"audio": x})  # clones drawn by the masker: different masks
    assert not torch.equal(own.mask["audio"][0], own.mask["audio"][1])


# ----------------------------------------------------------------------------------- decoders


def test_a_hybrid_decoder_in_the_official_layout_is_recognised(tmp_path):
    from avmae.checkpoint import to_audiomae_official

    torch.manual_seed(0)
    model = avmae.create_model("audiomae_tiny", target_length=64, decoder="hybrid").eval()
    assert len(model.decoder.blocks) == 3  # hybrid's own tiny size: 2 window blocks + 1 global
    torch.save({"model": to_audiomae_official(model)}, tmp_path / "hybrid.pth")
    loaded, report = load_pretrained(tmp_path / "hybrid.pth")
    assert report.model_params["decoder"] == "hybrid" and report.model_params["decoder_params"]["global_depth"] == 1
    x, noise = torch.randn(1, 1, 64, 128), {"audio": torch.rand(1, 32)}
    torch.testing.assert_close(
        loaded({"audio": x}, noise=noise).pred["audio"], model({"audio": x}, noise=noise).pred["audio"]
    )


# ----------------------------------------------------------------------------------- config


def test_config_selects_maskers_and_objectives_and_the_checkpoint_rebuilds_them(tmp_path):
    from avmae.train import PretrainTask

    cfg = load_config(
        [],
        [
            "model.name=audiomae_tiny",
            "data.target_length=64",
            "masking.maskers.audio={name: inverse_block, block: 2}",
            "objectives=[{name: mae_mse, weight: 3.0, norm_pix: false}]",
        ],
    )
    model = PretrainTask(cfg).build_model(None)
    assert isinstance(model.maskers["audio"], InverseBlockMasker) and model.objectives[0].weight == 3.0
    path = avmae.save_checkpoint(model, tmp_path / "model.safetensors")
    again, report = load_pretrained(path)
    assert report.source == "metadata" and report.model_params["objectives"] == [
        {"name": "mae_mse", "weight": 3.0, "norm_pix": False}
    ]
    assert (
        isinstance(again.maskers["audio"], InverseBlockMasker)
        and again.objectives[0].weight == 3.0
        and not again.norm_pix_loss
    )
    with pytest.raises(ConfigError, match="objectives.*pretraining"):
        load_config([], ["task=finetune", "model.name=audiomae_tiny_cls", "objectives=[mae_mse]"])


# ----------------------------------------------------------------------------------- a plugin package

PLUGIN = '''
"""A third-party package: a masker, an objective and a task, registered through entry points."""
import json
import os

import torch

from avmae.masking import Masker
from avmae.objectives import Objective, ObjectiveOutput
from avmae.train import PretrainTask


class EveryOtherRow(Masker):
    """Keeps the tokens of every other time row (a structured masker)."""

    def __init__(self, *, phase=0):
        self.phase = int(phase)

    def noise(self, batch, grid, ratio, *, device=None, generator=None):
        t, f = grid
        rows = (torch.arange(t, device=device) + self.phase) % 2  # 0: kept first
        jitter = torch.rand(batch, t, f, device=device, generator=generator) * 0.5
        return (rows[:, None].float() + jitter).reshape(batch, t * f)


class MaskedL1(Objective):
    """L1 on the masked patches."""

    def forward(self, model, inputs, out):
        terms = {}
        for m, mod in model.modalities.items():
            err = (out.pred[m].float() - mod.patchify(inputs[m]).float()).abs().mean(-1)
            mask = out.mask[m]
            terms[f"l1_{m}"] = (err * mask).sum() / mask.sum()
        return ObjectiveOutput(loss=sum(terms.values()), terms=terms)


class CountingPretrain(PretrainTask):
    """Pretraining that also counts its optimizer steps into the run folder."""

    def after_step(self, model, step, total_steps):
        super().after_step(model, step, total_steps)
        with open(os.path.join(self.cfg.output_dir, "steps_seen.json"), "w") as f:
            json.dump({"step": step, "total": total_steps}, f)
'''

ENTRY_POINTS = """
[avmae.maskers]
every_other_row = avmae_ext_plugin:EveryOtherRow

[avmae.objectives]
masked_l1 = avmae_ext_plugin:MaskedL1

[avmae.tasks]
counting_pretrain = avmae_ext_plugin:CountingPretrain
"""


@pytest.fixture
def outside_package(tmp_path):
    site = tmp_path / "site"
    (site / "avmae_ext_plugin").mkdir(parents=True)
    (site / "avmae_ext_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "avmae_ext_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: avmae-ext-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


@pytest.mark.slow
def test_a_package_from_outside_adds_a_masker_an_objective_and_a_task(outside_package, tmp_path):
    from avmae.data import ensure_demo_audio

    demo = ensure_demo_audio(tmp_path / "demo", num_train_per_class=2, num_eval_per_class=1, seconds=0.7)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(outside_package), str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    listed = subprocess.run(
        [sys.executable, "-m", "avmae", "models"], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    for name in ("every_other_row", "masked_l1", "counting_pretrain"):
        assert f"  {name}" in listed.stdout, listed.stdout
    out = tmp_path / "run"
    args = [
        "task=counting_pretrain",
        "model.name=audiomae_tiny",
        "model.params.decoder=global",
        f"data.train_manifest={demo / 'train.json'}",
        f"data.eval_manifest={demo / 'eval.json'}",
        f"data.label_csv={demo / 'class_labels_indices.csv'}",
        "data.target_length=64",
        "data.num_workers=0",
        "masking.maskers.audio=every_other_row",
        "masking.mask_ratio=0.5",
        "objectives=[{name: masked_l1}]",
        "train.batch_size=4",
        "train.mixed_precision=no",
        "optim.lr=2e-3",
        "schedule.epochs=8",
        "schedule.warmup_epochs=0",
        "logging.every_n_steps=1",
        "logging.progress=false",
        "logging.tensorboard=false",
        "eval.every_n_epochs=0",
        "checkpoint.every_n_epochs=0",
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), "--output-dir", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/l1_audio"] for r in records if "train/l1_audio" in r]
    assert len(losses) == 24 and math.isfinite(losses[-1])
    assert sum(losses[-4:]) < sum(losses[:4])  # it learns
    assert json.loads((out / "steps_seen.json").read_text()) == {"step": 24, "total": 24}  # the plugin task ran
    # the weights name the plugin parts; a fresh process rebuilds the model from the file alone
    code = (
        "import sys; from avmae.hub import load_pretrained; m, r = load_pretrained(sys.argv[1]); "
        "print(type(m.maskers['audio']).__name__, type(m.objectives[0]).__name__)"
    )
    again = subprocess.run(
        [sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.split() == ["EveryOtherRow", "MaskedL1"]

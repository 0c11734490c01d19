"""The EAT-style plugin (plugins/avmae_eat): public imports only, its teacher, targets and losses
against a computation written out here, exact resume, fine-tuning of its encoder with the AudioMAE
recipe, and a run through tools/train.py from a copy of the package outside the source tree."""

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import avmae
from avmae.config import load_config
from avmae.hub import load_pretrained
from avmae.masking import InverseBlockMasker
from avmae.train import Trainer, list_checkpoints

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "plugins" / "avmae_eat"


def test_the_plugin_imports_nothing_private():
    """Every avmae import of the plugin names a public module (no ``_`` part) and public names
    (listed in that module's ``__all__``); nothing in avmae imports the plugin."""
    for path in PLUGIN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and node.module
                and node.module.split(".")[0] == "avmae"
            ):
                assert not any(part.startswith("_") for part in node.module.split(".")), f"{path.name}: {node.module}"
                public = getattr(importlib.import_module(node.module), "__all__", [])
                for alias in node.names:
                    assert alias.name in public, f"{path.name}: {alias.name} is not in {node.module}.__all__"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] != "avmae" or not any(
                        p.startswith("_") for p in alias.name.split(".")
                    ), f"{path.name}: {alias.name}"
    for path in (REPO / "avmae").rglob("*.py"):
        assert "avmae_eat" not in path.read_text(), f"{path} names the plugin"


def test_registered_through_entry_points():
    from avmae.registry import DECODERS, MODELS, OBJECTIVES

    assert {"eat_vit_base", "eat_demo", "eat_tiny"} <= set(avmae.list_models("eat_*"))
    assert MODELS.source("eat_vit_base").startswith("plugin avmae_eat")
    assert OBJECTIVES.source("eat_latent").startswith("plugin avmae_eat") and DECODERS.source("eat_cnn").startswith(
        "plugin avmae_eat"
    )


def test_vit_base_preset_holds_the_paper_values():
    with torch.device("meta"):
        model = avmae.create_model("eat_vit_base")
    (objective,) = model.objectives
    assert model.num_clones == 16 and model.mask_ratio == {"audio": 0.8} and model.has_cls
    assert isinstance(model.maskers["audio"], InverseBlockMasker) and model.maskers["audio"].block == 5
    assert len(model.decoder.blocks) == 6 and model.decoder.pred["audio"].out_features == 768
    assert objective.top_k == 12 and (objective.decay, objective.end_decay, objective.anneal_steps) == (
        0.9998,
        0.99999,
        100_000,
    )
    assert objective.utterance_weight == 1.0 and objective.instance_norm and objective.layer_norm_targets
    cfg = load_config(["eat/pretrain_as2m"])
    assert (
        cfg.model.name == "eat_vit_base"
        and cfg.optim.lr == 5e-4
        and cfg.optim.betas == (0.9, 0.95)
        and cfg.optim.clip_grad == 4.0
    )
    assert (cfg.schedule.max_steps, cfg.schedule.warmup_steps, cfg.train.batch_size) == (400_000, 53_333, 12)


def test_targets_losses_and_ema_against_a_written_out_computation():
    torch.manual_seed(0)
    model = avmae.create_model("eat_tiny", decay=0.9, end_decay=0.99, anneal_steps=10)
    (objective,) = model.objectives
    teacher = objective.teacher
    assert teacher.decoder is None and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(3, 1, 64, 128)
    out = model({"audio": x})
    B, C, L, D = 3, 4, 32, 64
    assert (
        out.pred["audio"].shape == (B * C, L, D)
        and out.mask["audio"].shape == (B * C, L)
        and out.latent.shape[0] == B * C
    )
    # the targets, written out: the teacher's last 2 block outputs, cls dropped, instance norm over tokens, mean,
    # layer norm
    with torch.no_grad():
        tokens = teacher.modalities["audio"].embed(x)
        h = torch.cat([(teacher.cls_token + teacher.cls_pos_embed).expand(B, -1, -1), tokens], dim=1)
        layers = []
        for blk in teacher.blocks:
            h = blk(h)
            y = h[:, 1:]
            y = (y - y.mean(1, keepdim=True)) / torch.sqrt(y.var(1, keepdim=True, unbiased=False) + 1e-5)
            layers.append(y)
        target = torch.stack(layers[-2:]).mean(0)
        target = F.layer_norm(target, (D,))
    torch.testing.assert_close(objective.targets(x), target, atol=1e-5, rtol=1e-5)
    rep = target.repeat_interleave(C, 0)
    mask = out.mask["audio"]
    frame = (((out.pred["audio"] - rep) ** 2).mean(-1) * mask).sum() / mask.sum()
    utterance = ((out.latent[:, 0] - rep.mean(1)) ** 2).mean()
    torch.testing.assert_close(out.losses["eat_frame"], frame)
    torch.testing.assert_close(out.losses["eat_utterance"], utterance)
    torch.testing.assert_close(out.loss, frame + utterance)
    # gradients reach the student only; the teacher follows by EMA after the step
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    before = teacher.blocks[0].attn.qkv.weight.detach().clone()
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.add_(1.0)
    objective.after_step(model, 5, 100)
    decay = 0.9 + (0.99 - 0.9) * 5 / 10
    assert objective.decay_at(5) == pytest.approx(decay) and objective.decay_at(50) == 0.99
    torch.testing.assert_close(
        teacher.blocks[0].attn.qkv.weight, decay * before + (1 - decay) * model.blocks[0].attn.qkv.weight.detach()
    )


def test_weights_hold_the_teacher_and_rebuild_from_the_file(tmp_path):
    torch.manual_seed(0)
    model = avmae.create_model("eat_tiny", num_clones=2)
    with torch.no_grad():
        for p in model.objectives[0].teacher.parameters():
            p.add_(0.01)  # a teacher that has moved away from the student
    path = avmae.save_checkpoint(model, tmp_path / "model.safetensors")
    again, report = load_pretrained(path)
    assert report.model_params == {"num_clones": 2}
    sd, sd2 = model.state_dict(), again.state_dict()
    assert any(k.startswith("objectives.0.teacher.blocks.") for k in sd) and sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)


def _demo(tmp_path):
    from avmae.data import ensure_demo_audio

    return ensure_demo_audio(tmp_path / "demo", num_train_per_class=2, num_eval_per_class=1, seconds=0.7)


def _eat_run(demo, out, *extra):
    return load_config(
        ["eat/demo"],
        [
            "model.name=eat_tiny",
            f"data.train_manifest={demo / 'train.json'}",
            f"data.eval_manifest={demo / 'eval.json'}",
            f"data.label_csv={demo / 'class_labels_indices.csv'}",
            "data.target_length=64",
            "train.batch_size=4",
            "schedule.max_steps=6",
            "schedule.warmup_steps=1",
            "train.cpu=true",
            "train.mixed_precision=no",
            "logging.progress=false",
            "logging.tensorboard=false",
            "logging.every_n_steps=1",
            "eval.every_n_epochs=-1",
            "checkpoint.every_n_epochs=0",
            "checkpoint.keep_last=0",
            f"output_dir={out}",
            *extra,
        ],
    )


@pytest.mark.usefixtures("one_thread")
def test_pretraining_resumes_exactly_and_its_encoder_fine_tunes(tmp_path):
    demo = _demo(tmp_path)
    whole = Trainer(_eat_run(demo, tmp_path / "whole")).fit()
    assert whole.steps == 6 and all(torch.isfinite(torch.tensor(loss)) for _, loss in whole.loss_history)
    part = Trainer(_eat_run(demo, tmp_path / "part", "checkpoint.every_n_steps=3"))
    assert part.fit(stop_after=3).steps == 3
    resumed = Trainer(_eat_run(demo, tmp_path / "part", "checkpoint.every_n_steps=3", "resume=true")).fit()
    assert resumed.steps == 6
    a, _ = load_pretrained(tmp_path / "whole")
    b, _ = load_pretrained(tmp_path / "part")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][
        :5
    ]  # teacher included
    # the AudioMAE fine-tuning recipe, unchanged, on the EAT encoder
    ft = load_config(
        [REPO / "configs" / "demo_finetune.yaml"],
        [
            "model.name=audiomae_tiny_cls",
            f"checkpoint.init_from={tmp_path / 'whole'}",
            f"data.train_manifest={demo / 'train.json'}",
            f"data.eval_manifest={demo / 'eval.json'}",
            f"data.label_csv={demo / 'class_labels_indices.csv'}",
            "data.target_length=64",
            "train.batch_size=4",
            "schedule.max_steps=2",
            "schedule.warmup_epochs=0",
            "train.cpu=true",
            "logging.progress=false",
            "logging.tensorboard=false",
            "eval.every_n_epochs=0",
            f"output_dir={tmp_path / 'ft'}",
        ],
    )
    trainer = Trainer(ft)
    result = trainer.fit()
    assert result.steps == 2 and "acc" in result.eval
    clf, _ = load_pretrained(tmp_path / "ft")
    assert clf.blocks[0].attn.qkv.weight.shape == a.blocks[0].attn.qkv.weight.shape


@pytest.mark.slow
def test_the_plugin_runs_from_a_copy_outside_the_source_tree(tmp_path):
    """The package and an entry-point table in another folder, nothing else: tools/train.py finds
    it, pretrains with its own config eat/demo (found through its avmae.configs entry point), and the
    copy is what ran."""
    site = tmp_path / "site"
    shutil.copytree(PLUGIN, site / "avmae_eat", ignore=shutil.ignore_patterns("__pycache__"))
    dist = site / "avmae_eat_copy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: avmae-eat-copy\nVersion: 0.1\n")
    from conftest import _in_tree_plugin_entry_points

    (dist / "entry_points.txt").write_text(_in_tree_plugin_entry_points())
    demo = _demo(tmp_path)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), OMP_NUM_THREADS="1")
    code = textwrap.dedent("""
        import sys, runpy
        import avmae
        avmae.create_model("eat_tiny")  # loads the plugin through its entry point
        print("PLUGIN", sys.modules["avmae_eat"].__file__, flush=True)
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
        """)
    args = [
        "--config",
        "eat/demo",
        "--output-dir",
        str(out),
        "model.name=eat_tiny",
        f"data.train_manifest={demo / 'train.json'}",
        f"data.eval_manifest={demo / 'eval.json'}",
        f"data.label_csv={demo / 'class_labels_indices.csv'}",
        "data.target_length=64",
        "train.batch_size=4",
        "schedule.max_steps=3",
        "schedule.warmup_steps=1",
        "logging.progress=false",
        "logging.tensorboard=false",
        "eval.every_n_epochs=-1",
        "checkpoint.every_n_epochs=0",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "tools" / "train.py"), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = next(line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("PLUGIN "))
    assert Path(where).resolve().is_relative_to(site.resolve())
    assert (
        list_checkpoints(out)
        and json.loads((list_checkpoints(out)[-1] / "trainer_state.json").read_text())["step"] == 3
    )


def test_faithful_builds_the_released_encoder_and_pretrains_it(tmp_path):
    """``faithful=True``: the encoder is ``eat_base``'s (post-LN, pre-norm, no final norm, the
    768 x 8 table), its features equal eat_base's with the same weights, a step's loss is finite
    and falls over a few steps, and the saved file fine-tunes as eat_base_cls."""
    torch.manual_seed(0)
    model = avmae.create_model("eat_tiny", faithful=True)
    assert model.pre_norm is not None and isinstance(model.norm, torch.nn.Identity)
    assert type(model.blocks[0]).__name__ == "PostNormBlock"
    assert model.modalities["audio"].pos_embed.shape == (1, 768 * 8, 64)
    enc = avmae.create_model("eat_base", embed_dim=64, depth=2, num_heads=4, target_length=64)
    own = model.state_dict()
    enc.load_state_dict({k: own[k] for k in enc.state_dict()})
    x = torch.randn(4, 1, 64, 128)
    torch.testing.assert_close(model.forward_features({"audio": x}), enc.forward_features({"audio": x}))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        out = model({"audio": x})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    path = avmae.save_checkpoint(model, tmp_path / "eat.safetensors")
    clf = avmae.create_model("eat_base_cls", embed_dim=64, depth=2, num_heads=4, target_length=64, num_classes=3)
    report = avmae.load_checkpoint(clf, path)
    assert not report.missing and "head.weight" in report.reinitialized
    assert torch.equal(clf.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)

"""EAT / SSLAM released checkpoints: the fairseq pretraining and fine-tuned files and the HF-port
folder, written in their released layouts with random weights by the plain-math reference
(tests/reference/official_eat.py), load with no model name and match the reference to 1e-5 (features
at 1,024 frames and at a shorter length, the fine-tuned logits); the restricted unpickler reads the
pickled omegaconf / enum / Namespace configs and refuses code; the tools run on such files."""

import json
import os

import pytest
import torch
from reference.official_eat import (
    eat_classify,
    eat_forward,
    eat_positions,
    make_eat_state_dict,
    write_fairseq_finetune,
    write_fairseq_pretrain,
    write_hf_folder,
)

import avmae
from avmae import cli
from avmae.checkpoint import CheckpointError, load_checkpoint
from avmae.hub import frontend_for, load_pretrained
from avmae.models.eat import EAT_STATS

pytestmark = pytest.mark.usefixtures("one_thread")
HEADS = 4
DIM = 64


@pytest.fixture(scope="module")
def weights():
    return make_eat_state_dict(dim=DIM, depth=2, seed=0), make_eat_state_dict(dim=DIM, depth=2, num_classes=5, seed=1)


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    pre, ft = weights
    root = tmp_path_factory.mktemp("eat")
    return {
        "pretrain": write_fairseq_pretrain(pre, root / "EAT-base_epoch10_pt.pt", num_heads=HEADS),
        "finetune": write_fairseq_finetune(ft, root / "EAT-base_epoch10_ft_AS2M.pt", num_heads=HEADS),
        "finetune-mean-esc50": write_fairseq_finetune(
            ft, root / "esc50.pt", num_heads=HEADS, mode="MEAN_POOLING", esc50=True
        ),
        "hf": write_hf_folder(pre, root / "EAT-base_epoch30_pretrain", num_heads=HEADS),
        "hf-finetune": write_hf_folder(ft, root / "EAT-base_epoch30_finetune_AS2M", num_heads=HEADS),
        "hf-bin": write_hf_folder(pre, root / "EAT-large_epoch20_pretrain", num_heads=HEADS, torch_bin=True),
    }


@pytest.fixture(scope="module")
def fbank():
    return torch.randn(2, 1, 1024, 128, generator=torch.Generator().manual_seed(3))


def test_the_position_rule_is_the_released_table():
    """The table the preset builds (float64 formula) is the released float32-numpy one, sliced."""
    model = avmae.create_model("eat_base", embed_dim=DIM, depth=1, num_heads=HEADS)
    ours = model.modalities["audio"].pos_embed
    assert ours.shape == (1, 768 * 8, DIM) and not ours.requires_grad
    torch.testing.assert_close(ours, eat_positions(DIM), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.modalities["audio"].pos_embed_for(10), ours[:, :80])


@pytest.mark.parametrize("layout", ["pretrain", "hf", "hf-bin"])
@pytest.mark.parametrize("frames", [1024, 160])
def test_encoder_features_equal_the_reference(files, weights, fbank, layout, frames):
    model, report = load_pretrained(files[layout])
    assert report.model_name == "eat_base" and report.format == f"eat-{layout[:2] if layout != 'pretrain' else layout}"
    assert not report.missing
    assert report.model_params["num_heads"] == HEADS
    x = fbank[:, :, :frames]
    got = model.forward_features({"audio": x})
    ref = eat_forward(weights[0], x.double(), HEADS)
    assert got.shape == (2, 1 + frames // 16 * 8, DIM)  # every token, cls first
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)


def test_pretraining_file_reports_the_decoder_and_teacher_dropped_or_takes_the_teacher(files, weights, fbank):
    _, report = load_pretrained(files["pretrain"])
    ignored = set(report.ignored)
    assert any(k.startswith("modality_encoders.IMAGE.decoder.blocks.") for k in ignored)
    assert "_ema.blocks.0.attn.qkv.weight" in ignored and "_ema.blocks" in report.summary()
    teacher, trep = load_pretrained(files["pretrain"], teacher=True)
    assert not any(k.startswith("_ema.") for k in trep.ignored)
    ema = {k: v * 0.9 for k, v in weights[0].items() if "positions" not in k}  # what the writer stored
    ema["modality_encoders.IMAGE.fixed_positional_encoder.positions"] = weights[0][
        "modality_encoders.IMAGE.fixed_positional_encoder.positions"
    ]
    torch.testing.assert_close(
        teacher.forward_features({"audio": fbank}).double(), eat_forward(ema, fbank.double(), HEADS), atol=1e-5, rtol=0
    )
    with pytest.raises(CheckpointError, match="no EMA teacher"):
        load_pretrained(files["finetune"], teacher=True)


@pytest.mark.parametrize("layout", ["finetune", "hf-finetune"])
@pytest.mark.parametrize("frames", [1024, 160])
def test_fine_tuned_logits_equal_the_reference(files, weights, fbank, layout, frames):
    model, report = load_pretrained(files[layout])
    assert report.model_name == "eat_base_cls" and report.model_params["global_pool"] == "cls"
    assert model.fc_norm.eps == 1e-6 and model.head.out_features == 5
    x = fbank[:, :, :frames]
    with torch.no_grad():
        got = model({"audio": x})
    torch.testing.assert_close(got.double(), eat_classify(weights[1], x.double(), HEADS), atol=1e-5, rtol=0)


def test_mean_pooling_and_the_esc50_statistics_come_from_the_config(files, weights, fbank):
    model, report = load_pretrained(files["finetune-mean-esc50"])
    assert report.model_params["global_pool"] == "avg"
    with torch.no_grad():
        got = model({"audio": fbank})
    ref = eat_classify(weights[1], fbank.double(), HEADS, mode="MEAN_POOLING")
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)
    fe = frontend_for(model)  # the statistics travel with the model
    assert (fe.mean, fe.std, fe.target_length) == (*EAT_STATS["esc50"], 1024)
    fe = frontend_for(load_pretrained(files["pretrain"])[0])
    assert (fe.mean, fe.std) == EAT_STATS["audioset"]


def test_an_eat_file_initialises_a_classifier(files, weights):
    """load_checkpoint into a fresh eat_base_cls: the encoder from the file, a fresh head."""
    model = avmae.create_model("eat_base_cls", embed_dim=DIM, depth=2, num_heads=HEADS, num_classes=3)
    report = load_checkpoint(model, files["pretrain"])
    assert set(report.reinitialized) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert torch.equal(model.blocks[1].mlp.fc1.weight, weights[0]["blocks.1.mlp.fc1.weight"])


def test_longer_than_the_table_is_refused(files):
    model, _ = load_pretrained(files["pretrain"])
    with pytest.raises(ValueError, match="at most 12288"):
        model.forward_features({"audio": torch.zeros(1, 1, 12288 + 16, 128)})


def test_a_pickled_code_global_is_refused_and_nothing_runs(tmp_path, weights):
    """A fairseq-looking file whose config asks for os.system: one clear error, no side effect."""
    from omegaconf import OmegaConf

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"cfg": OmegaConf.create({"model": {"x": 1}}), "model": dict(weights[0]), "extra": Evil()}, path)
    for load in (lambda: load_pretrained(path), lambda: avmae.checkpoint.read_state_dict(path)):
        with pytest.raises(
            CheckpointError, match=r"evil\.pt: refusing to unpickle it: it asks to import (os|posix)\.system"
        ):
            load()
    assert not marker.exists()


def test_convert_writes_safetensors_and_a_folder_that_load_alone(files, fbank, tmp_path, capsys):
    ref_model, _ = load_pretrained(files["finetune-mean-esc50"])
    with torch.no_grad():
        ref = ref_model({"audio": fbank})
    out = tmp_path / "eat.safetensors"
    assert cli.main(["convert", str(files["finetune-mean-esc50"]), "--out", str(out)]) == 0
    folder = tmp_path / "eat-folder"
    assert cli.main(["convert", str(files["finetune-mean-esc50"]), "--out", str(folder), "--to", "pretrained"]) == 0
    capsys.readouterr()
    for path in (out, folder):
        model, report = load_pretrained(path)
        assert report.model_name == "eat_base_cls" and report.source == "metadata"
        with torch.no_grad():
            torch.testing.assert_close(model({"audio": fbank}), ref)
        assert frontend_for(model, report.config).mean == EAT_STATS["esc50"][0]
    assert json.loads((folder / "config.json").read_text())["frontend"]["std"] == EAT_STATS["esc50"][1]
    for to in ("timm", "official"):  # layouts that cannot hold EAT's blocks: refused, nothing written
        assert cli.main(["convert", str(files["pretrain"]), "--out", str(tmp_path / f"x-{to}.pth"), "--to", to]) == 2
        assert "EAT" in capsys.readouterr().err and not (tmp_path / f"x-{to}.pth").exists()
    teacher = tmp_path / "teacher.safetensors"
    assert cli.main(["convert", str(files["pretrain"]), "--out", str(teacher), "--teacher"]) == 0
    t_model, _ = load_pretrained(teacher)
    assert torch.allclose(t_model.cls_token, load_pretrained(files["pretrain"], teacher=True)[0].cls_token)


# ------------------------------------------------------------------------------ the tools on EAT files


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from test_finetune import write_clips

    root = tmp_path_factory.mktemp("clips")
    return write_clips(root, {"train": 4, "eval": 3}, seconds=0.64)


def test_extract_on_an_eat_file(files, clips, tmp_path, capsys):
    import numpy as np

    train, _, _ = clips
    out = tmp_path / "emb.npz"
    code = cli.main(["extract", str(train), "-c", str(files["pretrain"]), "-o", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    z = np.load(out)
    assert z["embedding"].shape == (8, DIM) and np.isfinite(z["embedding"]).all()
    meta = json.loads(str(z["meta"]))
    assert meta["mean"] == EAT_STATS["audioset"][0] and meta["short_clips"] == "padded to the window"
    # the first clip's embedding: its fbank padded with zeros to 1,024 frames, then normalised
    from avmae.data import load_audio, read_manifest

    model, _ = load_pretrained(files["pretrain"])
    wave = load_audio(read_manifest(train)[0]["wav"])
    fb = frontend_for(model)(wave)
    assert fb.shape == (1, 1024, 128)
    with torch.no_grad():
        ref = model.forward_features({"audio": fb[None]})[0, 1:].mean(0)
    np.testing.assert_allclose(z["embedding"][0], ref.numpy(), atol=1e-5)


def test_hear_wrapper_on_an_eat_folder(files):
    import avmae.hear as hear

    model = hear.load_model(str(files["hf"]))
    assert model.frontend.mean == EAT_STATS["audioset"][0] and model.scene_embedding_size == DIM
    audio = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    emb, stamps = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape[0] == 2 and emb.shape[-1] == DIM and torch.isfinite(emb).all()
    assert hear.get_scene_embeddings(audio, model).shape == (2, DIM)
    assert hear.load_model(str(files["hf-bin"])).frontend.mean == EAT_STATS["audioset"][0]  # pytorch_model.bin
    xares = hear.XaresEncoder(str(files["finetune-mean-esc50"]))
    assert xares.embedder.frontend.mean == EAT_STATS["esc50"][0] and xares.output_dim == DIM


def test_knn_evaluation_on_an_eat_file(files, clips, tmp_path, capsys):
    train, evals, labels = clips
    out = tmp_path / "knn.json"
    argv = ["evaluate", "-c", str(files["pretrain"]), "--task", "knn", "--data", str(evals)]
    argv += ["--train-data", str(train), "--label-csv", str(labels), "--num-workers", "0", "--cpu", "-o", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    got = json.loads(out.read_text())
    assert got["num_train"] == 8 and got["metrics"]["num_items"] == 6 and 0.0 <= got["metrics"]["acc"] <= 1.0


def test_finetune_init_from_an_eat_file(files, clips, tmp_path, capsys):
    train, evals, labels = clips
    argv = ["finetune", str(train), "--eval", str(evals), "--label-csv", str(labels), "--init", str(files["pretrain"])]
    argv += ["-o", str(tmp_path / "run"), "schedule.max_steps=2", "data.num_workers=0", "logging.progress=false"]
    argv += ["logging.tensorboard=false"]
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "model: eat_base_cls, initialised from" in out and "mean -4.268, std 4.569" in out
    assert "held-out accuracy:" in out


def test_the_legacy_torch_format_reads_the_same(files, tmp_path):
    """A fairseq file in torch's pre-zip serialisation goes through the same restricted unpickler."""
    obj = torch.load(files["pretrain"], weights_only=False)  # trusted: written by this test's reference
    legacy = tmp_path / "legacy.pt"
    torch.save(obj, legacy, _use_new_zipfile_serialization=False)
    sd, meta = avmae.checkpoint.read_state_dict(legacy)
    assert json.loads(meta["fairseq_cfg"])["model"]["num_heads"] == HEADS and "_ema.blocks.0.norm1.weight" in sd
    ref, _ = avmae.checkpoint.read_state_dict(files["pretrain"])
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)

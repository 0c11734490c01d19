"""BEATs: released-layout files (random weights, built by the plain-math reference) load with no
model name and compute what their code computes, to 1e-5."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import avmae
from avmae.checkpoint import CheckpointError, load_checkpoint, read_state_dict
from avmae.data import AudioFrontend, save_audio
from avmae.hub import describe_checkpoint, frontend_for, load_pretrained
from avmae.models.beats import relative_position_buckets, token_padding_mask
from avmae.models.beats_format import beats_spec, map_beats
from tests.reference.official_beats import (
    RELEASED_CFG,
    TINY_CFG,
    buckets,
    make_beats_state_dict,
    official_beats_forward,
    official_preprocess,
    official_token_mask,
    save_beats_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = 5


def _samples(frames: int) -> int:
    return 400 + (frames - 1) * 160  # a clip of exactly ``frames`` Kaldi frames


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("beats")
    pre, ft = make_beats_state_dict(TINY_CFG, seed=1), make_beats_state_dict(TINY_CFG, num_classes=CLASSES, seed=2)
    save_beats_checkpoint(pre, TINY_CFG, root / "BEATs_tiny.pt")
    save_beats_checkpoint(ft, TINY_CFG, root / "BEATs_tiny_ft.pt", num_classes=CLASSES)
    return {"pre": (root / "BEATs_tiny.pt", pre), "ft": (root / "BEATs_tiny_ft.pt", ft)}


def _double(sd):
    return {k: v.double() for k, v in sd.items()}


def test_buckets_follow_their_formula():
    ours = relative_position_buckets(120, num_buckets=64, max_distance=60)  # the far clamp is reached
    assert torch.equal(ours, buckets(120, 64, 60))
    assert torch.equal(relative_position_buckets(40), buckets(40, 320, 800))


def test_frontend_is_their_preprocess():
    g = torch.Generator().manual_seed(0)
    wav = torch.rand(2, _samples(300), generator=g) * 1.6 - 0.8
    fe = AudioFrontend(style="beats", mean=15.41663, std=6.55582, target_length=None)
    ours = torch.stack([fe(w[None])[0] for w in wav])
    assert torch.equal(ours, official_preprocess(wav))


def test_file_is_plain_and_described_from_its_cfg(files):
    path, sd = files["ft"]
    raw = torch.load(path, weights_only=True)  # plain values only: no allow-list needed
    assert set(raw) == {"cfg", "model", "label_dict"}
    info = describe_checkpoint(path)
    assert (info.model_name, info.format, info.source) == ("beats_base_cls", "beats-finetune", "detected")
    p = info.model_params
    assert (p["depth"], p["embed_dim"], p["num_heads"], p["mlp_dim"], p["num_classes"]) == (2, 64, 4, 96, CLASSES)
    assert (p["max_distance"], p["deep_norm"], p["pre_norm"], p["patch_dim"]) == (800, True, False, 48)
    assert info.config["data"]["fbank_style"] == "beats"


@pytest.mark.parametrize("frames", [1024, 298])
def test_features_match_reference(files, frames):
    path, sd = files["pre"]
    model, report = load_pretrained(path)
    assert report.format == "beats-pretrain" and not report.missing and not report.unexpected
    assert report.ignored == ["encoder.layers.1.self_attn.relative_attention_bias.weight"]  # the shared table again
    wav = torch.rand(1, _samples(frames), generator=torch.Generator().manual_seed(frames)) * 1.6 - 0.8
    fe = frontend_for(model)
    assert (fe.style, fe.target_length, fe.mean, fe.std) == ("beats", None, 15.41663, 6.55582)
    fbank = fe(wav)  # [1, T, 128]
    with torch.no_grad():
        ours = model.forward_features({"audio": fbank[None]})
    ref = official_beats_forward(_double(sd), TINY_CFG, official_preprocess(wav).double())
    assert ours.shape == ref.shape == (1, frames // 16 * 8, 64)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=0)


def test_finetuned_logits_match_reference_with_padding(files):
    path, sd = files["ft"]
    model, report = load_pretrained(path)
    assert report.format == "beats-finetune" and model.num_classes == CLASSES
    n = _samples(1024)
    g = torch.Generator().manual_seed(3)
    wav = torch.rand(2, n, generator=g) * 1.6 - 0.8
    wav[1, n // 2 :] = 0.0
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[1, n // 2 :] = True  # the second clip is half padding, as in their batched extract_features
    fbank = official_preprocess(wav)
    frames, tokens = official_token_mask(pad, fbank.shape[1], 512)
    assert torch.equal(token_padding_mask(frames, 512), tokens)
    with torch.no_grad():
        ours = torch.sigmoid(model({"audio": fbank[:, None], "padding_mask": frames}))
        unpadded = torch.sigmoid(model({"audio": fbank[:1, None]}))
    ref = official_beats_forward(_double(sd), TINY_CFG, fbank.double(), token_pad=tokens)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(unpadded[0], ours[0], atol=1e-6, rtol=0)


def test_cfg_is_checked_against_the_weights(files, tmp_path):
    _, sd = files["pre"]
    bad = tmp_path / "bad.pt"
    save_beats_checkpoint(sd, {**TINY_CFG, "encoder_layers": 3, "conv_pos": 32}, bad)
    with pytest.raises(CheckpointError, match=r"encoder_layers=3 \(the weights say 2\).*conv_pos=32"):
        load_pretrained(bad)
    lacking = tmp_path / "no_cfg.pt"
    torch.save({"model": sd}, lacking)
    with pytest.raises(CheckpointError, match="does not say which model"):
        load_pretrained(lacking)
    model, _ = load_pretrained(lacking, model_name="beats_tiny")  # named, its defaults are the released ones
    assert model.depth == 2


def test_pretrained_file_into_a_classifier_and_back(files):
    path, _ = files["pre"]
    cls = avmae.create_model("beats_tiny_cls", num_classes=3)
    report = load_checkpoint(cls, path)
    assert report.reinitialized == ["head.bias", "head.weight"]
    enc = avmae.create_model("beats_tiny")
    report = load_checkpoint(enc, files["ft"][0])
    assert {"predictor.weight", "predictor.bias"} <= set(report.ignored)


def test_released_base_shapes_build_beats_base():
    """The real base config's shape logic, on empty tensors: described, built, every key mapped."""
    cfg = {**RELEASED_CFG, "finetuned_model": True, "predictor_class": 527}
    with torch.device("meta"):
        sd = make_beats_state_dict(RELEASED_CFG, num_classes=527)
        name, params, _ = beats_spec(sd, {"fairseq_cfg": json.dumps(cfg)})
        model = avmae.create_model(name, **params)
    assert name == "beats_base_cls" and params["depth"] == 12 and params["num_classes"] == 527
    mapped = map_beats(sd, model).state_dict
    own = model.state_dict()
    assert set(mapped) == set(own)
    assert all(mapped[k].shape == own[k].shape for k in own)
    assert sum(v.numel() for v in own.values()) == pytest.approx(90.3e6, rel=0.01)


def test_extract_cli_on_a_beats_file(files, tmp_path):
    path, sd = files["pre"]
    frames = 160  # whole patches: the tool's numbers are their extract_features' token mean
    g = torch.Generator().manual_seed(5)
    wav = (torch.rand(1, _samples(frames), generator=g) * 1.2 - 0.6).clamp(-1, 1)
    save_audio(tmp_path / "media" / "clip.wav", wav, 16000)
    out = tmp_path / "emb.npz"
    cmd = [sys.executable, "-m", "avmae", "extract", str(tmp_path / "media"), "--checkpoint", str(path)]
    done = subprocess.run(cmd + ["--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    z = np.load(out)
    meta = json.loads(str(z["meta"]))
    assert (meta["mean"], meta["std"], meta["fbank_style"]) == (15.41663, 6.55582, "beats")
    read, _ = read_state_dict(path)
    assert read.keys() == sd.keys()
    from avmae.data import load_audio

    ref = official_beats_forward(
        _double(sd), TINY_CFG, official_preprocess(load_audio(tmp_path / "media" / "clip.wav")).double()
    )
    np.testing.assert_allclose(z["embedding"][0], ref.mean(1)[0].numpy(), atol=1e-5)


def test_hear_wrapper_on_a_beats_file(files):
    from avmae.hear import load_embedder

    path, sd = files["pre"]
    embedder = load_embedder(str(path))
    assert embedder.frontend.style == "beats" and embedder.frontend.mean == 15.41663
    wav = torch.rand(1, _samples(160), generator=torch.Generator().manual_seed(7)) * 1.6 - 0.8
    with torch.no_grad():
        rows, stamps = embedder.timestamp_embeddings(wav)
    ref = official_beats_forward(_double(sd), TINY_CFG, official_preprocess(wav).double())  # [1, 80, 64]
    assert rows.shape == (1, 10, 64) and stamps.shape == (1, 10)
    torch.testing.assert_close(rows[0].double(), ref[0].reshape(10, 8, 64).mean(1), atol=1e-5, rtol=0)


def test_finetune_init_from_a_beats_file(files, tmp_path, capsys):
    """``avmae finetune --init BEATs.pt``: BEATs' classifier, its fbank and statistics, trained."""
    from avmae import cli
    from avmae.train.own_data import plan_finetune

    path, _ = files["pre"]
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("test", 4)):
        for c, hz in enumerate((300.0, 2000.0)):
            for k in range(count):
                t = torch.arange(int(16000 * (0.5 + 0.3 * float(torch.rand(1, generator=g))))) / 16000
                save_audio(tmp_path / split / f"c{c}" / f"{k}.wav", 0.4 * torch.sin(2 * torch.pi * hz * t)[None], 16000)
    plan = plan_finetune(tmp_path / "train", tmp_path / "test", init=path, output_dir=tmp_path / "plan")
    cfg = plan.config
    assert cfg.model.name == "beats_base_cls" and cfg.model.params["depth"] == 2
    assert (cfg.data.fbank_style, cfg.data.mean, cfg.data.std) == ("beats", 15.41663, 6.55582)
    args = ["finetune", str(tmp_path / "train"), "--eval", str(tmp_path / "test"), "--init", str(path)]
    args += ["-o", str(tmp_path / "run"), "schedule.epochs=1", "schedule.warmup_epochs=0.1", "data.num_workers=0"]
    code = cli.main(args + ["logging.progress=false", "logging.tensorboard=false"])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "fbank: beats's" in captured.out
    model, report = load_pretrained(tmp_path / "run")
    assert report.model_name == "beats_base_cls" and model.num_classes == 2
    assert frontend_for(model, report.config).style == "beats"
    # the released file's encoder, probed by kNN on the same clips
    data = tmp_path / "plan" / "data"
    args = ["evaluate", "--checkpoint", str(path), "--task", "knn", "--data", str(data / "eval.json")]
    args += ["--train-data", str(data / "train.json"), "--label-csv", str(data / "labels.csv")]
    args += ["--output", str(tmp_path / "knn.json"), "--num-workers", "0", "--cpu"]
    assert cli.main(args) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "knn.json").read_text())
    assert result["embedding"]["fbank_style"] == "beats" and result["embedding"]["mean"] == 15.41663
    assert result["metrics"]["num_items"] == 8 and 0.0 <= result["metrics"]["acc"] <= 1.0

"""BEATs beyond single clips (tests/test_beats_checkpoints.py has those): their padded batches,
the file's cfg checked against its weights, the fine-tuned file's ``label_dict``, the classifier
through the HEAR wrapper, and ``avmae finetune --init`` on a BEATs file."""

import json

import pytest
import torch
from reference.official_beats import (
    beats_forward,
    beats_logits,
    beats_preprocess,
    forward_padding_mask,
    make_beats_state_dict,
    write_beats_checkpoint,
)

from avmae import cli
from avmae.checkpoint import CheckpointError
from avmae.data import save_audio, write_label_csv, write_manifest
from avmae.hub import describe_checkpoint, frontend_for, load_pretrained
from avmae.models.beats import token_padding_mask

pytestmark = pytest.mark.usefixtures("one_thread")
HEADS, CONV, GROUPS, CLASSES = 4, 16, 4, 5
KW = dict(heads=HEADS, conv_pos=CONV, conv_groups=GROUPS)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("beats")
    pre, ft = make_beats_state_dict(seed=3), make_beats_state_dict(num_classes=CLASSES, seed=4)
    return {
        "pretrain": (write_beats_checkpoint(pre, root / "BEATs_iter3.pt", **KW), pre),
        "finetune": (write_beats_checkpoint(ft, root / "BEATs_iter3_plus_AS2M.pt", **KW), ft),
    }


def _padded_batch(frames: int):
    """Two clips of ``frames`` frames, the second half padding, as their batched call takes them:
    (fbank [2, T, 128], frame mask [2, T], token mask [2, L]) by their sample -> frame -> token rule."""
    n = 400 + (frames - 1) * 160
    wav = torch.randn(2, n, generator=torch.Generator().manual_seed(frames)) * 0.1
    wav[1, n // 2 :] = 0.0
    samples = torch.zeros(2, n, dtype=torch.bool)
    samples[1, n // 2 :] = True
    fbank = beats_preprocess(wav)
    frame_mask = forward_padding_mask(samples, fbank.shape[1])
    return fbank, frame_mask, forward_padding_mask(frame_mask, frames // 16 * 8)


@pytest.mark.parametrize("frames", [1024, 298])
def test_padded_batches_equal_the_reference(files, frames):
    fbank, frame_mask, token_mask = _padded_batch(frames)
    assert token_mask[1].any() and not token_mask[0].any()
    assert torch.equal(token_padding_mask(frame_mask, token_mask.shape[1]), token_mask)
    inputs = {"audio": fbank[:, None], "padding_mask": frame_mask}
    (pre_path, pre), (ft_path, ft) = files["pretrain"], files["finetune"]
    encoder, _ = load_pretrained(pre_path)
    classifier, _ = load_pretrained(ft_path)
    with torch.no_grad():
        tokens, logits = encoder.forward_features(inputs), classifier(inputs)
    ref = beats_forward({k: v.double() for k, v in pre.items()}, fbank.double(), heads=HEADS, token_pad=token_mask)
    torch.testing.assert_close(tokens.double(), ref, atol=1e-5, rtol=0)
    ref_logits = beats_logits({k: v.double() for k, v in ft.items()}, fbank.double(), heads=HEADS, token_pad=token_mask)
    torch.testing.assert_close(logits.double(), ref_logits, atol=1e-5, rtol=0)


def test_the_cfg_is_checked_against_the_weights(files, tmp_path):
    raw = torch.load(files["pretrain"][0], weights_only=True)  # plain values: weights_only reads it as is
    raw["cfg"].update(encoder_layers=3, conv_pos=32)
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(
        CheckpointError, match=r"encoder_layers=3 \(the weights say 2\).*conv_pos=32 \(the weights say 16\)"
    ):
        load_pretrained(tmp_path / "bad.pt")


def test_label_dict_is_kept_and_orders_the_evaluation(files, tmp_path, capsys):
    path, _ = files["finetune"]
    mids = [f"/m/{i:04d}" for i in range(CLASSES)]
    info = describe_checkpoint(path)
    assert info.config["labels"] == mids  # their label_dict: {class index: label}
    model, report = load_pretrained(path)
    assert model.avmae_config["labels"] == mids and report.config["labels"] == mids
    g = torch.Generator().manual_seed(0)
    items = []
    for k in range(6):
        save_audio(tmp_path / f"{k}.wav", torch.randn(1, 8000, generator=g) * 0.1, 16000)
        items.append({"wav": str(tmp_path / f"{k}.wav"), "labels": mids[k % CLASSES]})
    write_manifest(tmp_path / "eval.json", items)
    results = {}
    for name, order in (("same", mids), ("shuffled", mids[::-1])):
        write_label_csv(tmp_path / f"{name}.csv", [(m, f"class {m}") for m in order])
        out = tmp_path / f"{name}.json"
        args = ["evaluate", "--checkpoint", str(path), "--data", str(tmp_path / "eval.json"), "--cpu"]
        args += ["--label-csv", str(tmp_path / f"{name}.csv"), "--output", str(out), "--num-workers", "0"]
        assert cli.main(args) == 0, capsys.readouterr().err
        results[name] = json.loads(out.read_text())["metrics"]
    assert results["same"] == results["shuffled"]  # the model's classes matched to the CSV's by id
    write_label_csv(tmp_path / "other.csv", [(m, m) for m in mids + ["/m/extra"]])  # a class the model lacks
    args = ["evaluate", "--checkpoint", str(path), "--data", str(tmp_path / "eval.json"), "--cpu"]
    args += ["--label-csv", str(tmp_path / "other.csv"), "--num-workers", "0"]
    assert cli.main(args) != 0
    assert "['/m/extra'] are not among the 5 the model names" in capsys.readouterr().err


def test_hear_wrapper_on_a_finetuned_file(files):
    from avmae.hear import load_embedder

    path, sd = files["finetune"]
    embedder = load_embedder(str(path))
    assert embedder.frontend.style == "beats"
    wav = torch.randn(1, 400 + 159 * 160, generator=torch.Generator().manual_seed(7)) * 0.1  # 160 frames
    with torch.no_grad():
        rows, _ = embedder.timestamp_embeddings(wav)
    ref = beats_forward({k: v.double() for k, v in sd.items()}, beats_preprocess(wav).double(), heads=HEADS)
    assert rows.shape == (1, 10, 64)
    torch.testing.assert_close(rows[0].double(), ref[0].reshape(10, 8, 64).mean(1), atol=1e-5, rtol=0)


def test_finetune_init_from_a_beats_file(files, tmp_path, capsys):
    """``avmae finetune --init BEATs.pt``: BEATs' classifier, its fbank and statistics, trained."""
    from avmae.train.own_data import plan_finetune

    path, _ = files["pretrain"]
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
    assert model.mask_t_prob == 0.0 and frontend_for(model, report.config).style == "beats"  # the plan: no masking


def test_extract_drops_a_short_clips_partial_patch_as_beats_does(files):
    from avmae.extract import EmbeddingExtractor

    path, sd = files["pretrain"]
    model, _ = load_pretrained(path)
    extractor = EmbeddingExtractor(model, frontend_for(model))
    wav = torch.randn(1, 400 + 169 * 160, generator=torch.Generator().manual_seed(9)) * 0.1  # 170 frames
    x, frames = extractor.windows(wav)
    assert x.shape[2] == 160 and extractor.settings()["short_clips"] == "own length (cut to whole patches)"
    emb = extractor(wav)["embedding"]
    ref = beats_forward({k: v.double() for k, v in sd.items()}, beats_preprocess(wav).double(), heads=HEADS)
    torch.testing.assert_close(torch.as_tensor(emb).double(), ref[0].mean(0), atol=1e-5, rtol=0)


def test_what_the_weights_cannot_tell_follows_their_config_defaults(files, tmp_path):
    raw = torch.load(files["pretrain"][0], weights_only=True)
    del raw["cfg"]["deep_norm"], raw["cfg"]["max_distance"]  # BEATsConfig's defaults: False, 1280
    torch.save(raw, tmp_path / "partial.pt")
    p = describe_checkpoint(tmp_path / "partial.pt").model_params
    assert (p["deep_norm"], p["max_distance"]) == (False, 1280)
    torch.save({"model": raw["model"]}, tmp_path / "bare.pt")  # no cfg at all: the released configuration
    p = describe_checkpoint(tmp_path / "bare.pt").model_params
    assert (p["deep_norm"], p["max_distance"], p["num_heads"]) == (True, 800, HEADS)

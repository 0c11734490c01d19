"""Audio-visual fine-tuning and evaluation: the CAV-MAE classifier's three modes trained by the
trainer, multi-frame evaluation (views of each clip's video, class probabilities averaged as
CAV-MAE's 10-frame evaluation does) from the config and from tools/evaluate.py."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_av_config
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

import avmae
from avmae.config import ConfigError, load_config
from avmae.data import AudioFrontend, save_audio
from avmae.data.av_dataset import AVDataset
from avmae.data.av_demo import write_av_clip
from avmae.data.video import extract_frame_folder, load_frames
from avmae.hub import load_pretrained
from avmae.train import DATASETS, Trainer, list_checkpoints
from avmae.train.finetune import classification_loss, collect_predictions, ensemble_logits, predict_views

SR = 16000
FRONTEND = AudioFrontend(target_length=64)  # cav_mae_tiny: 64 x 128 spectrograms, 64 x 64 frames
CLASSES = [("/m/a", "Alpha"), ("/m/b", "Beta"), ("/m/c", "Gamma")]


pytestmark = pytest.mark.usefixtures("one_thread")


class Local:
    """The two accelerate calls the evaluation makes, for one process."""

    unwrap_model = staticmethod(lambda m, **kw: m)
    gather_for_metrics = staticmethod(lambda x: x)


def clip(path, k, n=20, size=64):
    """A 2 s video whose frame i is grey (8 * k + 10 * i) over a tone at 300 + 100 k Hz."""
    frames = torch.stack([torch.full((size, size, 3), 8 * k + 10 * i, dtype=torch.uint8) for i in range(n)])
    t = torch.arange(int(SR * n / 10)) / SR
    return write_av_clip(path, frames, 0.3 * torch.sin(2 * math.pi * (300 + 100 * k) * t), fps=10, sample_rate=SR)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """4 clips as CAV-MAE frame folders (10 frames each) with their sound; manifest, label CSV, mp4s."""
    root = tmp_path_factory.mktemp("frames")
    items = []
    for k, lab in enumerate(["/m/a", "/m/b", "/m/c", "/m/a,/m/c"]):
        mp4 = clip(root / f"v{k}.mp4", k)
        extract_frame_folder(mp4, root / "frames", f"v{k}", num_frames=10, size=64)
        save_audio(root / f"v{k}.flac", 0.2 * torch.randn(1, SR, generator=torch.Generator().manual_seed(k)), SR)
        items.append({"video_id": f"v{k}", "video_path": "frames", "wav": f"v{k}.flac", "labels": lab})
    (root / "eval.json").write_text(json.dumps({"data": items}))
    csv = root / "labels.csv"
    csv.write_text("index,mid,display_name\n" + "".join(f"{i},{m},{n}\n" for i, (m, n) in enumerate(CLASSES)))
    return root / "eval.json", csv, [root / f"v{k}.mp4" for k in range(4)]


# ------------------------------------------------------------------------------ the pieces
def test_ensemble_logits_average_the_probabilities():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, 7, generator=g) * 4
    x[0, 0, 0], x[1, 0, 1] = 120.0, -120.0  # saturated logits stay finite
    single, multi = ensemble_logits(x, multilabel=False), ensemble_logits(x, multilabel=True)
    assert single.shape == multi.shape == (4, 7) and torch.isfinite(single).all() and torch.isfinite(multi).all()
    torch.testing.assert_close(single.exp(), x.softmax(-1).mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.sigmoid(multi), torch.sigmoid(x).mean(0), rtol=1e-5, atol=1e-7)
    # losses on the ensemble logits score the averaged probabilities
    target = F.one_hot(torch.tensor([0, 3, 6, 2]), 7).float()
    p = x.softmax(-1).mean(0)
    assert classification_loss(single, target, "ce").item() == pytest.approx(
        -(target * p.log()).sum(1).mean().item(), rel=1e-5
    )
    q = torch.sigmoid(x).mean(0).double()
    bce = -(target * q.log() + (1 - target) * (1 - q).log()).mean()
    assert classification_loss(multi, target, "bce").item() == pytest.approx(bce.item(), rel=1e-5)
    # one view: the logits' own probabilities
    torch.testing.assert_close(ensemble_logits(x[:1], multilabel=True), x[0])
    torch.testing.assert_close(ensemble_logits(x[:1], multilabel=False).softmax(-1), x[0].softmax(-1))
    with pytest.raises(ValueError, match=r"\[V, B, C\]"):
        ensemble_logits(x[0], multilabel=False)


def test_views_of_a_frame_folder_are_cav_mae_frames(folders):
    manifest, csv, _ = folders
    views = AVDataset(manifest, csv, frontend=FRONTEND, image_size=64, eval_views=10)
    assert views.input_views == {"video": 10}
    item = views[2]
    assert item["video"].shape == (10, 1, 3, 64, 64)
    for k in (0, 3, 5, 9):  # view k is the frame CAV-MAE's evaluation reads with frame_use=k
        single = AVDataset(manifest, csv, frontend=FRONTEND, image_size=64, frame_index=k)[2]
        torch.testing.assert_close(item["video"][k], single["video"])
        torch.testing.assert_close(item["audio"], single["audio"])
    assert not torch.equal(item["video"][0], item["video"][9])
    # training items keep one view; views and a fixed frame exclude each other; the folders hold 10
    assert AVDataset(manifest, csv, frontend=FRONTEND, image_size=64, eval_views=10, train=True).input_views == {}
    with pytest.raises(ValueError, match="frame_index"):
        AVDataset(manifest, csv, frontend=FRONTEND, eval_views=2, frame_index=5)
    with pytest.raises(ValueError, match="num_total_frames=10"):
        AVDataset(manifest, csv, frontend=FRONTEND, num_frames=4, eval_views=3)
    with pytest.raises(ValueError, match="eval_views"):
        AVDataset(manifest, csv, frontend=FRONTEND, eval_views=0)


def test_views_of_a_video_file_interleave_across_the_clip(folders):
    _, csv, mp4s = folders
    items = [{"video": str(p), "labels": "/m/a"} for p in mp4s[:2]]
    ds = AVDataset(items, csv, frontend=FRONTEND, image_size=64, num_frames=2, eval_views=3)
    video = ds[1]["video"]
    assert video.shape == (3, 2, 3, 64, 64)
    frames = load_frames(mp4s[1], 6, size=64)  # the 6 segment centres; view k takes k and k + 3
    for k in range(3):
        torch.testing.assert_close(video[k], frames[[k, k + 3]])


@pytest.mark.parametrize("multilabel", [False, True])
def test_multi_frame_evaluation_averages_the_per_frame_predictions(folders, multilabel):
    """collect_predictions on 10 views = CAV-MAE's procedure written out: the eval set read 10
    times with frame k, sigmoid / softmax of each pass, averaged."""
    manifest, csv, _ = folders
    model = avmae.create_model("cav_mae_tiny_ft", num_classes=3).eval()
    ds = AVDataset(manifest, csv, frontend=FRONTEND, image_size=64, eval_views=10, multilabel=multilabel)
    logits, labels = collect_predictions(model, DataLoader(ds, batch_size=3), Local())
    assert logits.shape == labels.shape == (4, 3)

    probs = []
    with torch.no_grad():
        for k in range(10):
            one = AVDataset(manifest, csv, frontend=FRONTEND, image_size=64, frame_index=k, multilabel=multilabel)
            batch = next(iter(DataLoader(one, batch_size=4)))
            out = model({"audio": batch["audio"], "video": batch["video"]})
            probs.append(torch.sigmoid(out) if multilabel else out.softmax(-1))
    by_hand = torch.stack(probs).mean(0)
    got = torch.sigmoid(logits) if multilabel else logits.softmax(-1)
    torch.testing.assert_close(got, by_hand, rtol=1e-4, atol=1e-6)
    # the views differ: the average is not the middle frame's prediction alone
    assert not torch.allclose(got, probs[5], atol=1e-4)


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_finetune_evaluation_averages_views_as_its_loss_reads_the_logits(loss):
    """Single-label data trained with BCE (AST's Speech Commands recipe): the views' sigmoids are
    averaged, so the eval loss is the BCE of the averaged probabilities; with CE, the softmaxes."""
    from avmae.train.finetune import FinetuneTask

    class Views(torch.utils.data.Dataset):
        input_views = {"video": 3}

    class PerView(torch.nn.Module):
        modalities = {"video": None}

        def forward(self, inputs):
            return inputs["video"]  # [B, C]: the view's logits

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, generator=g) * 3  # [B, V, C]
    target = F.one_hot(torch.tensor([0, 4, 2, 2]), 5).float()
    loader = [{"video": x, "label": target}]
    loader = type("Loader", (list,), {"dataset": Views()})(loader)
    task = FinetuneTask(load_config([], ["task=finetune", f"train.loss={loss}"]))
    task.loss, task.multilabel = loss, False
    got = task.evaluate(PerView(), loader, type("Main", (Local,), {"is_main_process": True})())
    if loss == "bce":
        q = torch.sigmoid(x).mean(1).double()
        expected = -(target * q.log() + (1 - target) * (1 - q).log()).mean()
    else:
        p = x.softmax(-1).mean(1).double()
        expected = -(target * p.log()).sum(1).mean()
    assert got["loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_predict_views_checks_the_layout():
    model = avmae.create_model("cav_mae_tiny_ft", num_classes=3).eval()
    inputs = {"audio": torch.randn(2, 1, 64, 128), "video": torch.randn(2, 1, 3, 64, 64)}
    with pytest.raises(ValueError, match="3 views on dim 1"):
        predict_views(model, inputs, {"video": 3}, multilabel=False)
    with pytest.raises(KeyError, match="'pictures'"):
        predict_views(model, inputs, {"pictures": 2}, multilabel=False)


# ------------------------------------------------------------------------------ the trainer
@pytest.fixture(scope="module")
def demo(tiny_av_demo):
    return tiny_av_demo


def av_config(demo, out, *extra):
    return tiny_av_config(
        demo, out, "finetune", "cav_mae_tiny_ft", "schedule.max_steps=2", "eval.video_views=2", *extra
    )


def _branch(sd, modality):
    return sd[f"modalities.{modality}.patch_embed.proj.weight"]


@pytest.mark.parametrize("mode", ["multimodal", "audioonly", "videoonly"])
def test_fine_tuning_modes_end_to_end(demo, tmp_path, mode):
    """Each mode trains through the trainer (only its branches change) and its evaluation scores
    the two views' averaged probabilities."""
    start = avmae.create_model("cav_mae_tiny_ft", num_classes=6)
    init = {k: v.contiguous() for k, v in start.state_dict().items()}
    save_file(init, str(tmp_path / "init.safetensors"))
    cfg = av_config(
        demo, tmp_path / "run", f"model.params.mode={mode}", f"checkpoint.init_from={tmp_path / 'init.safetensors'}"
    )
    result = Trainer(cfg).fit()
    assert result.steps == 2 and math.isfinite(result.last_loss)
    assert {"loss", "acc", "acc5"} <= set(result.eval)

    trained = load_file(str(list_checkpoints(tmp_path / "run")[-1] / "model.safetensors"))
    moved = {m: not torch.equal(_branch(trained, m), _branch(init, m)) for m in ("audio", "video")}
    assert (
        moved
        == {
            "multimodal": {"audio": True, "video": True},
            "audioonly": {"audio": True, "video": False},
            "videoonly": {"audio": False, "video": True},
        }[mode]
    )

    # the run's eval loss is that of the two views' averaged softmax, computed here by hand
    model = avmae.create_model("cav_mae_tiny_ft", num_classes=6, mode=mode).eval()
    model.load_state_dict(trained)
    evals = DATASETS.get("av")(cfg, "eval")
    assert evals.input_views == {"video": 2}
    batch = next(iter(DataLoader(evals, batch_size=len(evals))))
    with torch.no_grad():
        p = torch.stack(
            [model({"audio": batch["audio"], "video": batch["video"][:, k]}).softmax(-1) for k in range(2)]
        ).mean(0)
    assert result.eval["loss"] == pytest.approx(-(batch["label"] * p.log()).sum(1).mean().item(), rel=1e-4)
    assert result.eval["acc"] == pytest.approx((p.argmax(1) == batch["label"].argmax(1)).float().mean().item())


def test_video_views_config_checks(demo, tmp_path):
    with pytest.raises(ConfigError, match="eval.video_views"):
        av_config(demo, tmp_path, "eval.video_views=0")
    with pytest.raises(ConfigError, match="eval.video_views.*'av'"):
        load_config([], ["eval.video_views=2"])
    with pytest.raises(ConfigError, match="eval.video_views.*pretrain"):
        av_config(demo, tmp_path, "task=pretrain", "model.name=avmae_tiny")
    with pytest.raises(ConfigError, match="mask_t_prob"):  # CAV-MAE fine-tunes without structured masking
        Trainer(av_config(demo, tmp_path / "m", "masking.mask_t_prob=0.2")).fit()


def test_evaluate_tool_video_views(demo, tmp_path, load_tool):
    cfg = av_config(demo, tmp_path / "run", "schedule.max_steps=1")
    Trainer(cfg).fit()
    evaluate = load_tool("evaluate")
    out, saved = tmp_path / "e.json", tmp_path / "logits.pt"
    args = ["-c", str(tmp_path / "run"), "--num-workers", "0", "--cpu", "-o", str(out), "--save-logits", str(saved)]
    assert evaluate.main(args + ["--video-views", "3"]) == 0
    got = json.loads(out.read_text())
    assert got["video_views"] == 3 and got["metrics"]["num_items"] == 6
    logits = torch.load(saved)["logits"]

    # by hand: the same checkpoint, 3 views of each clip one at a time, softmax averaged
    model, report = load_pretrained(tmp_path / "run")
    ds = evaluate.build_dataset(
        model,
        report.config,
        Path(cfg.data.eval_manifest),
        Path(cfg.data.label_csv),
        evaluate.build_parser().parse_args(["-c", "x", "--task", "classify", "--video-views", "3"]),
    )
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert batch["video"].shape[1:3] == (3, 1)
    with torch.no_grad():
        p = torch.stack(
            [model({"audio": batch["audio"], "video": batch["video"][:, k]}).softmax(-1) for k in range(3)]
        ).mean(0)
    torch.testing.assert_close(logits.softmax(-1), p, rtol=1e-4, atol=1e-6)

    # without the flag: the run's eval.video_views (2)
    assert evaluate.main(args) == 0
    assert json.loads(out.read_text())["video_views"] == 2
    with pytest.raises(SystemExit, match="retrieval"):
        evaluate.main(args + ["--task", "retrieval", "--video-views", "2"])


def test_evaluate_tool_averages_sigmoids_for_a_bce_run(demo, tmp_path, load_tool):
    """Single-label data, but a run trained with train.loss=bce: the tool averages the views'
    sigmoids, as the run's own evaluation does."""
    cfg = av_config(demo, tmp_path / "run", "schedule.max_steps=1", "train.loss=bce")
    Trainer(cfg).fit()
    evaluate = load_tool("evaluate")
    saved = tmp_path / "logits.pt"
    assert (
        evaluate.main(
            [
                "-c",
                str(tmp_path / "run"),
                "--num-workers",
                "0",
                "--cpu",
                "--save-logits",
                str(saved),
                "--video-views",
                "2",
            ]
        )
        == 0
    )
    logits = torch.load(saved)["logits"]
    model, report = load_pretrained(tmp_path / "run")
    ds = evaluate.build_dataset(
        model,
        report.config,
        Path(cfg.data.eval_manifest),
        Path(cfg.data.label_csv),
        evaluate.build_parser().parse_args(["-c", "x", "--task", "classify", "--video-views", "2"]),
    )
    assert not ds.multilabel
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    with torch.no_grad():
        p = torch.stack(
            [model({"audio": batch["audio"], "video": batch["video"][:, k]}).sigmoid() for k in range(2)]
        ).mean(0)
    torch.testing.assert_close(logits.sigmoid(), p, rtol=1e-4, atol=1e-6)

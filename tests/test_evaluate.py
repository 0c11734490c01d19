"""tools/evaluate.py on a fine-tuned tiny checkpoint (one and two processes: every clip counted
once), tools/esc50_folds.py on a fake ESC-50 folder, and the fine-tuning recipe configs."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import import_tool
from test_finetune import ft_config, write_clips

from avmae.config import load_config
from avmae.data import save_audio
from avmae.train import Trainer

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A tiny classifier fine-tuned on two easy classes; 9 eval clips (an odd number)."""
    root = tmp_path_factory.mktemp("eval")
    data = write_clips(root / "clips", {"train": 6, "eval": 5})
    items = json.loads(data[1].read_text())["data"][:9]
    data[1].write_text(json.dumps({"data": items}))
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        result = Trainer(
            ft_config(
                data,
                root / "run",
                "optim.lr=2e-3",
                "schedule.epochs=4",
                "model.params.drop_path=0.0",
                "data.cache=true",
            )
        ).fit()
    return data, root / "run", result


def test_evaluate_reproduces_the_runs_eval(finetuned, tmp_path, capsys):
    (train, evals, labels), run, result = finetuned
    out = tmp_path / "eval.json"
    assert (
        import_tool("evaluate").main(
            ["--checkpoint", str(run), "--output", str(out), "--num-workers", "0", "--cpu", "--batch-size", "4"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "acc " in printed.splitlines()[0]
    assert "num_items 9," in printed or printed.rstrip().splitlines()[0].endswith(
        "num_items 9"
    )  # a count prints as an integer
    got = json.loads(out.read_text())
    assert "mAP" not in got["metrics"]  # single-label data: accuracy, not a one-vs-rest mAP
    assert got["data"] == str(evals) and got["multilabel"] is False  # the run's own eval split and labels
    assert got["metrics"]["num_items"] == 9
    assert got["metrics"]["acc"] == pytest.approx(result.eval["acc"])
    assert [c["name"] for c in got["classes"]] == ["Low tone", "High noise"] and sum(
        c["count"] for c in got["classes"]
    ) == 9
    # forced multi-label scoring, explicit data, logits saved
    out2 = tmp_path / "ml.json"
    assert (
        import_tool("evaluate").main(
            [
                "-c",
                str(run),
                "--data",
                str(evals),
                "--label-csv",
                str(labels),
                "--multilabel",
                "-o",
                str(out2),
                "--num-workers",
                "0",
                "--cpu",
                "--save-logits",
                str(tmp_path / "logits.pt"),
            ]
        )
        == 0
    )
    got = json.loads(out2.read_text())
    assert got["multilabel"] is True and 0.0 <= got["metrics"]["mAP"] <= 1.0 and "ap" in got["classes"][0]
    saved = torch.load(tmp_path / "logits.pt")
    assert saved["logits"].shape == (9, 2) and len(saved["files"]) == 9


def test_evaluate_finds_the_demo_eval_split_of_demo_runs_only(tmp_path, monkeypatch):
    import avmae.data

    evaluate = import_tool("evaluate")
    args = evaluate.build_parser().parse_args(["-c", "run"])
    monkeypatch.setattr(avmae.data, "ensure_demo_audio", lambda: tmp_path / "audio_demo")
    monkeypatch.setattr(avmae.data, "ensure_demo_av", lambda: tmp_path / "av_demo")
    demo = {
        "modality": "audio",
        "data": {"demo": "audio", "train_manifest": None, "eval_manifest": None, "label_csv": None},
    }
    assert evaluate.resolve_data(args, demo) == (
        tmp_path / "audio_demo" / "eval.json",
        tmp_path / "audio_demo" / "class_labels_indices.csv",
    )
    av = {"modality": "av", "data": {"demo": "av", "train_manifest": None}}
    assert evaluate.resolve_data(args, av)[0] == tmp_path / "av_demo" / "eval.json"
    older = {"modality": "av", "data": {"train_manifest": None}}  # saved before data.demo existed: a demo run
    assert evaluate.resolve_data(args, older)[0] == tmp_path / "av_demo" / "eval.json"
    for config in (
        {"modality": "audio", "data": {"demo": None, "train_manifest": None}},
        {"modality": "audio", "data": {"demo": "audio", "train_manifest": "t.json"}},
    ):
        with pytest.raises(SystemExit, match="pass --data"):
            evaluate.resolve_data(args, config)  # a run that names no demo, or its own manifest without an eval split


def test_evaluate_errors_are_clear(finetuned, tmp_path):
    _, run, _ = finetuned
    with pytest.raises(SystemExit, match="audio-visual"):
        import_tool("evaluate").main(["-c", str(run), "--task", "retrieval", "--num-workers", "0", "--cpu"])
    bad = tmp_path / "labels.csv"
    bad.write_text("index,mid,display_name\n0,/t/low,Low\n1,/t/high,High\n2,/t/x,X\n")
    with pytest.raises(SystemExit, match="2 classes"):
        import_tool("evaluate").main(["-c", str(run), "--label-csv", str(bad), "--num-workers", "0", "--cpu"])


@pytest.mark.slow
def test_evaluate_two_processes_count_every_clip_once(finetuned, tmp_path):
    """9 clips over 2 processes in batches of 2: accelerate pads the shares; gather_for_metrics drops the padding."""
    _, run, _ = finetuned
    single, double = tmp_path / "one.json", tmp_path / "two.json"
    args = ["--checkpoint", str(run), "--num-workers", "0", "--cpu", "--batch-size", "2", "--save-logits"]
    assert import_tool("evaluate").main(args + [str(tmp_path / "one.pt"), "-o", str(single)]) == 0
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29600 + os.getpid() % 1000),
        str(ROOT / "tools" / "evaluate.py"),
        *args,
        str(tmp_path / "two.pt"),
        "-o",
        str(double),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert two["num_processes"] == 2 and two["metrics"]["num_items"] == 9
    assert two["metrics"]["acc"] == pytest.approx(one["metrics"]["acc"])
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert torch.equal(a["labels"], b["labels"])  # same items in the same order
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)


def fake_esc50(root, folds=2, per_class_per_fold=3):
    """An ESC-50-like folder: meta/esc50.csv and audio/*.wav, 2 classes (low tone, high noise)."""
    g = torch.Generator().manual_seed(0)
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    sr, n = 16000, 8000
    t = torch.arange(n) / sr
    rows = []
    for fold in range(1, folds + 1):
        for target, category in ((0, "low_tone"), (1, "high_noise")):
            for k in range(per_class_per_fold):
                if target == 0:
                    wave = torch.sin(2 * math.pi * (200 + 200 * float(torch.rand(1, generator=g))) * t)
                else:
                    spec = torch.fft.rfft(torch.randn(n, generator=g))
                    wave = torch.fft.irfft(spec * (torch.fft.rfftfreq(n, 1 / sr) > 3000), n)
                name = f"{fold}-{target}{k:02d}-A-{target}.wav"
                save_audio(root / "audio" / name, (0.4 * wave / wave.abs().max()).unsqueeze(0), sr)
                rows.append([name, fold, target, category, "False", f"{target}{k:02d}", "A"])
    with (root / "meta" / "esc50.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return root


def test_esc50_folds_on_a_fake_dataset(tmp_path, capsys):
    esc = fake_esc50(tmp_path / "ESC-50")
    out = tmp_path / "cv"
    tiny = [
        "model.name=audiomae_tiny_cls",
        "data.target_length=64",
        "data.num_mel_bins=64",
        "data.num_workers=0",
        "train.batch_size=4",
        "train.cpu=true",
        "train.mixed_precision=no",
        "schedule.epochs=1",
        "schedule.warmup_epochs=0",
        "eval.every_n_epochs=1",
        "logging.progress=false",
        "logging.tensorboard=false",
        "checkpoint.every_n_epochs=0",
        "data.augment.freqm=8",
        "data.augment.timem=8",
    ]
    assert import_tool("esc50_folds").main(["--esc50", str(esc), "--output-dir", str(out), *tiny]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["folds"]) == {"1", "2"}
    accs = [summary["folds"][k]["acc"] for k in ("1", "2")]
    assert summary["mean_acc"] == pytest.approx(sum(accs) / 2)
    assert "mean accuracy" in capsys.readouterr().out
    # per-fold manifests: fold k evaluates on fold k alone and trains on the rest
    train1 = json.loads((out / "data" / "fold1_train.json").read_text())["data"]
    eval1 = json.loads((out / "data" / "fold1_eval.json").read_text())["data"]
    assert len(train1) == len(eval1) == 6 and all(Path(it["wav"]).name.startswith("2-") for it in train1)
    assert all(Path(it["wav"]).name.startswith("1-") for it in eval1)
    # the ESC recipe's settings reached the runs; the folds that finished are not run again
    cfg = load_config([out / "fold1" / "config.yaml"])
    assert cfg.data.norm == "esc50" and cfg.train.label_smoothing == 0.1 and cfg.train.loss == "ce"
    assert import_tool("esc50_folds").main(["--esc50", str(esc), "--output-dir", str(out), "--folds", "2", *tiny]) == 0
    with pytest.raises(SystemExit, match="not in the metadata"):
        import_tool("esc50_folds").main(
            ["--esc50", str(esc), "--output-dir", str(out), "--folds", "3", "--prepare-only"]
        )


@pytest.mark.parametrize(
    "name, checks",
    [
        (
            "finetune_as20k",
            dict(blr=1e-3, wd=5e-4, epochs=60, warmup=4, batch=8, freqm=48, timem=192, mixup=0.5, loss="bce"),
        ),
        (
            "finetune_as2m",
            dict(blr=2e-4, wd=5e-4, epochs=100, warmup=10, batch=4, freqm=48, timem=192, mixup=0.5, loss="bce"),
        ),
        (
            "finetune_esc50",
            dict(blr=1e-3, wd=0.05, epochs=50, warmup=5, batch=64, freqm=96, timem=24, mixup=0.0, loss="ce"),
        ),
        (
            "finetune_speechcommands",
            dict(blr=1e-3, wd=5e-4, epochs=30, warmup=3, batch=128, freqm=48, timem=48, mixup=0.5, loss="bce"),
        ),
    ],
)
def test_recipe_configs(name, checks):
    cfg = load_config([ROOT / "configs" / "audiomae" / f"{name}.yaml"])
    assert cfg.task == "finetune" and cfg.model.name == "audiomae_vit_base_cls" and cfg.optim.layer_decay == 0.75
    assert (
        cfg.optim.blr,
        cfg.optim.weight_decay,
        cfg.schedule.epochs,
        cfg.schedule.warmup_epochs,
        cfg.train.batch_size,
    ) == (checks["blr"], checks["wd"], checks["epochs"], checks["warmup"], checks["batch"])
    a = cfg.data.augment
    assert (a.freqm, a.timem, a.mixup, cfg.train.loss) == (
        checks["freqm"],
        checks["timem"],
        checks["mixup"],
        checks["loss"],
    )
    assert cfg.model.params["drop_path"] == 0.1
    if name == "finetune_as2m":
        assert cfg.data.balanced and cfg.data.epoch_len == 200000 and not cfg.data.replacement
    if name == "finetune_esc50":
        assert cfg.data.target_length == 512 and cfg.data.norm == "esc50" and cfg.train.label_smoothing == 0.1
    if name == "finetune_speechcommands":
        assert cfg.data.target_length == 128 and cfg.data.norm == "speechcommands"


def test_evaluate_retrieval_of_an_audio_visual_run(tmp_path, monkeypatch):
    """--task retrieval on an audio-visual pretraining run trained on the demo clips (no manifest:
    evaluate finds the run's audio-visual demo data): recall@1/5/10 both ways, equal to the ranks
    of each clip's partner among the cosine similarities of its mean-pooled embeddings."""
    import avmae.data
    from avmae.data import ensure_demo_av
    from avmae.hub import load_pretrained
    from avmae.train.retrieval import pooled_embeddings

    demo = ensure_demo_av(tmp_path / "av", num_train_per_class=1, num_eval_per_class=2)  # 12 eval clips
    monkeypatch.setattr(avmae.data, "ensure_demo_av", lambda *a, **kw: demo)
    cfg = load_config(
        ["configs/demo_av.yaml"],
        [
            "schedule.max_steps=1",
            "train.batch_size=2",
            "train.cpu=true",
            "train.mixed_precision=no",
            "eval.every_n_epochs=-1",
            "logging.progress=false",
            "logging.tensorboard=false",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    Trainer(cfg).fit()
    out = tmp_path / "r.json"
    assert (
        import_tool("evaluate").main(
            ["-c", str(tmp_path / "run"), "--task", "retrieval", "--num-workers", "0", "--cpu", "-o", str(out)]
        )
        == 0
    )
    got = json.loads(out.read_text())
    assert got["num_items"] == 12 and got["data"] == str(demo / "eval.json")
    recall = {f"{d}_r{k}" for d in ("a2v", "v2a") for k in (1, 5, 10)}
    assert recall | {"a2v_medr", "v2a_medr"} == set(got["metrics"])

    from avmae.data import AVDataset
    from avmae.hub import frontend_for

    model, report = load_pretrained(tmp_path / "run")
    ds = AVDataset(demo / "eval.json", None, frontend=frontend_for(model, report.config), num_frames=4, image_size=64)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    emb = pooled_embeddings(model, {"audio": batch["audio"], "video": batch["video"]})
    a, v = torch.nn.functional.normalize(emb["audio"], dim=1), torch.nn.functional.normalize(emb["video"], dim=1)
    for direction, sim in (("a2v", a @ v.T), ("v2a", v @ a.T)):
        order = sim.argsort(dim=1, descending=True)
        rank = (order == torch.arange(len(ds)).unsqueeze(1)).float().argmax(dim=1)  # 0 = the partner comes first
        for k in (1, 5, 10):
            assert got["metrics"][f"{direction}_r{k}"] == pytest.approx((rank < k).float().mean().item()), (
                direction,
                k,
            )

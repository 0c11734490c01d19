"""tools/evaluate.py beyond classifiers: a pretraining run's reconstruction loss, retrieval refused in
one line for an audio-only run, and kNN / linear-probe reads of a frozen encoder (far above chance
on generated separable clips); avmae.probe's pieces against hand computations."""

import json

import pytest
import torch
from test_finetune import write_clips

import avmae
from avmae import cli
from avmae.data import AudioDataset
from avmae.hub import frontend_for, load_pretrained
from avmae.probe import knn_scores, linear_probe, score

pytestmark = pytest.mark.usefixtures("one_thread")
T = 64


@pytest.fixture(scope="module")
def pretraining_run(tmp_path_factory):
    """A pretraining 'run': a tiny AudioMAE checkpoint whose config names the generated clips."""
    root = tmp_path_factory.mktemp("pre")
    train, evals, labels = write_clips(root / "clips", {"train": 8, "eval": 5}, seconds=0.64)
    torch.manual_seed(0)
    mae = avmae.create_model("audiomae_tiny", target_length=T, num_mel_bins=128)
    cfg = {
        "task": "pretrain",
        "model": {"name": "audiomae_tiny", "params": {}},
        "data": {
            "target_length": T,
            "num_mel_bins": 128,
            "norm": "esc50",
            "train_manifest": str(train),
            "eval_manifest": str(evals),
            "label_csv": str(labels),
        },
    }
    avmae.save_checkpoint(mae, root / "run" / "checkpoints" / "step_0000001" / "model.safetensors", config=cfg)
    return root / "run", (train, evals, labels)


def test_pretraining_run_evaluates_its_reconstruction(pretraining_run, capsys, tmp_path):
    run, (_, evals, _) = pretraining_run
    out = tmp_path / "r.json"
    assert (
        cli.main(["evaluate", "-c", str(run), "--num-workers", "0", "--cpu", "--batch-size", "4", "-o", str(out)]) == 0
    )
    line = capsys.readouterr().out.splitlines()[0]
    assert "masked reconstruction loss (mask ratio audio 0.8, seed 0)" in line and "(10 items)" in line
    got = json.loads(out.read_text())
    assert got["task"] == "reconstruction" and got["num_items"] == 10
    # the same masks by hand: the seed, then the batches in order
    model, rep = load_pretrained(run)
    ds = AudioDataset(evals, None, frontend=frontend_for(model, rep.config))
    torch.manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(ds, batch_size=4):
            total += model({"audio": batch["audio"]}).loss.item() * batch["audio"].shape[0]
    assert got["metrics"]["loss"] == pytest.approx(total / 10, rel=1e-5)
    assert got["metrics"]["mae_audio"] == pytest.approx(got["metrics"]["loss"])


def test_retrieval_and_classify_do_not_apply_and_say_why(pretraining_run, capsys):
    run, _ = pretraining_run
    assert cli.main(["evaluate", "-c", str(run), "--task", "retrieval", "--num-workers", "0", "--cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "audiomae_tiny takes audio only" in err
        and "audio-visual pretraining model" in err
    )
    assert cli.main(["evaluate", "-c", str(run), "--task", "classify", "--cpu"]) == 1
    assert "without a class head" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["knn", "linear"])
def test_embedding_probes_far_above_chance(pretraining_run, task, capsys, tmp_path):
    run, _ = pretraining_run  # an untrained encoder still separates a low tone from high band noise
    out = tmp_path / f"{task}.json"
    assert cli.main(["evaluate", "-c", str(run), "--task", task, "--num-workers", "0", "--cpu", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    assert got["num_train"] == 16 and got["metrics"]["num_items"] == 10 and got["multilabel"] is False
    assert got["metrics"]["acc"] >= 0.9  # chance 0.5
    assert "mAP" not in printed and "mAP" not in got["metrics"]  # single-label data: accuracy only


def test_knn_votes_and_linear_probe_by_hand():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    eval_x = torch.tensor([[1.0, 0.05], [0.0, 2.0]])
    s = knn_scores(train_x, train_y, eval_x, k=3, temperature=0.1)
    a = torch.nn.functional.normalize(train_x, dim=1)
    b = torch.nn.functional.normalize(eval_x, dim=1)
    sim = b @ a.T
    top, idx = sim.topk(3, dim=1)
    want = (torch.exp((top - 1) / 0.1).unsqueeze(-1) * train_y[idx]).sum(1)
    torch.testing.assert_close(s, want)
    assert s.argmax(1).tolist() == [0, 1]
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(60) % 3
    x = centres[y] + torch.randn(60, 8, generator=g)
    logits = linear_probe(x[:45], torch.nn.functional.one_hot(y[:45], 3).float(), x[45:], multilabel=False, epochs=40)
    summary, _ = score(logits, torch.nn.functional.one_hot(y[45:], 3).float(), multilabel=False)
    assert summary["acc"] >= 0.9 and set(summary) == {"acc", "acc5", "num_items"}

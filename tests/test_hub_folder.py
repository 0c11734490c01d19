"""Shareable model folders (the Hugging Face layout): save_pretrained / from_pretrained."""

import json

import pytest
import torch

import avmae
from avmae.checkpoint import CheckpointError
from avmae.config import load_config
from avmae.hub import from_pretrained, frontend_for, load_pretrained, save_pretrained


def test_folder_round_trip_in_three_lines(tmp_path):
    model = avmae.create_model("audiomae_tiny_cls", num_classes=3, target_length=64).eval()
    with torch.no_grad():
        model.head.weight.normal_()
    cfg = load_config([], ["task=finetune", "model.name=audiomae_tiny_cls", "data.target_length=64", "data.norm=esc50"])
    folder = save_pretrained(model, tmp_path / "my-model", config=cfg, metrics={"eval/acc": 0.875, "epochs": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    info = json.loads((folder / "config.json").read_text())
    assert info["model_name"] == "audiomae_tiny_cls" and info["model_params"] == {"num_classes": 3, "target_length": 64}
    assert info["frontend"]["mean"] == pytest.approx(-6.6268077) and info["frontend"]["target_length"] == 64
    card = (folder / "README.md").read_text()
    assert "| eval/acc | 0.8750 |" in card and "from_pretrained" in card and "task: finetune" in card

    # the three lines
    loaded = from_pretrained(folder)
    fbank = frontend_for(loaded)(torch.randn(1, 16000) * 0.1)
    logits = loaded({"audio": fbank.unsqueeze(0)})

    assert fbank.shape == (1, 64, 128) and frontend_for(loaded).mean == pytest.approx(-6.6268077)
    with torch.no_grad():
        torch.testing.assert_close(logits, model({"audio": fbank.unsqueeze(0)}))
    assert not loaded.training
    # the weights file alone still loads through load_pretrained
    again, rep = load_pretrained(folder)
    assert rep.model_name == "audiomae_tiny_cls"


def test_shorter_input_and_errors(tmp_path):
    model = avmae.create_model("audiomae_tiny", target_length=128)
    folder = save_pretrained(model, tmp_path / "m")
    short = from_pretrained(folder, target_length=64)
    assert torch.equal(short.modalities["audio"].pos_embed, model.modalities["audio"].pos_embed[:, :32])
    assert frontend_for(short).mean == pytest.approx(-4.2677393)  # AudioSet's without a training config
    with pytest.raises(CheckpointError, match="config.json"):
        from_pretrained(tmp_path)
    plain = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="model_name"):
        save_pretrained(plain, tmp_path / "x")


def test_convert_a_run_to_a_folder(tmp_path, load_tool):
    run = tmp_path / "run"
    model = avmae.create_model("audiomae_tiny_cls", num_classes=2, target_length=64)
    avmae.save_checkpoint(
        model,
        run / "checkpoints" / "step_0000004" / "model.safetensors",
        config={
            "task": "finetune",
            "model": {"name": "audiomae_tiny_cls", "params": {}},
            "data": {"target_length": 64, "norm": "esc50"},
        },
    )
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 2, "train/loss": 0.7})
        + "\n"
        + json.dumps({"step": 4, "eval/acc": 0.75, "eval/loss": 0.5})
        + "\n"
    )
    assert (
        load_tool("convert_checkpoint").main([str(run), "--out", str(tmp_path / "shared"), "--to", "pretrained"]) == 0
    )
    info = json.loads((tmp_path / "shared" / "config.json").read_text())
    assert info["metrics"] == {"step": 4, "eval/acc": 0.75, "eval/loss": 0.5} and info["frontend"][
        "mean"
    ] == pytest.approx(-6.6268077)
    assert from_pretrained(tmp_path / "shared").num_classes == 2

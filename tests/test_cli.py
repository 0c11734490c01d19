"""The ``avmae`` command: help, built-in listing, dispatch to the tools, clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import avmae
from avmae import cli
from avmae.data import save_audio, synthesize_clip

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in (
        "train",
        "finetune",
        "evaluate",
        "extract",
        "visualize",
        "prepare",
        "convert",
        "benchmark",
        "models",
    ):
        assert f"  {command} " in text
    assert cli.main([]) == 2  # no command: usage
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_models_lists_the_registries(capsys):
    assert cli.main(["models"]) == 0
    text = capsys.readouterr().out
    assert "  audiomae_vit_base\n" in text and "  swin\n" in text and "  audio\n" in text
    assert cli.main(["models", "*_cls"]) == 0
    text = capsys.readouterr().out
    assert "audiomae_tiny_cls" in text and "audiomae_tiny\n" not in text


def test_dispatch_to_a_tool_and_its_help(tmp_path, capsys):
    assert cli.main(["extract", "--help"]) == 0
    assert "usage: avmae extract" in capsys.readouterr().out
    model = avmae.create_model("audiomae_tiny", target_length=64)
    ckpt = avmae.save_checkpoint(model, tmp_path / "m.safetensors", model_name="audiomae_tiny")
    wav = save_audio(
        tmp_path / "a.wav", synthesize_clip("tone", torch.Generator().manual_seed(0), seconds=0.3).unsqueeze(0), 16000
    )
    assert cli.main(["extract", str(wav), "-c", str(ckpt), "-o", str(tmp_path / "e.npz"), "--no-progress"]) == 0
    assert np.load(tmp_path / "e.npz")["embedding"].shape == (1, 64)
    assert cli.main(["convert", str(ckpt), "-o", str(tmp_path / "timm.safetensors"), "--to", "timm"]) == 0
    assert cli.main(["prepare", "weights"]) == 2  # argparse error inside the tool: its exit status


def test_a_mistyped_checkpoint_is_one_line_not_a_traceback(tmp_path, capsys):
    wav = save_audio(
        tmp_path / "a.wav", synthesize_clip("tone", torch.Generator().manual_seed(0), seconds=0.3).unsqueeze(0), 16000
    )
    for command in (
        ["visualize", str(wav), "--out", str(tmp_path / "r.png")],
        ["extract", str(wav), "-o", str(tmp_path / "e.npz")],
    ):
        assert cli.main([*command, "--checkpoint", str(tmp_path / "runs" / "demo-pr")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"checkpoint error: {tmp_path / 'runs' / 'demo-pr'}: no such checkpoint file or folder"], (
            command[0],
            err,
        )


def test_every_command_is_a_package_module_and_every_tool_wraps_it(tmp_path, monkeypatch, capsys):
    """The commands' code is in the package (``avmae <command>`` works from any folder, installed);
    ``tools/<script>.py`` of a clone calls the same ``main``; the library never imports the CLI."""
    import importlib.util

    from avmae.cli import COMMANDS, command_main

    for command in COMMANDS:
        assert callable(command_main(command)), command
    scripts = {"train": "train", "finetune": "finetune", "evaluate": "evaluate", "extract": "extract"}
    scripts.update(visualize="visualize", prepare_data="prepare", convert_checkpoint="convert", benchmark="benchmark")
    for script, command in scripts.items():
        spec = importlib.util.spec_from_file_location(f"wrapper_{script}", REPO / "tools" / f"{script}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.main is command_main(command), script
    monkeypatch.chdir(tmp_path)  # no configs/ or tools/ here
    assert cli.main(["train", "--print-config", "--config", "audiomae/pretrain_as2m"]) == 0
    assert "mask_ratio: 0.8" in capsys.readouterr().out
    upward = [
        str(f.relative_to(REPO))
        for f in (REPO / "avmae").rglob("*.py")
        if "cli" not in f.relative_to(REPO / "avmae").parts[:1]
        and f.name != "__main__.py"
        and any(s in f.read_text() for s in ("avmae.cli", "from .cli", "from ..cli"))
    ]
    assert upward == []


def test_configs_resolve_by_name_and_by_path_and_are_listed(tmp_path, monkeypatch, capsys):
    from avmae.config import CONFIG_DIR, ConfigError, list_configs, load_config, resolve_config_path

    names = list_configs()
    assert {"demo_audio", "demo_av", "audiomae/pretrain_as2m"} <= set(names)
    # a plugin's configs, through its avmae.configs entry point (the in-tree EAT plugin's)
    assert {"eat/demo", "eat/pretrain_as2m"} <= set(names)
    eat = REPO / "plugins" / "avmae_eat" / "configs" / "demo.yaml"
    assert resolve_config_path("eat/demo") == resolve_config_path("configs/eat/demo.yaml") == eat
    target = CONFIG_DIR / "audiomae" / "pretrain_as2m.yaml"
    monkeypatch.chdir(tmp_path)
    for spelling in ("audiomae/pretrain_as2m", "audiomae/pretrain_as2m.yaml", "configs/audiomae/pretrain_as2m.yaml"):
        assert resolve_config_path(spelling) == target, spelling
    own = tmp_path / "mine.yaml"
    own.write_text("train:\n  batch_size: 3\n")
    assert resolve_config_path("mine.yaml") == Path("mine.yaml")
    assert load_config(["mine.yaml"]).train.batch_size == 3
    with pytest.raises(ConfigError, match="nope/x.*avmae configs"):
        load_config(["nope/x"])
    assert cli.main(["configs"]) == 0
    listed = capsys.readouterr().out.split()
    assert set(names) <= set(listed)
    assert cli.main(["configs", "demo_audio"]) == 0
    assert capsys.readouterr().out == (CONFIG_DIR / "demo_audio.yaml").read_text()
    assert cli.main(["configs", "nope"]) == 2
    assert "no such shipped config" in capsys.readouterr().err


def test_key_value_overrides_and_sources_may_follow_options(load_tool):
    """``train.py --config c.yaml a=1 --output-dir o b=2``: the overrides on both sides of an option
    are all kept (argparse's plain parse stops collecting positionals at the first option)."""
    train = load_tool("train")
    cfg = train.build_config(
        train.parse_args(["schedule.epochs=3", "--output-dir", "out", "optim.blr=0.002", "--modality", "audio"])
    )
    assert cfg.schedule.epochs == 3 and cfg.optim.blr == 0.002 and str(cfg.output_dir) == "out"
    folds = (
        load_tool("esc50_folds")
        .build_parser()
        .parse_intermixed_args(["--esc50", "d", "a=1", "--output-dir", "o", "b=2"])
    )
    assert folds.overrides == ["a=1", "b=2"]
    extract = (
        load_tool("extract")
        .build_parser()
        .parse_intermixed_args(["a.wav", "--checkpoint", "ck", "b.wav", "--out", "e.npz"])
    )
    assert extract.sources == ["a.wav", "b.wav"] and extract.checkpoint == "ck"


def test_benchmark_through_the_cli_exits_0(tmp_path, capsys):
    """``avmae benchmark`` runs the real tools/benchmark.py (tiny settings) and exits 0 after a
    successful run; its JSON holds the measured step."""
    threads = torch.get_num_threads()
    out = tmp_path / "b.json"
    try:
        status = cli.main(
            [
                "benchmark",
                "--model",
                "audiomae_tiny",
                "--frames",
                "32",
                "--batch-size",
                "2",
                "--steps",
                "1",
                "--warmup",
                "1",
                "--precision",
                "fp32",
                "--threads",
                "1",
                "--peak-size",
                "64",
                "--no-baseline",
                "--no-data",
                "--no-fbank",
                "--json",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    doc = json.loads(out.read_text())
    assert doc["model_step"]["ours"]["step_s_best"] > 0 and doc["model_step"]["ours"]["input_shape"] == {
        "audio": [2, 1, 32, 128]
    }
    assert "audiomae_tiny" in capsys.readouterr().out  # the table
    assert cli.main(["benchmark", "--no-such-option"]) == 2  # argparse's status

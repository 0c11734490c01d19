"""Model params read from a file are checked against the weights before a model is built: crafted
config.json / safetensors metadata / run configs (larger, smaller, wrong types) are one
``CheckpointError`` line, and nothing of the described model is allocated."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

import avmae
from avmae.checkpoint import CheckpointError, read_state_dict, write_safetensors
from avmae.hub import from_pretrained, load_pretrained, save_pretrained
from avmae.weights_fit import MAX_UNBACKED_ELEMENTS, size_problem

pytestmark = pytest.mark.usefixtures("one_thread")

T = 64
HUGE = {"embed_dim": 65536, "depth": 48}  # 2.5 T parameters: 10 TB of float32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny classifier's save_pretrained folder (embed_dim 64, depth 2, 3 classes)."""
    model = avmae.create_model("audiomae_tiny_cls", num_classes=3, target_length=T)
    return save_pretrained(model, tmp_path_factory.mktemp("pretrained") / "tiny")


@pytest.fixture
def built_on(monkeypatch):
    """The default device of every ``avmae.create_model`` call made: "meta" for a shapes-only build."""
    devices = []
    real = avmae.create_model

    def spy(name, **params):
        devices.append(str(torch.get_default_device()))
        return real(name, **params)

    monkeypatch.setattr(avmae, "create_model", spy)
    return devices


def _with_params(folder, tmp_path, **params):
    """A copy of ``folder`` whose config.json has ``params`` over its model_params."""
    out = tmp_path / "edited"
    out.mkdir()
    info = json.loads((folder / "config.json").read_text())
    info["model_params"] = {**info["model_params"], **params}
    (out / "config.json").write_text(json.dumps(info))
    (out / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    return out


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_larger_params_fail_before_anything_is_allocated(folder, tmp_path, built_on):
    edited = _with_params(folder, tmp_path, **HUGE)
    with pytest.raises(CheckpointError) as exc:
        from_pretrained(edited)
    line = _one_line(exc)
    # the file, the tensor, both shapes, where the params came from
    assert str(edited / "model.safetensors") in line and "'cls_token'" in line, line
    assert "(1, 1, 64) in the weights" in line and "(1, 1, 65536)" in line, line
    assert str(edited / "config.json") in line, line
    assert built_on and set(built_on) == {"meta"}  # never built for real


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"embed_dim": 32}, ["'cls_token'", "(1, 1, 64) in the weights", "(1, 1, 32)"]),  # smaller
        ({"num_classes": 10**9}, ["'head.weight'", "(3, 64) in the weights", "(1000000000, 64)"]),
        ({"target_length": 10**9}, ["elements the weights do not provide", f"limit of {MAX_UNBACKED_ELEMENTS:,}"]),
        ({"depth": "2"}, ["depth='2'", "a size must be a whole number >= 0"]),  # wrong type
        ({"embed_dim": -64}, ["embed_dim=-64", "a size must be a whole number >= 0"]),  # negative
        ({"num_heads": 2.5}, ["num_heads=2.5", "a size must be a whole number >= 0"]),
        ({"num_heads": 5}, ["cannot build", "num_heads=5"]),  # sizes its factory refuses (64 dims in 5 heads)
    ],
)
def test_crafted_config_json_is_one_line_before_any_real_build(folder, tmp_path, built_on, params, expected):
    edited = _with_params(folder, tmp_path, **params)
    with pytest.raises(CheckpointError) as exc:
        from_pretrained(edited)
    line = _one_line(exc)
    assert str(edited / "model.safetensors") in line and str(edited / "config.json") in line, line
    for part in expected:
        assert part in line, line
    assert set(built_on) <= {"meta"}


def test_more_blocks_than_the_weights_is_refused_by_the_strict_load(folder, tmp_path):
    """Params that only add (few, small) tensors the weights lack pass the shape check; the strict
    load names what is missing, in one line."""
    with pytest.raises(CheckpointError, match=r"does not fit .*missing \['blocks\.") as exc:
        from_pretrained(_with_params(folder, tmp_path, depth=4))
    _one_line(exc)


def test_config_json_of_the_wrong_shape(folder, tmp_path):
    edited = _with_params(folder, tmp_path)
    info = json.loads((edited / "config.json").read_text())
    for bad, reason in (({"model_params": [64, 2]}, "model_params must be a mapping"), ({"model_name": 7}, "string")):
        (edited / "config.json").write_text(json.dumps({**info, **bad}))
        with pytest.raises(CheckpointError, match=reason) as exc:
            from_pretrained(edited)
        assert str(edited / "config.json") in _one_line(exc)


def test_a_folder_without_weights_builds_nothing(folder, tmp_path, built_on):
    edited = _with_params(folder, tmp_path)
    (edited / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no such checkpoint file") as exc:
        from_pretrained(edited)
    assert str(edited / "model.safetensors") in _one_line(exc)
    assert built_on == []


def test_the_folder_loads_unchanged(folder):
    model = from_pretrained(folder)
    assert model.head.weight.shape == (3, 64)


def _crafted_metadata(src, dst, **params):
    """``src``'s tensors with metadata naming audiomae_tiny_cls and ``params`` as its model_params."""
    sd, meta = read_state_dict(src)
    meta["model_params"] = json.dumps({**json.loads(meta["model_params"]), **params})
    return write_safetensors(sd, dst, metadata=meta)


def test_load_pretrained_checks_the_metadata_params(folder, tmp_path, built_on):
    path = _crafted_metadata(folder / "model.safetensors", tmp_path / "m.safetensors", **HUGE)
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(path)
    line = _one_line(exc)
    assert str(path) in line and "'cls_token'" in line and "the file's metadata 'model_params'" in line, line
    assert set(built_on) == {"meta"}


def test_load_pretrained_checks_a_run_folder_config(folder, tmp_path, built_on):
    """A checkpoint folder whose weights name no params: the run's config.yaml beside them is read."""
    sd, _ = read_state_dict(folder / "model.safetensors")
    step = tmp_path / "run" / "checkpoints" / "step_0000010"
    write_safetensors(sd, step / "model.safetensors", metadata={"format": "avmae"})
    cfg = {"model": {"name": "audiomae_tiny_cls", "params": {"num_classes": 3, **HUGE}}, "data": {"target_length": T}}
    (step / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(step)
    line = _one_line(exc)
    assert str(step / "model.safetensors") in line and "config.yaml beside it" in line, line
    assert set(built_on) == {"meta"}
    cfg["model"]["params"] = {"num_classes": 3}
    (step / "config.yaml").write_text(yaml.safe_dump(cfg))
    model, report = load_pretrained(step)  # the honest config loads
    assert report.source == "config.yaml" and model.head.weight.shape == (3, 64)


def test_hear_loader_and_finetune_planner_check_too(folder, tmp_path):
    from avmae.hear import load_embedder
    from avmae.train.own_data import classifier_for

    with pytest.raises(CheckpointError, match="'cls_token'"):
        load_embedder(_with_params(folder, tmp_path, **HUGE))
    path = _crafted_metadata(folder / "model.safetensors", tmp_path / "m.safetensors", **HUGE)
    with pytest.raises(CheckpointError, match="'cls_token'") as exc:
        classifier_for(path)
    assert str(path) in _one_line(exc)


def test_size_problem():
    assert size_problem({"embed_dim": 64, "depth": 2, "decoder": "swin", "mlp_ratio": 4.0}) is None
    assert size_problem({"target_length": None, "window_size": [4, 4], "num_classes": 0}) is None
    assert size_problem({"decoder_params": {"depth": -1}}) == "decoder_params.depth=-1"
    assert size_problem({"depth": True}) == "depth=True"


def test_avmae_extract_refuses_in_one_line_with_a_small_peak_memory(folder, tmp_path):
    """The CLI, as a user runs it: exit status 1, one line, and the process stays small."""
    path = _crafted_metadata(folder / "model.safetensors", tmp_path / "m.safetensors", **HUGE)
    wav = tmp_path / "a.wav"
    avmae.data.save_audio(wav, 0.1 * torch.randn(1, 4000), 16000)
    code = (
        # VmHWM is this process's own peak (ru_maxrss would carry the forking test process's peak across exec)
        "import re, sys; from avmae import cli; rc = cli.main(sys.argv[1:]);"
        " print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(rc)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "extract", str(wav), "-c", str(path), "-o", str(tmp_path / "e.npz")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint error: {path}: tensor 'cls_token'"), run.stderr
    assert "(1, 1, 65536)" in lines[0]
    peak_mb = int(run.stdout.strip()) / 1024  # VmHWM: KiB
    assert peak_mb < 2048, f"peak RSS {peak_mb:.0f} MB"

"""tools/benchmark.py end to end on a tiny model and a tiny manifest; speed paths keep outputs equal."""

import json

import pytest
import torch
from conftest import import_tool

import avmae
from avmae.data import save_audio, synthesize_clip
from avmae.data.datasets import item_generator
from avmae.layers import SwinBlock


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_data")
    items = []
    for i in range(4):
        save_audio(root / f"c{i}.flac", synthesize_clip(i % 6, item_generator(0, 0, i), seconds=0.5)[None], 16000)
        items.append({"wav": f"c{i}.flac", "labels": ""})
    (root / "m.json").write_text(json.dumps({"data": items}))
    return root / "m.json"


def test_benchmark_runs_end_to_end_and_writes_json(tmp_path, manifest):
    tool = import_tool("benchmark")
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        result = tool.run(
            [
                "--model",
                "audiomae_tiny",
                "--steps",
                "1",
                "--warmup",
                "1",
                "--precision",
                "fp32",
                "--threads",
                "1",
                "--peak-size",
                "256",
                "--manifest",
                str(manifest),
                "--workers",
                "0",
                "--data-clips",
                "6",
                "--data-batch-size",
                "3",
                "--data-repeats",
                "1",
                "--target-length",
                "64",
                "--fbank-batch",
                "2",
                "--fbank-seconds",
                "0.5",
                "--json",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(out.read_text())
    assert doc["model_step"]["ours"]["model"] == "audiomae_tiny"
    for key in ("ours", "baseline"):
        run = doc["model_step"][key]
        assert run["step_s_best"] > 0 and run["samples_per_s"] > 0 and run["flops_per_step"] > 0
        assert run["memory"]["peak_mb"] > 0 and 0 < run["peak_fraction"]
    assert doc["model_step"]["baseline"]["attention"] == "plain math"
    # ours: AdamW as the trainer's default builds it; the baseline: torch's default implementation
    from avmae.train.optim import fused_adamw_devices

    assert doc["model_step"]["ours"]["optimizer"] == ("adamw-fused" if "cpu" in fused_adamw_devices() else "adamw")
    assert doc["model_step"]["baseline"]["optimizer"] == "adamw"
    assert doc["model_step"]["ours"]["flops_per_step"] == doc["model_step"]["baseline"]["flops_per_step"]
    assert doc["model_step"]["speedup_vs_baseline"] > 0
    assert {r["mode"] for r in doc["data"]} == {"dataset", "batched-worker", "batched-main", "decode-only"}
    assert all(r["clips_per_s"] > 0 and r["clips"] == 6 for r in doc["data"])
    assert doc["machine"]["cpu_count"] >= 1 and doc["matmul_peak_tflops"]["fp32"] > 0
    # the CPU kind, read through the precision probe's /proc/cpuinfo helper
    from avmae.train.precision import cpu_flags

    assert doc["machine"]["host_cpu_flags"] == sorted(cpu_flags() & tool.MATRIX_FLAGS)
    assert [r["fbank"] for r in doc["fbank"]] == ["kaldi-per-item", "batched"]
    assert result["model_step"]["ours"]["step_s_best"] == doc["model_step"]["ours"]["step_s_best"]


def test_fused_switch_reaches_every_attention():
    tool = import_tool("benchmark")
    model = avmae.create_model("audiomae_tiny")
    n = tool.set_fused_attention(model, False)
    assert n == len(model.blocks) + len(model.decoder.blocks)
    assert not any(getattr(m, "fused_attn", False) or getattr(m, "fused", False) for m in model.modules())


@pytest.mark.parametrize("shift", [(0, 0), (2, 0)])
def test_window_attention_paths_agree_with_gradients(shift):
    """SDPA path (no grad), plain math, and the CPU training path give the same outputs and grads."""
    torch.manual_seed(0)
    blk = SwinBlock(32, num_heads=4, grid=(8, 4), shift=shift, meta_drop=0.0)
    x = torch.randn(3, 32, 32)
    with torch.no_grad():
        fused = blk(x)
        blk.attn.fused = False
        math = blk(x)
    assert (fused - math).abs().max() < 1e-5
    grads = []
    for fused_flag in (True, False):
        blk.attn.fused = fused_flag
        blk.zero_grad()
        xi = x.clone().requires_grad_()
        blk(xi).pow(2).sum().backward()
        grads.append((xi.grad, blk.attn.meta_mlp.fc1.weight.grad.clone(), blk.attn.tau.grad.clone()))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-4 * max(1.0, b.abs().max().item())


def test_bf16_autocast_step_on_cpu():
    model = avmae.create_model("audiomae_tiny")
    x = torch.randn(2, 1, 1024, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model({"audio": x})
    assert out.pred["audio"].dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("bf16_faster", [True, False])
def test_auto_precision_is_the_trainers_choice(tmp_path, monkeypatch, bf16_faster):
    """``--precision auto`` takes train.mixed_precision=auto's choice, from the same (injected) probe."""
    from avmae.train import precision

    monkeypatch.setenv("AVMAE_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "probe_matmul", lambda shapes: {"fp32": 1e11, "bf16": 4e11 if bf16_faster else 5e10})
    tool = import_tool("benchmark")
    threads = torch.get_num_threads()
    try:
        result = tool.run(
            [
                "--model",
                "audiomae_tiny",
                "--frames",
                "32",
                "--steps",
                "1",
                "--warmup",
                "1",
                "--threads",
                "1",
                "--peak-size",
                "64",
                "--no-baseline",
                "--no-data",
                "--no-fbank",
                "--profile",
                "1",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    expected = "bf16" if bf16_faster else "fp32"
    assert result["precision_auto"]["precision"] == expected and result["model_step"]["ours"]["precision"] == expected
    shapes = tool.model_shapes("audiomae_tiny", "swin", 32)
    assert precision.resolve_mixed_precision("auto", torch.device("cpu"), shapes=shapes) == (
        "bf16" if bf16_faster else "no"
    )
    prof = result["model_step"]["ours"]["profile"]
    assert prof["by_class_s"]["matmul"] > 0 and prof["by_class_s"]["optimizer"] > 0
    assert abs(sum(prof["by_class_share"].values()) - 1) < 1e-3
    assert set(prof["by_region_s"]) == {"forward", "backward", "optimizer"}

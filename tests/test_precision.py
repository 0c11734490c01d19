"""``train.mixed_precision: auto``: chosen by a matmul probe (injected here), cached per machine, logged."""

import logging

import pytest
import torch

from avmae.config import ConfigError, load_config
from avmae.train import precision
from avmae.train.precision import BF16_MARGIN, choose_precision, linear_shapes, probe_matmul, resolve_mixed_precision

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVMAE_CACHE", str(tmp_path / "cache"))


def fixed(fp32, bf16):
    calls = []

    def probe(shapes):
        calls.append(list(shapes))
        return {"fp32": fp32, "bf16": bf16}

    probe.calls = calls
    return probe


def test_auto_picks_bf16_where_the_probe_finds_it_faster(caplog):
    with caplog.at_level(logging.INFO, logger="avmae.train.precision"):
        assert resolve_mixed_precision("auto", CPU, probe=fixed(100e9, 500e9)) == "bf16"
    assert "100.0 GFLOP/s in fp32" in caplog.text and "500.0 GFLOP/s under bf16" in caplog.text


def test_auto_picks_fp32_where_bf16_is_slower_or_barely_faster():
    assert resolve_mixed_precision("auto", CPU, probe=fixed(100e9, 50e9)) == "no"
    assert resolve_mixed_precision("auto", CPU, probe=fixed(100e9, 0.99 * BF16_MARGIN * 100e9)) == "no"
    assert resolve_mixed_precision("auto", CPU, probe=fixed(100e9, 1.01 * BF16_MARGIN * 100e9)) == "bf16"


def test_explicit_choices_are_kept_and_gpus_keep_their_rule(monkeypatch):
    never = fixed(1.0, 1.0)
    assert resolve_mixed_precision("bf16", CPU, probe=never) == "bf16"
    assert resolve_mixed_precision("no", CPU, probe=never) == "no"
    assert never.calls == []
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_mixed_precision("fp16", CPU)
    for supported, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_mixed_precision("auto", torch.device("cuda"), probe=never) == expected
    assert never.calls == []  # no probe on a GPU


def test_the_measurement_is_cached_per_machine_and_shapes(monkeypatch, tmp_path):
    fake = fixed(80e9, 20e9)
    monkeypatch.setattr(precision, "probe_matmul", fake)
    first = choose_precision(CPU, shapes=[(64, 32, 48)])
    assert first.mixed_precision == "no" and first.source.startswith("measured now") and len(fake.calls) == 1
    again = choose_precision(CPU, shapes=[(64, 32, 48)])
    assert again.source.startswith("cached in") and (again.fp32_gflops, again.bf16_gflops) == (80.0, 20.0)
    assert len(fake.calls) == 1  # read from the cache
    assert str(tmp_path / "cache" / "precision_probe.json") in again.source
    choose_precision(CPU, shapes=[(64, 32, 64)])  # other shapes: measured
    assert len(fake.calls) == 2
    monkeypatch.setattr(precision, "_cpu_model", lambda: "another CPU")  # another machine: measured
    choose_precision(CPU, shapes=[(64, 32, 48)])
    assert len(fake.calls) == 3
    choose_precision(CPU, shapes=[(64, 32, 48)], use_cache=False)
    assert len(fake.calls) == 4
    (tmp_path / "cache" / "precision_probe.json").write_text("{not json")  # a damaged cache is measured again
    assert choose_precision(CPU, shapes=[(64, 32, 48)]).source.startswith("measured now")


def test_real_probe_measures_both_precisions():
    found = probe_matmul([(16, 32, 64)], budget_s=0.005)
    assert set(found) == {"fp32", "bf16"} and all(v > 0 for v in found.values())


def test_probe_shapes_are_the_model_linear_layers_even_on_meta():
    import avmae

    with torch.device("meta"):
        model = avmae.create_model("audiomae_tiny")
    shapes = linear_shapes(model)
    assert shapes == [(64, 64, 256), (64, 256, 64)]  # the MLPs of a 64-wide model carry most FLOPs


def test_trainer_auto_precision_follows_the_probe(tmp_path, monkeypatch):
    from avmae.train import Trainer

    seen = []
    for fp32, bf16, expected in ((100e9, 400e9, "bf16"), (100e9, 30e9, "no")):

        def fake(shapes, fp32=fp32, bf16=bf16):
            seen.append(list(shapes))
            return {"fp32": fp32, "bf16": bf16}

        monkeypatch.setattr(precision, "probe_matmul", fake)
        cfg = load_config(
            [],
            [
                "model.name=audiomae_tiny",
                "data.demo=audio",
                "train.cpu=true",
                "train.mixed_precision=auto",
                "train.threads=1",
                "data.target_length=32",
                f"output_dir={tmp_path / expected}",
                "logging.tensorboard=false",
            ],
        )
        monkeypatch.setenv("AVMAE_CACHE", str(tmp_path / f"cache_{expected}"))
        assert Trainer(cfg).mixed_precision == expected
    assert seen[0] == [(64, 64, 256), (64, 256, 64)]  # the run's model's shapes

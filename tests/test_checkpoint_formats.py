"""One registry type: ``Registry.build`` for specs, the seven ``avmae.register_<group>`` decorators,
and checkpoint layouts as a registry (``avmae.checkpoint_formats``) that a plugin extends: detect,
convert keys, describe the model, say what was dropped."""

import sys
import textwrap

import pytest
import torch

import avmae
from avmae.checkpoint import (
    CHECKPOINT_FORMATS,
    CheckpointError,
    CheckpointFormat,
    Conversion,
    checkpoint_formats,
    load_checkpoint,
)
from avmae.hub import load_pretrained
from avmae.masking import Masker, RandomMasker
from avmae.registry import MASKERS, Registry, RegistryError

T = 64


def test_every_group_has_an_exported_decorator():
    groups = ["model", "modality", "decoder", "masker", "objective", "task", "dataset", "checkpoint_format"]
    for g in groups:
        assert callable(getattr(avmae, f"register_{g}")) and f"register_{g}" in avmae.__all__


def test_build_parses_names_mappings_and_params_blocks():
    assert isinstance(MASKERS.build("random"), RandomMasker)
    a = MASKERS.build({"name": "inverse_block", "block": 3})
    b = MASKERS.build({"name": "inverse_block", "params": {"block": 3}})
    c = MASKERS.build("inverse_block", {"block": 3})
    assert a.block == b.block == c.block == 3
    given = RandomMasker()
    assert MASKERS.build(given) is given  # an instance of the product is returned as is
    with pytest.raises(RegistryError, match="random"):
        MASKERS.build("nope")
    with pytest.raises(ValueError, match="rejected its params"):
        MASKERS.build({"name": "random", "size": 3})
    with pytest.raises(ValueError, match="registered name"):
        MASKERS.build(3)


def test_build_checks_the_product_and_keeps_common_arguments_the_callers():
    reg = Registry("thing", "avmae.test_things", product=Masker)
    reg.add("bad", lambda **kw: object())
    reg.add("good", lambda *, ratio, **kw: RandomMasker())
    with pytest.raises(TypeError, match="built a object, not a avmae.masking.Masker"):
        reg.build("bad")
    assert isinstance(reg.build("good", ratio=0.5), RandomMasker)
    with pytest.raises(ValueError, match="ratio set by the caller"):
        reg.build({"name": "good", "ratio": 0.1}, ratio=0.5)


def _marked(model: torch.nn.Module):
    """``model``'s state dict in a made-up layout: every key under ``net.``, plus a key to drop."""
    sd = {"net." + k: v.clone() for k, v in model.state_dict().items()}
    sd["aux.marker"] = torch.zeros(1)
    sd["aux.teacher"] = torch.ones(3)
    return sd


class NetPrefixed(CheckpointFormat):
    """A layout with every key under ``net.``: it converts, drops ``aux.*`` and knows its model."""

    def detect(self, sd):
        return "aux.marker" in sd

    def convert(self, sd, model):
        out = {k[4:]: v for k, v in sd.items() if k.startswith("net.")}
        return Conversion(out, ignored=sorted(k for k in sd if k.startswith("aux.")), fresh=[])

    def describe(self, sd, num_mel_bins=128):
        return ("audiomae_tiny", {"target_length": T}) if self.detect(sd) else None


@pytest.fixture
def net_format():
    avmae.register_checkpoint_format("net-prefixed")(NetPrefixed)
    yield
    CHECKPOINT_FORMATS.remove("net-prefixed")


def test_a_registered_format_is_detected_converted_and_described(tmp_path, net_format):
    src = avmae.create_model("audiomae_tiny", target_length=T)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    path = tmp_path / "foreign.pth"
    torch.save(_marked(src), path)
    assert "net-prefixed" in CHECKPOINT_FORMATS.names()
    # built by the caller
    model = avmae.create_model("audiomae_tiny", target_length=T)
    rep = load_checkpoint(model, path)
    assert rep.format == "net-prefixed" and rep.ignored == ["aux.marker", "aux.teacher"]
    assert torch.equal(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    # built from the file alone: the format's describe names the model
    model, rep = load_pretrained(path)
    assert rep.source == "detected" and rep.model_name == "audiomae_tiny" and rep.format == "net-prefixed"
    assert torch.equal(model.norm.weight, src.norm.weight)
    with pytest.raises(RegistryError, match="already registered"):
        avmae.register_checkpoint_format("net-prefixed")(NetPrefixed)


def test_formats_are_tried_by_priority_and_unknown_layouts_list_them(tmp_path):
    names = [f.name for f in checkpoint_formats()]
    assert names[0] == "avmae" and names[-1] == "audiomae" and {"ast", "cav-mae"} <= set(names)
    path = tmp_path / "odd.pth"
    torch.save({"something.else": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout.*known formats: .*audiomae"):
        load_checkpoint(avmae.create_model("audiomae_tiny", target_length=T), path)
    with pytest.raises(CheckpointError, match="odd.pth: unrecognised checkpoint layout.*model_name="):
        load_pretrained(path)


def test_a_format_from_an_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "avmae_fmtplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from avmae.checkpoint import CheckpointFormat, Conversion

            class Upper(CheckpointFormat):
                def detect(self, sd):
                    return "UPPER" in sd
                def convert(self, sd, model):
                    return Conversion({}, ignored=list(sd), fresh=[])
            """
        )
    )
    dist = tmp_path / "avmae_fmtplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: avmae_fmtplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[avmae.checkpoint_formats]\nupper = avmae_fmtplugin:Upper\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        CHECKPOINT_FORMATS.load_plugins(force=True)
        assert CHECKPOINT_FORMATS.source("upper") == "plugin avmae_fmtplugin:Upper"
        assert [f.name for f in checkpoint_formats() if f.detect({"UPPER": torch.zeros(1)})] == ["upper"]
    finally:
        CHECKPOINT_FORMATS.remove("upper")
        CHECKPOINT_FORMATS._plugins_loaded = False
        sys.modules.pop("avmae_fmtplugin", None)

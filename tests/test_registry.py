"""Registry behaviour and entry-point plugins, with a real plugin package on sys.path."""

import subprocess
import sys
import textwrap

import pytest
import torch

import avmae
from avmae.registry import DECODERS, PluginError, Registry, RegistryError


def test_lists_are_sorted_and_contain_builtins():
    assert avmae.list_decoders() == sorted(avmae.list_decoders())
    assert {"global", "swin", "hybrid"} <= set(avmae.list_decoders())
    assert "audio" in avmae.list_modalities()
    models = avmae.list_models()
    assert models == sorted(models)
    assert {"audiomae_vit_base", "audiomae_vit_base_cls", "audiomae_tiny"} <= set(models)
    assert avmae.list_models("audiomae_vit_base*") == ["audiomae_vit_base", "audiomae_vit_base_cls"]


def test_unknown_name_lists_valid_ones():
    with pytest.raises(RegistryError) as e:
        avmae.create_model("audiomae_vit_bsae")
    assert "audiomae_vit_base" in str(e.value) and "audiomae_vit_bsae" in str(e.value)
    with pytest.raises(RegistryError, match="swin"):
        avmae.get_decoder("nope")


def test_duplicate_registration_raises():
    reg = Registry("thing", "avmae.test_things")
    reg.add("a", object)
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("a", object)


def test_type_check_on_register():
    with pytest.raises(TypeError, match="nn.Module"):
        DECODERS.add("not_a_module", int)
    assert "not_a_module" not in DECODERS


PLUGIN_SRC = '''
import torch.nn as nn
from avmae.decoders import Decoder
from avmae.layers import make_block


class TinyMlpDecoder(Decoder):
    """A plugin decoder: a per-token MLP, no attention."""

    def __init__(self, *, depth=1, hidden=32, **kw):
        kw.pop("num_heads", None)
        super().__init__(**kw)
        d = self.embed_dim
        mlp = lambda: nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))  # noqa: E731
        self.blocks = nn.ModuleList([mlp() for _ in range(depth)])

    def forward_blocks(self, cls, tokens):
        out = {}
        for m, x in tokens.items():
            for blk in self.blocks:
                x = x + blk(x)
            out[m] = x
        return out


def broken_factory():
    raise RuntimeError("never built")
'''


def _make_plugin(root, eps: str, name="avmae_testplugin"):
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN_SRC)
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(eps))
    return root


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    _make_plugin(tmp_path, "[avmae.decoders]\ntiny_mlp = avmae_testplugin:TinyMlpDecoder\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    DECODERS.remove("tiny_mlp")
    sys.modules.pop("avmae_testplugin", None)
    DECODERS._plugins_loaded = False


def test_plugin_decoder_is_listed_built_and_trains(plugin_path):
    DECODERS.load_plugins(force=True)
    assert "tiny_mlp" in avmae.list_decoders()
    assert DECODERS.source("tiny_mlp").startswith("plugin avmae_testplugin")
    model = avmae.create_model("audiomae_tiny", decoder="tiny_mlp", decoder_params={"hidden": 16}, target_length=64)
    assert type(model.decoder).__name__ == "TinyMlpDecoder"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(2, 1, 64, 128)
    noise = {"audio": torch.rand(2, 32)}
    before = model({"audio": x}, noise=noise).loss.item()
    for _ in range(5):
        loss = model({"audio": x}, noise=noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model({"audio": x}, noise=noise).loss.item() < before


def test_plugin_discovered_in_a_fresh_process(plugin_path):
    code = "import avmae; print(','.join(avmae.list_decoders()))"
    env = {"PYTHONPATH": str(plugin_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**__import__("os").environ, **env}
    )
    assert out.returncode == 0, out.stderr
    assert "tiny_mlp" in out.stdout.split(",")[-1] or "tiny_mlp" in out.stdout
    off = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env, "AVMAE_DISABLE_PLUGINS": "1"},
    )
    assert off.returncode == 0, off.stderr
    assert "tiny_mlp" not in off.stdout


def test_broken_plugin_names_itself(tmp_path, monkeypatch):
    _make_plugin(tmp_path, "[avmae.test_broken]\nbad = avmae_missing_module:Thing\n", name="avmae_brokenplugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("decoder", "avmae.test_broken")
    with pytest.raises(PluginError, match="'bad'.*avmae_missing_module"):
        reg.names()


def test_plugin_of_wrong_type_is_refused(tmp_path, monkeypatch):
    _make_plugin(
        tmp_path,
        "[avmae.test_wrongtype]\nnotamodule = avmae_wrongplugin:broken_factory\nanint = builtins:len\n",
        name="avmae_wrongplugin",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("decoder", "avmae.test_wrongtype", check=lambda o: None if isinstance(o, type) else "not a class")
    with pytest.raises(PluginError, match="not a class"):
        reg.names()
    sys.modules.pop("avmae_wrongplugin", None)

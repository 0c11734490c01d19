"""examples/my_ext, the plugin walkthrough of docs/plugins.md, as a real distribution: built and
installed (pip, into a folder of its own), listed by ``avmae models``, trained with through the CLI
with every one of its seven entries and their options, rebuilt from the checkpoint alone; and the
page shows the package's files, not copies."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "my_ext"
ENTRIES = {
    "models": "my_ext_tiny",
    "modalities": "scaled_audio",
    "decoders": "mlp_decoder",
    "maskers": "every_other_row",
    "objectives": "masked_l1",
    "tasks": "noisy_pretrain",
    "datasets": "gained_audio",
}


def test_the_plugin_page_shows_the_packages_files():
    page = (REPO / "docs" / "plugins.md").read_text()
    shown = re.findall(r"<!-- readme-test: skip, the file (\S+) -->\n```\w+\n(.*?)\n```\n", page, re.S)
    files = sorted(str(p.relative_to(REPO)) for p in EXAMPLE.rglob("*") if p.suffix in (".py", ".toml", ".yaml"))
    files = [f for f in files if not f.endswith("__init__.py")]
    assert sorted(path for path, _ in shown) == files
    for path, text in shown:
        assert text == (REPO / path).read_text().rstrip(), f"docs/plugins.md shows an old copy of {path}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """examples/my_ext built and installed by pip into a folder of its own (no dependencies: avmae is here)."""
    tmp = tmp_path_factory.mktemp("my_ext")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    site = tmp / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (site / "my_ext-0.1.0.dist-info" / "entry_points.txt").is_file()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    return site, env


def _avmae(env, cwd, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "avmae", *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_an_installed_plugin_adds_seven_entries_and_trains_through_the_cli(installed, tmp_path):
    from avmae.data import ensure_demo_audio

    site, env = installed
    listed = _avmae(env, tmp_path, "models")
    assert listed.returncode == 0, listed.stderr[-2000:]
    for group, name in ENTRIES.items():
        assert f"  {name}" in listed.stdout, (group, listed.stdout)
    demo = ensure_demo_audio(tmp_path / "demo", num_train_per_class=2, num_eval_per_class=1, seconds=0.7)
    data = [f"data.train_manifest={demo / 'train.json'}", f"data.label_csv={demo / 'class_labels_indices.csv'}"]
    bad = _avmae(env, tmp_path, "train", "--config", EXAMPLE / "train.yaml", *data, "data.params.gain=1")
    assert bad.returncode == 2
    assert "data.params.gain: not an option of dataset 'gained_audio'; its options: gain_db" in bad.stderr
    out = tmp_path / "run"
    proc = _avmae(
        env, tmp_path, "train", "--config", EXAMPLE / "train.yaml", "--output-dir", out, *data, "schedule.max_steps=2"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/l1_audio" in r]
    assert len(steps) == 2 and all(math.isfinite(r["train/l1_audio"]) for r in steps)  # the objective ran
    assert all(r["train/input_noise_std"] == pytest.approx(0.05) for r in steps)  # the task, with its option
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["dataset"] == "gained_audio" and saved["data"]["params"] == {"gain_db": 6.0}
    assert saved["task_params"] == {"noise_std": 0.05}
    # a fresh process rebuilds the model, every plugin part in it, from the checkpoint alone
    code = (
        "import sys; from avmae.hub import load_pretrained; m, r = load_pretrained(sys.argv[1]); "
        "print(r.model_name, type(m.modalities['audio']).__name__, m.modalities['audio'].input_scale,"
        " type(m.decoder).__name__, type(m.maskers['audio']).__name__, m.maskers['audio'].jitter,"
        " type(m.objectives[0]).__name__)"
    )
    again = subprocess.run(
        [sys.executable, "-c", code, str(out)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.split() == [
        "my_ext_tiny",
        "ScaledAudio",
        "0.5",
        "MlpDecoder",
        "EveryOtherRow",
        "0.3",
        "MaskedL1",
    ]

"""Every tool turns a user's mistake into one line (the path, the reason, what to do), a non-zero
exit status and no traceback: a refused pickle, a legacy-format pickle payload, a truncated
safetensors file, an output path that cannot be written. torch's own refusal text (which suggests
turning ``weights_only`` off) never reaches the user. One bad clip under ``data.on_error=raise``
stops training with one line naming the file and ``data.on_error=skip``, also through DataLoader
workers."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from cli_runs import REPO, child_env, clips, run_yaml  # noqa: F401 - fixtures

import avmae
from avmae.data import ensure_demo_audio, save_audio
from avmae.errors import explain, one_line, writable_output

pytestmark = pytest.mark.usefixtures("one_thread")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_TOOL",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tool_errors")
    model = avmae.create_model("audiomae_tiny", target_length=32, num_mel_bins=32)
    good = avmae.save_checkpoint(model, root / "good.safetensors")
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:1000])
    payload = {"model": {k: v for k, v in model.state_dict().items()}, "args": _Payload()}
    torch.save(payload, root / "payload.pth")
    torch.save(payload, root / "legacy_payload.pth", _use_new_zipfile_serialization=False)
    blocker = root / "blocker"
    blocker.write_text("a regular file\n")
    t = torch.arange(8000) / 16000
    audio = save_audio(root / "tone.wav", (0.3 * torch.sin(2 * torch.pi * 440 * t)).reshape(1, -1), 16000)
    return {
        "root": root,
        "good": good,
        "truncated": truncated,
        "payload": root / "payload.pth",
        "legacy": root / "legacy_payload.pth",
        "blocker": blocker,
        "audio": audio,
    }


def _check_one_line(stderr, must, rc, case):
    assert rc not in (0, None), f"{case}: exit status {rc}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, f"{case}:\n{stderr[-3000:]}"
    assert "weights_only" not in stderr, f"{case}: torch's hint leaked\n{stderr[-3000:]}"
    lines = [line for line in stderr.splitlines() if all(m in line for m in must)]
    assert len(lines) == 1, f"{case}: no single line with {must}\n{stderr[-3000:]}"
    return lines[0]


def test_each_tool_prints_one_line_for_a_bad_checkpoint_or_output(files, run_yaml, tmp_path):
    """Through the command line, all at once (one process per tool)."""
    f = files
    under = str(f["blocker"] / "out")

    def tool(name):
        return [sys.executable, REPO / "tools" / name]

    cases = {
        "extract, refused pickle": (
            [*tool("extract.py"), f["audio"], "-c", f["payload"], "-o", tmp_path / "emb", "--no-progress"],
            ["checkpoint error:", str(f["payload"]), "posix.system", "trusted"],
        ),
        "visualize, truncated safetensors": (
            [*tool("visualize.py"), f["audio"], "-c", f["truncated"], "-o", tmp_path / "r.png"],
            ["checkpoint error:", str(f["truncated"]), "truncated"],
        ),
        "convert, legacy pickle payload": (
            [*tool("convert_checkpoint.py"), f["legacy"], "--out", tmp_path / "c.safetensors"],
            ["checkpoint error:", str(f["legacy"]), "posix.system"],
        ),
        "evaluate, output under a file": (
            [*tool("evaluate.py"), "-c", f["good"], "--output", f"{under}/eval.json", "--cpu"],
            ["error:", under, "is a file, not a folder"],
        ),
        "prepare_data, output under a file": (
            [*tool("prepare_data.py"), "manifest", f["root"], "--out", f"{under}/m.json"],
            ["error:", under, "is a file, not a folder"],
        ),
        "train, output folder under a file": (
            [*tool("train.py"), "--config", run_yaml, "--output-dir", f"{under}/run"],
            ["error:", under, "is a file, not a folder"],
        ),
    }
    procs = {
        case: subprocess.Popen(
            [str(a) for a in cmd],
            cwd=tmp_path,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, (cmd, _) in cases.items()
    }
    for case, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        _check_one_line(err, cases[case][1], proc.returncode, case)
    assert not (tmp_path / "PWNED_BY_TOOL").exists()


@pytest.fixture(scope="module")
def tools():
    from conftest import import_tool

    return {name: import_tool(name) for name in ("extract", "visualize", "convert_checkpoint", "evaluate")}


@pytest.mark.parametrize("bad", ["payload", "legacy", "truncated"])
@pytest.mark.parametrize("tool", ["extract", "visualize", "convert_checkpoint", "evaluate"])
def test_every_tool_and_every_bad_checkpoint(files, tools, tmp_path, capsys, monkeypatch, tool, bad):
    """In this process: the same handling for every tool and every kind of bad checkpoint."""
    monkeypatch.chdir(tmp_path)
    f, path = files, str(files[bad])
    argv = {
        "extract": [str(f["audio"]), "-c", path, "-o", str(tmp_path / "emb"), "--no-progress"],
        "visualize": [str(f["audio"]), "-c", path, "-o", str(tmp_path / "r.png")],
        "convert_checkpoint": [path, "--out", str(tmp_path / "c.safetensors")],
        "evaluate": ["-c", path, "--cpu", "--num-workers", "0"],
    }[tool]
    rc = tools[tool].main(argv)
    line = _check_one_line(capsys.readouterr().err, ["checkpoint error:", path], rc, f"{tool}, {bad}")
    assert ("posix.system" in line) if bad != "truncated" else ("truncated" in line)
    assert not (tmp_path / "PWNED_BY_TOOL").exists()


@pytest.mark.parametrize("tool", ["extract", "visualize", "convert_checkpoint"])
def test_outputs_that_cannot_be_written_fail_before_any_work(files, tools, tmp_path, capsys, monkeypatch, tool):
    out = files["blocker"] / "sub" / ("x.png" if tool == "visualize" else "x.safetensors")
    argv = {
        "extract": [str(files["audio"]), "-c", str(files["good"]), "-o", str(out), "--no-progress"],
        "visualize": [str(files["audio"]), "-c", str(files["good"]), "-o", str(out)],
        "convert_checkpoint": [str(files["good"]), "--out", str(out)],
    }[tool]
    monkeypatch.setattr(
        "avmae.hub.load_pretrained", lambda *a, **k: pytest.fail("loaded the model before checking the output")
    )
    rc = tools[tool].main(argv)
    _check_one_line(capsys.readouterr().err, ["error:", str(files["blocker"]), "is a file, not a folder"], rc, tool)
    # not writable (as root every folder is: the check is simulated)
    monkeypatch.setattr("avmae.errors.os.access", lambda *a: False)
    rc = tools[tool].main([a.replace(str(out), str(tmp_path / "ro" / out.name)) for a in argv])
    _check_one_line(capsys.readouterr().err, ["error:", str(tmp_path / "ro"), "permission denied"], rc, tool)


def test_one_line_of_errors_and_of_worker_tracebacks():
    wrapped = (
        "Caught MediaError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 3, in f\n    raise MediaError(p, r)\navmae.data.io.MediaError: /d/a.wav: no audio stream'
    )
    assert one_line(wrapped) == "/d/a.wav: no audio stream"
    assert one_line("a\n  b\n") == "a b"
    line, status = explain(NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x/file/out"))
    assert (
        status == 1 and line == "error: /x/file/out: a part of this path is a file, not a folder: choose another path"
    )
    assert explain(RuntimeError("a bug")) is None  # not the user's to fix: keeps its traceback
    with pytest.raises(NotADirectoryError):
        writable_output("/dev/null/x/y")


# ------------------------------------------------------------------------------ one bad clip
@pytest.fixture(scope="module")
def one_broken(tmp_path_factory):
    root = ensure_demo_audio(
        tmp_path_factory.mktemp("one_bad") / "demo", num_train_per_class=1, num_eval_per_class=1, seconds=0.5
    )
    items = json.loads((root / "train.json").read_text())["data"]
    (root / "broken.wav").write_text("not audio\n" * 20)
    items[1] = {"wav": "broken.wav", "labels": ""}
    (root / "mixed.json").write_text(json.dumps({"data": items}))
    return root, str((root / "broken.wav").resolve())


@pytest.mark.parametrize("workers", [0, 2])
def test_one_bad_clip_under_on_error_raise_is_one_line_naming_the_setting(one_broken, run_yaml, tmp_path, workers):
    root, broken = one_broken
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "train.py"),
            "--config",
            str(run_yaml),
            "--output-dir",
            str(tmp_path / "run"),
            f"data.train_manifest={root / 'mixed.json'}",
            f"data.num_workers={workers}",
            "data.cache=false",
        ],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("data error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert broken in lines[0] and "data.on_error=skip" in lines[0]

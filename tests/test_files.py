"""avmae.files: atomic replacement of a file (several processes at once) and the one JSON policy."""

import math
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from avmae.files import atomic_path, atomic_write

SIZE = 1 << 16  # a write larger than one page, so a torn write would show


def _writer(path: str, byte: int, times: int) -> None:
    for _ in range(times):
        atomic_write(path, bytes([byte]) * SIZE)


def test_atomic_write_text_and_bytes(tmp_path):
    path = tmp_path / "sub" / "a.txt"  # the folder is created
    assert atomic_write(path, "héllo\n") == path
    assert path.read_bytes() == "héllo\n".encode()
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]  # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_gives_the_umask_mode(tmp_path, umask):
    before = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "a.json", "{}")
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a temporary file


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(path, b"old")
    with pytest.raises(RuntimeError, match="disk"), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_concurrent_writers_never_leave_a_partial_file(tmp_path):
    path = tmp_path / "shared.bin"
    atomic_write(path, b"\xff" * SIZE)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), b, 150)) for b in range(4)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs) or reads == 0:
        data = path.read_bytes()  # a reader sees one whole version, never a mix or a part
        assert len(data) == SIZE and data == data[:1] * SIZE
        reads += 1
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert path.read_bytes()[0] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


# ------------------------------------------------------------------------------ JSON policy


def test_json_policy_writes_nonfinite_numbers_as_null():
    import json

    import numpy as np
    import torch

    from avmae.files import to_json

    obj = {"nan": float("nan"), "inf": float("inf"), 1: (-math.inf, 0.5), "t": torch.tensor(2.5), "a": np.arange(2)}
    text = to_json(obj)
    assert json.loads(text) == {"nan": None, "inf": None, "1": [None, 0.5], "t": 2.5, "a": [0, 1]}
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: any parser reads it
    with pytest.raises(TypeError):
        to_json({"x": object()})  # not JSON and no default: refused, not written as garbage
    assert json.loads(to_json({"p": Path("a/b")}, default=str)) == {"p": "a/b"}


def test_metrics_and_finetune_json_share_the_policy_and_read_back(tmp_path):
    import json

    from avmae.files import write_json
    from avmae.train.logging_utils import MetricsWriter, read_metrics

    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    record = writer.write(3, {"train/loss": float("nan"), "train/lr": 0.1})
    assert math.isnan(record["train/loss"])  # in memory the value stays what it was
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "step": 3,
        "time": record["time"],
        "train/loss": None,
        "train/lr": 0.1,
    }
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["train/loss"] is None
    # a file written before the policy held the strings "nan"/"inf": still read, as floats
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "eval/acc": "nan", "eval/loss": "inf", "note": "x"}\n')
    old = read_metrics(tmp_path / "metrics.jsonl", prefix="eval/")[0]
    assert math.isnan(old["eval/acc"]) and old["eval/loss"] == math.inf and old["note"] == "x"
    write_json(tmp_path / "per_class.json", {"ap": [float("nan"), 1.0]})
    assert json.loads((tmp_path / "per_class.json").read_text()) == {"ap": [None, 1.0]}

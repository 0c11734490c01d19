"""avmae.files: atomic replacement of a file (several processes at once) and the one JSON policy."""

import multiprocessing as mp
import os

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

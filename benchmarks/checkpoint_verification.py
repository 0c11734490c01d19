#!/usr/bin/env python
"""What verified checkpoints cost: the manifest of a save (sha256 and fsync of every file) and
the verification of a resume, on a ViT-B-sized checkpoint and on the tiny test run's.

    python benchmarks/checkpoint_verification.py [--dir /tmp/ckpt-bench] [--repeats 3]

A ViT-B fine-tuning checkpoint (``audiomae_vit_base_cls``, 86 M parameters): ``model.safetensors``
344 MB, ``optimizer.bin`` 688 MB (AdamW's two moments); the pretraining model with its decoder
(137 M parameters) is 548 MB + 1.1 GB. Files are written with random bytes (hashing does not
depend on the content), then timed: writing them (what a save costs anyway), ``write_manifest``
(hash + fsync of each file, the manifest, the folder), and the resume's checks (sizes only, and
hashes). The page cache is warm throughout (a resume right after a save); a cold read adds the
disk's read time. Best of ``--repeats``, seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avmae.run_folder import checkpoint_problem, file_sha256, write_manifest  # noqa: E402

VIT_B = {
    "model.safetensors": 344_213_564 + 2_000,
    "optimizer.bin": 688_426_000,
    "random_states_0.pkl": 14_433,
    "trainer_state.json": 131,
    "config.yaml": 1_377,
}


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _write(folder: Path, sizes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 22)
    for name, size in sizes.items():
        with open(folder / name, "wb") as f:
            left = size
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)


def _fsync_all(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def bench(folder: Path, sizes, repeats: int) -> None:
    total = sum(sizes.values()) / 1e6
    w = _best(lambda: (shutil.rmtree(folder, ignore_errors=True), _write(folder, sizes)), repeats)
    rows = [("write the files (page cache)", w)]
    rows.append(("sha256 of every file (warm)", _best(lambda: [file_sha256(f) for f in folder.iterdir()], repeats)))
    rows.append(
        ("fsync of freshly written files", _best(lambda: (_write(folder, sizes), _fsync_all(folder)), repeats) - w)
    )
    manifest = _best(lambda: (_write(folder, sizes), write_manifest(folder)), repeats) - w
    rows.append(("write_manifest after a fresh write (hash + fsync)", manifest))
    rows.append(("resume check, sizes (listing)", _best(lambda: checkpoint_problem(folder), repeats)))
    rows.append(("resume check, hashes (warm)", _best(lambda: checkpoint_problem(folder, deep=True), repeats)))
    print(f"\n{folder.name}: {len(sizes)} files, {total:.0f} MB")
    for what, sec in rows:
        print(
            f"  {what:<52} {sec:8.3f} s"
            + (f"   {total / sec:7.0f} MB/s" if sec > 0.01 and "check, sizes" not in what else "")
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/avmae-ckpt-bench")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    root = Path(args.dir)
    try:
        print(f"hashlib sha256 ({hashlib.sha256().name}), python {sys.version.split()[0]}")
        bench(root / "vit_b_finetune", VIT_B, args.repeats)
        tiny = {
            "model.safetensors": 960_384,
            "optimizer.bin": 1_949_579,
            "random_states_0.pkl": 14_433,
            "trainer_state.json": 131,
            "config.yaml": 1_377,
        }
        bench(root / "tiny_test_run", tiny, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

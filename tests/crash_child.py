"""tools/train.py with two test hooks, run as a subprocess by tests/test_crash_safety.py.

    python tests/crash_child.py [--pause-at STEP] [--hang-in-save STEP] [--die-at-fsync STEP:K]
        [--die-in-rotation STEP] -- <tools/train.py arguments>

``--pause-at STEP``: after optimizer step STEP, write ``<output_dir>/paused`` and wait (up to
120 s) for a signal, so that a SIGTERM sent by the test arrives at a known step.
``--hang-in-save STEP``: while saving the checkpoint of STEP, once every file of it is written and
before its temporary folder is renamed into place, write ``<output_dir>/saving`` and sleep, so
that the test can SIGKILL the process in the middle of the save.
``--die-at-fsync STEP:K``: SIGKILL itself just before the K-th ``os.fsync`` of the checkpoint save
of STEP: after the weights file (K=1, 2), between the files the manifest flushes, before the
manifest, after the rename, after a rotated folder became ``.trash-*`` (the last ones).
``--die-in-rotation STEP``: SIGKILL itself in the middle of deleting the folder that the save of
STEP rotates out (one of its files deleted).

Run by ``torchrun`` / ``python -m avmae.launch`` too (each process runs the hooks).

    python tests/crash_child.py --serve

A fork server for tests that start many short runs: it imports torch, avmae and tools/train.py
once, then for each JSON line ``{"argv": [...], "log": PATH}`` on stdin forks a child that starts a
new session (its own process group), sends its output to PATH and runs the arguments above; the
server prints the child's pid and, when the child ends, writes its exit status (negative: killed
by that signal) to ``PATH.rc``. A child is a real process running tools/train.py's ``main``; it
only skips the interpreter start and the imports (seconds each on a 2-core machine).
"""

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from avmae.train import Trainer  # noqa: E402


def load_tool():
    """The module behind tools/train.py (the package's ``avmae train``)."""
    return importlib.import_module("avmae.cli.train")


def main(argv=None, tool=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pause-at", type=int, default=None)
    p.add_argument("--hang-in-save", type=int, default=None)
    p.add_argument("--die-at-fsync", default=None, metavar="STEP:K")
    p.add_argument("--die-in-rotation", type=int, default=None, metavar="STEP")
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    out = Path(train_args[train_args.index("--output-dir") + 1])
    torch.set_num_threads(1)  # the same arithmetic as the uninterrupted run it is compared with

    if args.pause_at is not None:

        def after_step(self, step):
            if step == args.pause_at:
                (out / "paused").write_text(str(step))
                deadline = time.monotonic() + 120
                while self.stop.signal is None and time.monotonic() < deadline:
                    time.sleep(0.02)

        Trainer.after_step = after_step

    if args.hang_in_save is not None:
        real_replace = os.replace
        tmp_name = f".tmp-step_{args.hang_in_save:07d}"

        def replace(src, dst, *a, **k):
            if Path(src).name == tmp_name:  # the checkpoint folder, complete, about to be renamed
                (out / "saving").write_text(str(src))
                time.sleep(600)
            return real_replace(src, dst, *a, **k)

        os.replace = replace

    if args.die_at_fsync is not None or args.die_in_rotation is not None:
        from avmae.train import checkpointing

        saving = {"step": None, "fsyncs": 0}
        real_save = checkpointing.RunCheckpoints.save

        def save(self, state):
            saving["step"], saving["fsyncs"] = state.step, 0
            try:
                return real_save(self, state)
            finally:
                saving["step"] = None

        checkpointing.RunCheckpoints.save = save

        def die():
            os.kill(os.getpid(), signal.SIGKILL)

        if args.die_at_fsync is not None:
            step, k = (int(x) for x in args.die_at_fsync.split(":"))
            real_fsync = os.fsync

            def fsync(fd):
                if saving["step"] == step:
                    saving["fsyncs"] += 1
                    if saving["fsyncs"] == k:
                        die()
                return real_fsync(fd)

            os.fsync = fsync

        if args.die_in_rotation is not None:
            real_rmtree = shutil.rmtree

            def rmtree(path, *a, **k):
                name = Path(path).name
                if saving["step"] == args.die_in_rotation and (name.startswith((".trash-step_", "step_"))):
                    files = sorted(p for p in Path(path).iterdir() if p.is_file())
                    files[len(files) // 2].unlink()
                    die()
                return real_rmtree(path, *a, **k)

            shutil.rmtree = rmtree

    return (tool or load_tool()).main(train_args)


def _reap(pid: int, log: str) -> None:
    _, status = os.waitpid(pid, 0)
    Path(log + ".rc.tmp").write_text(str(os.waitstatus_to_exitcode(status)))
    os.replace(log + ".rc.tmp", log + ".rc")


def serve() -> int:
    tool = load_tool()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: a job of its own
            os.setsid()
            fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            try:
                rc = main(request["argv"], tool)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc or 0)
        threading.Thread(target=_reap, args=(pid, request["log"]), daemon=True).start()
        print(pid, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main())

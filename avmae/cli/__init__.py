"""The ``avmae`` command: one entry point for every tool, installed with the package.

    avmae <command> [args...]      (``avmae <command> --help`` for a command's own options)

Each command is a module of this package with a ``main(argv) -> int``: ``avmae train`` runs
``avmae.cli.train.main``. ``tools/<script>.py`` of a source checkout are thin wrappers over the
same functions (``python tools/train.py`` is ``avmae train``). This package is the top layer:
the library never imports it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Dict, List, Optional, Tuple

__all__ = ["COMMANDS", "main", "command_main"]

# command -> (module in avmae.cli, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "train": ("train", "pretrain or fine-tune a model from a config (--config NAME|PATH, --modality audio|av)"),
    "finetune": ("finetune", "fine-tune a classifier on a labelled folder or manifest, planned from the data"),
    "evaluate": ("evaluate", "evaluate a checkpoint: accuracy / mAP, reconstruction, retrieval, kNN / linear probe"),
    "extract": ("extract", "embeddings of files, folders or manifests from any encoder checkpoint"),
    "visualize": ("visualize", "reconstruction plot of a pretraining checkpoint on an audio file"),
    "prepare": ("prepare", "dataset preparation: manifest, stats, weights, frames, shards"),
    "convert": ("convert", "convert checkpoints: official AudioMAE / timm <-> avmae"),
    "benchmark": ("benchmark", "throughput and memory of models"),
    "models": ("models", "list what is registered: models, decoders, modalities, maskers, objectives, tasks, ..."),
    "configs": ("configs", "list the shipped configs (by the name --config takes) or print one"),
}


def command_main(command: str):
    """The ``main(argv)`` of ``command``'s module."""
    return importlib.import_module(f"{__name__}.{COMMANDS[command][0]}").main


def _code(status) -> int:
    if status is None:
        return 0
    if isinstance(status, int):
        return status
    print(status, file=sys.stderr)
    return 1


def list_all(pattern: str = "") -> str:
    """Every registry's names (``avmae models``)."""
    from .models import list_all as _list_all

    return _list_all(pattern)


def _help() -> str:
    width = max(len(c) for c in COMMANDS)
    rows = "\n".join(f"  {c:<{width}}  {h}" for c, (_, h) in COMMANDS.items())
    return (
        "usage: avmae <command> [args...]\n\n"
        "Masked-autoencoder self-supervised learning on audio and audio-visual data.\n\n"
        f"commands:\n{rows}\n\n"
        "Run 'avmae <command> --help' for a command's options."
    )


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_help())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        import avmae

        print(f"avmae {avmae.__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"avmae: unknown command {command!r}\n\n{_help()}", file=sys.stderr)
        return 2
    try:
        return _code(command_main(command)(rest))
    except SystemExit as exc:  # argparse --help / errors
        return _code(exc.code)


if __name__ == "__main__":
    sys.exit(main())

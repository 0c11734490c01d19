"""The ``avmae`` command: one entry point for the tools of a source checkout.

    avmae <command> [args...]      (``avmae <command> --help`` for a command's own options)

Each command runs ``main(argv)`` of a script in the checkout's ``tools/`` folder (found beside the
package, ``<repo>/tools/<script>.py``, or in ``$AVMAE_TOOLS_DIR``); ``models`` is built in.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["COMMANDS", "main", "tools_dir", "run_tool"]

# command -> (script in tools/, one-line help)
COMMANDS: Dict[str, Tuple[Optional[str], str]] = {
    "train": ("train.py", "pretrain or fine-tune a model from a config (tools/train.py)"),
    "finetune": ("finetune.py", "fine-tune a classifier on a labelled folder or manifest, planned from the data"),
    "evaluate": ("evaluate.py", "evaluate a checkpoint: accuracy / mAP, reconstruction, retrieval, kNN / linear probe"),
    "extract": ("extract.py", "embeddings of files, folders or manifests from any encoder checkpoint"),
    "visualize": ("visualize.py", "reconstruction plot of a pretraining checkpoint on an audio file"),
    "prepare": ("prepare_data.py", "dataset preparation: manifest, stats, weights, frames, shards"),
    "convert": ("convert_checkpoint.py", "convert checkpoints: official AudioMAE / timm <-> avmae"),
    "benchmark": ("benchmark.py", "throughput and memory of models (tools/benchmark.py)"),
    "models": (None, "list what is registered: models, decoders, modalities, maskers, objectives, tasks, datasets"),
}


def tools_dir() -> Path:
    """Where the tool scripts are: ``$AVMAE_TOOLS_DIR``, else ``tools/`` next to the package."""
    env = os.environ.get("AVMAE_TOOLS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "tools"


class ToolNotFound(RuntimeError):
    pass


def _load(script: Path) -> Optional[Callable[[List[str]], Optional[int]]]:
    """The script's ``main``, or None when it has none (it is then run as ``__main__``)."""
    spec = importlib.util.spec_from_file_location(f"avmae_tool_{script.stem}", script)
    if spec is None or spec.loader is None:
        raise ToolNotFound(f"cannot load {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up
    spec.loader.exec_module(module)
    fn = getattr(module, "main", None)
    return fn if callable(fn) else None


def run_tool(command: str, argv: List[str]) -> int:
    """Run ``tools/<script>.py`` of ``command`` with ``argv``. -> exit status."""
    script_name, _ = COMMANDS[command]
    assert script_name is not None, f"{command} is built in"
    script = tools_dir() / script_name
    if not script.is_file():
        raise ToolNotFound(
            f"'avmae {command}' runs {script_name} from the tools/ folder of a source checkout, and there is none at"
            f" {script}. Install avmae from a clone (pip install -e .) or point AVMAE_TOOLS_DIR at the tools/ folder."
        )
    main_fn = _load(script)
    if main_fn is not None:
        try:
            status = main_fn(list(argv))
        except SystemExit as exc:  # argparse --help / errors
            return _code(exc.code)
        return _code(status)
    saved = sys.argv
    sys.argv = [str(script)] + list(argv)
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return _code(exc.code)
    finally:
        sys.argv = saved
    return 0


def _code(status) -> int:
    if status is None:
        return 0
    if isinstance(status, int):
        return status
    print(status, file=sys.stderr)
    return 1


def list_all(pattern: str = "") -> str:
    """Every registry's names (built-ins and plugins), one section each."""
    import avmae.train  # noqa: F401  (registers the built-in tasks and dataset builders)
    from avmae.registry import (
        CHECKPOINT_FORMATS,
        DATASETS,
        DECODERS,
        MASKERS,
        MODALITIES,
        MODELS,
        OBJECTIVES,
        TASKS,
    )

    lines = []
    for title, reg in (
        ("models", MODELS),
        ("decoders", DECODERS),
        ("modalities", MODALITIES),
        ("maskers", MASKERS),
        ("objectives", OBJECTIVES),
        ("tasks", TASKS),
        ("datasets (modality: ...)", DATASETS),
        ("checkpoint formats", CHECKPOINT_FORMATS),
    ):
        names = reg.names(pattern)
        lines.append(f"{title} ({len(names)}):")
        lines += [f"  {n}" for n in names]
    return "\n".join(lines)


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
    if command == "models":
        if rest and rest[0] in ("-h", "--help"):
            print(
                "usage: avmae models [PATTERN]\n\nList what is registered, built in or by plugins: models, decoders,"
                " modalities, maskers,\nobjectives, tasks and datasets (fnmatch PATTERN filters them)."
            )
            return 0
        print(list_all(rest[0] if rest else ""))
        return 0
    try:
        return run_tool(command, rest)
    except ToolNotFound as exc:
        print(f"avmae: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

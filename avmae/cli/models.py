"""``avmae models [PATTERN]``: what is registered, built in or by plugins, one section per registry."""

from __future__ import annotations

import sys
from typing import List, Optional

__all__ = ["list_all", "main"]


def list_all(pattern: str = "") -> str:
    """Every registry's names (built-ins and plugins), one section each."""
    import avmae.train  # noqa: F401  (registers the built-in tasks and dataset builders)
    from avmae.registry import (
        CHECKPOINT_FORMATS,
        CONFIG_FOLDERS,
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
        ("datasets (dataset: ...)", DATASETS),
        ("checkpoint formats", CHECKPOINT_FORMATS),
        ("plugin config folders (--config <folder>/<name>)", CONFIG_FOLDERS),
    ):
        names = reg.names(pattern)
        lines.append(f"{title} ({len(names)}):")
        lines += [f"  {n}" for n in names]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: avmae models [PATTERN]\n\nList what is registered, built in or by plugins: models, decoders,"
            " modalities, maskers,\nobjectives, tasks, datasets and checkpoint formats (fnmatch PATTERN filters them)."
        )
        return 0
    print(list_all(argv[0] if argv else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""``python tools/extract.py ARGS`` is ``avmae extract ARGS``; the code is avmae/cli/extract.py."""

import sys
from pathlib import Path

if (Path(__file__).resolve().parents[1] / "avmae" / "__init__.py").is_file():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this clone's avmae, installed or not

from avmae.cli.extract import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

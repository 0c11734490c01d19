"""``avmae configs [NAME]``: the shipped configs, by the name ``--config`` takes; with a name, the file.

    avmae configs                           # demo_audio, audiomae/pretrain_as2m, ...
    avmae configs audiomae/pretrain_as2m    # print it (a delta over the defaults)
    avmae train --config audiomae/pretrain_as2m data.train_manifest=/data/as2m/train.json

A config is a YAML delta over the dataclass defaults of ``avmae.config``; copy one, edit it and pass
its path to ``--config``. ``avmae train --print-config`` shows a merged one.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from avmae.config import CONFIG_DIR, list_configs, resolve_config_path


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="avmae configs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("name", nargs="?", help="print this shipped config (e.g. audiomae/pretrain_as2m)")
    args = p.parse_args(argv)
    if args.name is None:
        print(f"shipped configs ({CONFIG_DIR}):")
        for name in list_configs():
            print(f"  {name}")
        return 0
    path = resolve_config_path(args.name)
    if not path.is_file():
        print(
            f"avmae configs: {args.name}: no such shipped config; valid: {', '.join(list_configs())}", file=sys.stderr
        )
        return 2
    print(path.read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

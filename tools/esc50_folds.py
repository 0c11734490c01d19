#!/usr/bin/env python
"""ESC-50 five-fold cross-validation: per-fold manifests, one fine-tuning run per fold, mean accuracy.

    python tools/esc50_folds.py --esc50 /data/ESC-50-master --output-dir runs/esc50 \\
        checkpoint.init_from=pretrained.pth
    accelerate launch --num_processes 4 tools/esc50_folds.py --esc50 ... --output-dir ...
    python tools/esc50_folds.py --esc50 ... --output-dir ... --prepare-only      # manifests only

ESC50: the dataset folder (github.com/karolpiczak/ESC-50): ``meta/esc50.csv`` (filename, fold,
target, category, ...) and ``audio/*.wav``. Fold k evaluates on the clips of fold k after training on
all the other folds; ``--folds 1,3`` runs a subset. The written files, under OUTPUT_DIR/data/:
``class_labels_indices.csv`` (index = ESC-50 target, mid = category) and
``fold{k}_train.json`` / ``fold{k}_eval.json`` (AudioMAE-format manifests).

Each fold trains with ``--config`` (default: configs/audiomae/finetune_esc50.yaml: 512 frames,
the ESC-50 normalisation stats (-6.6268077, 5.358466)) plus the trailing ``key=value`` overrides,
in OUTPUT_DIR/fold{k}. The reported number is the mean over folds of the accuracy at the end of
training (the usual ESC-50 protocol); the mean of each fold's best evaluation is listed too.
A fold whose ``result.json`` exists is not run again, so an interrupted run continues where it
stopped. Results: OUTPUT_DIR/summary.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, "") and __name__ == "__main__":  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avmae.errors import tool_logging
from avmae.files import atomic_write, write_json  # every process may write the same file: its temp names are unique

DEFAULT_CONFIG = "configs/audiomae/finetune_esc50.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="esc50_folds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--esc50", required=True, help="ESC-50 folder (with meta/esc50.csv and audio/)")
    p.add_argument("--output-dir", required=True, help="manifests, one run folder per fold, summary.json")
    p.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="YAML",
        help=f"fine-tuning config(s) (default: {DEFAULT_CONFIG})",
    )
    p.add_argument("--folds", default=None, help="comma-separated folds to run (default: every fold in the metadata)")
    p.add_argument("--prepare-only", action="store_true", help="write the manifests and label CSV, train nothing")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every fold")
    return p


# ------------------------------------------------------------------------------ manifests


def read_meta(root: Path) -> List[Dict[str, Any]]:
    """Rows of ``meta/esc50.csv`` -> [{"wav", "fold", "target", "category"}], ``wav`` absolute."""
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise SystemExit(f"esc50_folds: {meta} not found (is --esc50 the ESC-50 folder?)")
    with meta.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {"filename", "fold", "target", "category"} - set(rows[0] if rows else ())
    if missing:
        raise SystemExit(f"esc50_folds: {meta} lacks columns {sorted(missing)}")
    audio = (root / "audio").resolve()
    return [
        {
            "wav": str(audio / r["filename"]),
            "fold": int(r["fold"]),
            "target": int(r["target"]),
            "category": r["category"].strip(),
        }
        for r in rows
    ]


def write_fold_files(rows: Sequence[Dict[str, Any]], out: Path) -> Dict[int, Dict[str, Path]]:
    """Label CSV and per-fold train/eval manifests under ``out`` -> {fold: {"train", "eval", "label_csv"}}."""
    names = {}
    for r in rows:
        if names.setdefault(r["target"], r["category"]) != r["category"]:
            raise SystemExit(f"esc50_folds: target {r['target']} is both {names[r['target']]!r} and {r['category']!r}")
    if sorted(names) != list(range(len(names))):
        raise SystemExit(f"esc50_folds: targets must be 0..{len(names) - 1}, got {sorted(names)}")
    label_csv = out / "class_labels_indices.csv"
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "mid", "display_name"])
    writer.writerows([t, names[t], names[t].replace("_", " ").capitalize()] for t in sorted(names))
    atomic_write(label_csv, text.getvalue())
    folds = sorted({r["fold"] for r in rows})
    if len(folds) < 2:
        raise SystemExit(f"esc50_folds: cross-validation needs at least 2 folds, the metadata has {folds}")
    files = {}
    for k in folds:
        paths = {"label_csv": label_csv}
        for split, keep in (("train", lambda r, k=k: r["fold"] != k), ("eval", lambda r, k=k: r["fold"] == k)):
            items = [{"wav": r["wav"], "labels": r["category"]} for r in rows if keep(r)]
            paths[split] = out / f"fold{k}_{split}.json"
            write_json(paths[split], {"data": items})
        files[k] = paths
    return files


# ------------------------------------------------------------------------------ runs


def run_fold(
    fold: int, files: Dict[str, Path], config_files: Sequence[str], overrides: Sequence[str], out: Path
) -> Dict[str, Any]:
    """Fine-tune on the other folds, evaluate on ``fold`` -> {"acc", "best_acc", ...}."""
    from avmae.config import load_config, resolve_config_path
    from avmae.errors import TERMINATED
    from avmae.train import Trainer

    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    cfg = load_config(
        [resolve_config_path(c) for c in config_files],
        [
            f"data.train_manifest={files['train']}",
            f"data.eval_manifest={files['eval']}",
            f"data.label_csv={files['label_csv']}",
            *overrides,
            f"output_dir={out}",
            "resume=true",  # a fold stopped half-way continues from its last checkpoint
        ],
    )
    if cfg.task not in ("finetune", "linprobe"):
        raise SystemExit(f"esc50_folds: the config's task is {cfg.task!r}; ESC-50 needs finetune or linprobe")
    trainer = Trainer(cfg)
    result = trainer.fit()
    if result.interrupted:
        raise SystemExit(TERMINATED)
    record = {
        "fold": fold,
        "acc": result.eval.get("acc"),
        "best_acc": result.eval.get("best_acc"),
        "eval": result.eval,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "output_dir": str(result.output_dir),
        "checkpoint": None if result.last_checkpoint is None else str(result.last_checkpoint),
    }
    if trainer.accelerator.is_main_process:
        write_json(done, record)
    trainer.accelerator.wait_for_everyone()
    return record


def _mean(values: List[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides before and after options
    main_process = tool_logging(all_ranks=True)
    out = Path(args.output_dir).expanduser().resolve()
    rows = read_meta(Path(args.esc50).expanduser())
    files = write_fold_files(rows, out / "data")
    folds = sorted(files)
    if args.folds:
        try:
            chosen = [int(k) for k in args.folds.split(",") if k.strip()]
        except ValueError:
            raise SystemExit(f"esc50_folds: --folds must list fold numbers, got {args.folds!r}") from None
        unknown = sorted(set(chosen) - set(folds))
        if unknown:
            raise SystemExit(f"esc50_folds: folds {unknown} are not in the metadata (folds: {folds})")
        folds = chosen
    if main_process:
        print(f"ESC-50: {len(rows)} clips, {len(files)} folds; manifests in {out / 'data'}")
    if args.prepare_only:
        return 0

    from avmae.config import ConfigError

    results = []
    for k in folds:
        try:
            results.append(run_fold(k, files[k], args.config or [DEFAULT_CONFIG], args.overrides, out / f"fold{k}"))
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        if main_process:
            r = results[-1]
            print(f"fold {k}: acc {r['acc']:.4f} (best {r['best_acc']:.4f}) in {r['seconds']:.0f} s")
    summary = {
        "folds": {
            str(r["fold"]): {"acc": r["acc"], "best_acc": r["best_acc"], "output_dir": r["output_dir"]} for r in results
        },
        "mean_acc": _mean([r["acc"] for r in results]),
        "mean_best_acc": _mean([r["best_acc"] for r in results]),
        "config": args.config or [DEFAULT_CONFIG],
        "overrides": args.overrides,
    }
    if main_process:
        write_json(out / "summary.json", summary)
        print(
            f"ESC-50 mean accuracy over folds {folds}: {summary['mean_acc']:.4f} (mean of best evaluations"
            f" {summary['mean_best_acc']:.4f})"
        )
        print(f"summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

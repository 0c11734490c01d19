#!/usr/bin/env python
"""Evaluate a classifier checkpoint on a labelled manifest: mAP (multi-label) or accuracy.

    python tools/evaluate.py --checkpoint runs/ft --data eval.json --label-csv labels.csv --output eval.json
    python tools/evaluate.py --checkpoint runs/ft                 # the run's own eval split (or the demo's)
    accelerate launch --num_processes 4 tools/evaluate.py --checkpoint finetuned.pth --data eval.json ...

CHECKPOINT: any classifier this project can rebuild (``avmae.hub.load_pretrained``): a run folder,
a checkpoint folder, a ``model.safetensors``, or an official AudioMAE fine-tuned ``.pth``.
The fbank frontend (input length, normalisation) comes from the checkpoint's run config unless
``--norm`` / ``--mean``/``--std`` say otherwise; the label CSV from ``--label-csv`` or the run config.

Items are split over the processes and gathered back with ``gather_for_metrics``, so every clip
counts once whatever the number of processes. The output JSON holds ``metrics`` (multi-label:
``mAP``, ``mAUC``; single-label: ``acc``, ``acc5``; see ``avmae.train.metrics`` for the rules) and
``classes`` (per-class AP / accuracy with the label names). ``--task retrieval`` evaluates an
audio-visual pretraining model by audio <-> video recall@1/5/10 both ways instead.

An audio-visual classifier sees ``--video-views`` views of each clip's video one at a time (default:
the run's ``eval.video_views``, else 1) and is scored by their averaged class probabilities:

    python tools/evaluate.py -c runs/cav_ft --video-views 10      # CAV-MAE's 10-frame evaluation
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

if __package__ in (None, "") and __name__ == "__main__":  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avmae.errors import tool_main, writable_output  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avmae evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", "-c", required=True, help="run folder, checkpoint folder, weights file or official .pth")
    p.add_argument("--data", "-d", default=None, help="manifest to evaluate on (default: the run's data.eval_manifest, or the demo eval split of a demo run)")
    p.add_argument("--label-csv", default=None, help="index,mid,display_name CSV (default: the run's data.label_csv)")
    p.add_argument("--output", "-o", default=None, help="write the results as JSON here")
    p.add_argument("--task", choices=("classify", "retrieval"), default="classify")
    p.add_argument("--model-name", default=None, help="build this registered model instead of the one the checkpoint names")
    label = p.add_mutually_exclusive_group()
    label.add_argument("--multilabel", dest="multilabel", action="store_true", default=None, help="score as multi-label (mAP)")
    label.add_argument("--single-label", dest="multilabel", action="store_false", help="score as single-label (accuracy)")
    p.add_argument(
        "--video-views", type=int, default=None, metavar="V",
        help="audio-visual classifiers: views of each clip's video, class probabilities averaged (default: the run's eval.video_views, else 1)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="per process (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--norm", default=None, help="fbank normalisation stats by name (default: the run config's, else audioset)")
    p.add_argument("--mean", type=float, default=None, help="fbank mean (with --std; overrides --norm)")
    p.add_argument("--std", type=float, default=None)
    p.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no", help="autocast of the forward pass (default: %(default)s)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    p.add_argument("--save-logits", default=None, metavar="FILE.pt", help="also save logits, labels and file paths")
    return p


def _data_section(config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    data = (config or {}).get("data")
    return data if isinstance(data, dict) else {}


def resolve_data(args: argparse.Namespace, config: Optional[Dict[str, Any]]):
    """(manifest, label CSV) from the arguments, else the run config, else the demo eval split."""
    data = _data_section(config)
    manifest, label_csv = args.data, args.label_csv
    if manifest is None:
        manifest = data.get("eval_manifest")
        # a run folder saved before data.demo existed trained on the demo clips when it named no manifest
        demo = data.get("demo", config.get("modality") if config is not None and "demo" not in data else None)
        if manifest is None and config is not None and data.get("train_manifest") is None and demo is not None:
            from avmae.data import ensure_demo_audio, ensure_demo_av

            # the run trained on the generated demo clips: their eval split
            root = ensure_demo_av() if demo == "av" else ensure_demo_audio()
            manifest, label_csv = root / "eval.json", label_csv or root / "class_labels_indices.csv"
        if manifest is None:
            raise SystemExit("evaluate: pass --data (the checkpoint's config names no eval manifest)")
    if label_csv is None:
        label_csv = data.get("label_csv")
    if label_csv is None and args.task == "classify":
        raise SystemExit("evaluate: pass --label-csv (the checkpoint's config names none)")
    return Path(manifest), (Path(label_csv) if label_csv is not None else None)


def resolve_views(args: argparse.Namespace, config: Optional[Dict[str, Any]], has_video: bool) -> int:
    """Video views per eval clip: ``--video-views``, else the run config's ``eval.video_views``
    (classification of an audio-visual model only), else 1."""
    if args.video_views is not None:
        if args.video_views < 1:
            raise SystemExit(f"evaluate: --video-views must be >= 1, got {args.video_views}")
        if args.video_views > 1 and not has_video:
            raise SystemExit("evaluate: --video-views needs a model with a video input")
        if args.video_views > 1 and args.task != "classify":
            raise SystemExit("evaluate: --video-views averages a classifier's predictions; --task retrieval uses one view")
        return args.video_views
    section = (config or {}).get("eval")
    views = section.get("video_views", 1) if isinstance(section, dict) else 1
    return int(views or 1) if has_video and args.task == "classify" else 1


def build_dataset(model, config, manifest: Path, label_csv: Optional[Path], args: argparse.Namespace):
    from avmae.data import AudioDataset, AVDataset
    from avmae.hub import frontend_for

    frontend = frontend_for(model, config, norm=args.norm, mean=args.mean, std=args.std)
    multilabel = args.multilabel if args.multilabel is not None else _data_section(config).get("multilabel")
    common = dict(frontend=frontend, sample_rate=frontend.sample_rate, train=False, multilabel=multilabel)
    mods = getattr(model, "modalities", None)
    has_video = mods is not None and "video" in mods
    views = resolve_views(args, config, has_video)
    if has_video:
        video = mods["video"]
        frames, _, height, _ = video.input_shape
        return AVDataset(manifest, label_csv, num_frames=int(frames), image_size=int(height), eval_views=views, **common)
    return AudioDataset(manifest, label_csv, **common)


def sigmoid_outputs(config: Optional[Dict[str, Any]], multilabel: bool) -> bool:
    """Whether the model's outputs are read as sigmoids (multi-label data, or a run trained with
    ``train.loss: bce``) rather than softmaxes; decides how several views are averaged."""
    section = (config or {}).get("train")
    return bool(multilabel) or (isinstance(section, dict) and section.get("loss") == "bce")


def classify(model, dataset, loader, accelerator, args, config=None) -> Dict[str, Any]:
    from avmae.train.finetune import collect_predictions
    from avmae.train.metrics import classification_report

    expected = getattr(accelerator.unwrap_model(model), "num_classes", None)
    if expected is not None and expected != dataset.num_classes:
        raise SystemExit(f"evaluate: the model predicts {expected} classes, the label CSV has {dataset.num_classes}")
    # views are averaged as the run's loss read the logits (sigmoids under BCE, also on single-label data)
    logits, labels = collect_predictions(model, loader, accelerator, multilabel=sigmoid_outputs(config, dataset.multilabel))
    if logits.shape[0] != len(dataset):
        raise RuntimeError(f"gathered {logits.shape[0]} predictions for {len(dataset)} items")
    summary, per_class = classification_report(logits, labels, multilabel=dataset.multilabel, class_names=dataset.class_names, class_ids=dataset.class_ids)
    if args.save_logits and accelerator.is_main_process:
        import torch

        torch.save({"logits": logits, "labels": labels, "files": [it["wav"] for it in dataset.items]}, args.save_logits)
    views = {"video_views": dataset.eval_views} if hasattr(dataset, "eval_views") else {}
    return {"multilabel": dataset.multilabel, **views, "metrics": summary, "classes": per_class}


def retrieval(model, dataset, loader, accelerator, args) -> Dict[str, Any]:
    try:
        from avmae.train.retrieval import retrieval_metrics, supports_retrieval
    except ImportError as exc:
        raise SystemExit(f"evaluate --task retrieval needs the audio-visual training pieces (avmae.train.retrieval), which this install lacks: {exc}")
    if not supports_retrieval(accelerator.unwrap_model(model)):
        raise SystemExit("evaluate --task retrieval needs an audio-visual pretraining model (e.g. cav_mae_*), not a classifier")
    found = retrieval_metrics(model, loader, accelerator)
    return {"metrics": {k.split("/", 1)[-1]: v for k, v in found.items()}, "num_items": len(dataset)}


@tool_main()
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for out in (args.output, args.save_logits):
        if out:
            writable_output(out)  # before any work
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("accelerate", "avmae.checkpoint", "avmae.hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if (args.mean is None) != (args.std is None):
        raise SystemExit("evaluate: give both --mean and --std, or neither")

    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from avmae.hub import load_pretrained

    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.precision)
    model, report = load_pretrained(args.checkpoint, model_name=args.model_name)  # errors: one line (tool_main)
    config = report.config if isinstance(report.config, dict) else None
    manifest, label_csv = resolve_data(args, config)
    dataset = build_dataset(model, config, manifest, label_csv, args)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
    model, loader = accelerator.prepare(model, loader)
    model.eval()
    with torch.no_grad():
        if args.task == "classify":
            result = classify(model, dataset, loader, accelerator, args, config)
        else:
            result = retrieval(model, dataset, loader, accelerator, args)

    if accelerator.is_main_process:
        out = {
            "checkpoint": report.path,
            "model": report.model_name,
            "data": str(manifest),
            "label_csv": None if label_csv is None else str(label_csv),
            "task": args.task,
            "num_processes": accelerator.num_processes,
            **result,
        }
        metrics = out["metrics"]
        shown = {k: v for k, v in metrics.items() if k in ("mAP", "mAUC", "acc", "acc5", "num_items") or args.task == "retrieval"}
        from avmae.train.logging_utils import format_metrics

        print(f"{report.model_name} on {manifest} ({len(dataset)} items): " + format_metrics({k: v for k, v in shown.items() if isinstance(v, (int, float))}))
        if args.output:
            from avmae.train.finetune import write_json

            write_json(args.output, out)
            print(f"results: {args.output}")
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a checkpoint: a classifier's accuracy or mAP, a pretraining model's reconstruction (and
audio <-> video retrieval), or any encoder's embeddings by kNN and a linear probe.

    avmae evaluate --checkpoint runs/ft --data eval.json --label-csv labels.csv --output eval.json
    avmae evaluate --checkpoint runs/ft                 # the run's own eval split (or the demo's)
    avmae evaluate --checkpoint runs/pre                # a pretraining run: masked reconstruction loss
    avmae evaluate -c runs/pre --task knn --train-data train.json --data eval.json --label-csv labels.csv
    accelerate launch --num_processes 4 tools/evaluate.py --checkpoint finetuned.pth --data eval.json ...

CHECKPOINT: anything this project can rebuild (``avmae.hub.load_pretrained``): a run folder, a
checkpoint folder, a ``model.safetensors``, a ``save_pretrained`` folder, or an official AudioMAE
``.pth``. The fbank frontend (input length, normalisation) comes from the checkpoint's run config
unless ``--norm`` / ``--mean``/``--std`` say otherwise; manifests and the label CSV from the
arguments, else the run config (else the demo data the run trained on).

--task (default ``auto``: ``classify`` for a classifier, ``reconstruction`` for a pretraining model):

- ``classify``: items are split over the processes and gathered back with ``gather_for_metrics``,
  so every clip counts once whatever the number of processes. ``metrics`` holds ``mAP``, ``mAUC``
  for multi-label data and ``acc``, ``acc5`` for single-label data (``avmae.train.metrics``);
  ``classes`` the per-class AP / accuracy with the label names. An audio-visual classifier sees
  ``--video-views`` views of each clip's video one at a time (default: the run's
  ``eval.video_views``, else 1), scored by their averaged class probabilities.
- ``reconstruction``: the pretraining loss (masked patches only) over the eval clips, masks drawn
  from ``--seed`` at the model's mask ratio (``--mask-ratio``); for an audio-visual model also its
  audio <-> video retrieval.
- ``retrieval``: audio -> video and video -> audio recall@1/5/10 of an audio-visual pretraining model.
- ``knn`` / ``linear``: the frozen encoder's clip embeddings (``avmae.extract``) of ``--train-data``
  and ``--data``; kNN on cosine similarity (``--k``) or a linear head trained for ``--epochs``
  (``avmae.probe``): a fast read of a representation, for any labelled manifest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from avmae.errors import tool_logging, tool_main, writable_output  # noqa: E402

TASKS = ("auto", "classify", "reconstruction", "retrieval", "knn", "linear")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avmae evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint", "-c", required=True, help="run folder, checkpoint folder, weights file or official .pth"
    )
    p.add_argument(
        "--data",
        "-d",
        default=None,
        help="manifest to evaluate on (default: the run's data.eval_manifest, or the demo eval split of a demo run)",
    )
    p.add_argument("--label-csv", default=None, help="index,mid,display_name CSV (default: the run's data.label_csv)")
    p.add_argument("--output", "-o", default=None, help="write the results as JSON here")
    p.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="what to evaluate (default: classify a classifier, reconstruction for a pretraining model)",
    )
    p.add_argument(
        "--train-data",
        default=None,
        help="knn / linear: manifest of the labelled reference clips (default: the run's data.train_manifest)",
    )
    p.add_argument("--k", type=int, default=20, help="knn: neighbours (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=30, help="linear: epochs of the linear head (default: %(default)s)")
    p.add_argument(
        "--mask-ratio",
        type=float,
        default=None,
        help="reconstruction: fraction of patches masked (default: the model's)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="reconstruction masks, linear head initialisation (default: %(default)s)"
    )
    p.add_argument(
        "--model-name", default=None, help="build this registered model instead of the one the checkpoint names"
    )
    label = p.add_mutually_exclusive_group()
    label.add_argument(
        "--multilabel", dest="multilabel", action="store_true", default=None, help="score as multi-label (mAP)"
    )
    label.add_argument(
        "--single-label", dest="multilabel", action="store_false", help="score as single-label (accuracy)"
    )
    p.add_argument(
        "--video-views",
        type=int,
        default=None,
        metavar="V",
        help=(
            "audio-visual classifiers: views of each clip's video, class probabilities averaged (default: the run's"
            " eval.video_views, else 1)"
        ),
    )
    p.add_argument("--batch-size", type=int, default=32, help="per process (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument(
        "--norm", default=None, help="fbank normalisation stats by name (default: the run config's, else audioset)"
    )
    p.add_argument("--mean", type=float, default=None, help="fbank mean (with --std; overrides --norm)")
    p.add_argument("--std", type=float, default=None)
    p.add_argument(
        "--precision",
        choices=("no", "bf16", "fp16"),
        default="no",
        help="autocast of the forward pass (default: %(default)s)",
    )
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    p.add_argument("--save-logits", default=None, metavar="FILE.pt", help="also save logits, labels and file paths")
    return p


def _data_section(config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    data = (config or {}).get("data")
    return data if isinstance(data, dict) else {}


def _demo_root(config: Optional[Dict[str, Any]]) -> Optional[Path]:
    """The generated demo clips' folder when the run trained on them (``data.demo``; a run folder saved
    before data.demo existed did when it named no manifest), else None."""
    data = _data_section(config)
    if config is None or data.get("train_manifest") is not None:
        return None
    demo = data.get("demo", config.get("modality") if "demo" not in data else None)
    if demo is None:
        return None
    from avmae.data import ensure_demo_audio, ensure_demo_av

    return ensure_demo_av() if demo == "av" else ensure_demo_audio()


def resolve_data(args: argparse.Namespace, config: Optional[Dict[str, Any]]):
    """(manifest, label CSV) from the arguments, else the run config, else the demo eval split."""
    data = _data_section(config)
    manifest, label_csv = args.data, args.label_csv
    if manifest is None:
        manifest = data.get("eval_manifest")
        root = _demo_root(config) if manifest is None else None
        if root is not None:  # the run trained on the generated demo clips: their eval split
            manifest, label_csv = root / "eval.json", label_csv or root / "class_labels_indices.csv"
        if manifest is None:
            raise SystemExit("evaluate: pass --data (the checkpoint's config names no eval manifest)")
    if label_csv is None:
        label_csv = data.get("label_csv")
    if label_csv is None and args.task in ("classify", "knn", "linear"):
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
            raise SystemExit(
                f"evaluate: --video-views averages a classifier's predictions; --task {args.task} uses one view"
            )
        return args.video_views
    section = (config or {}).get("eval")
    views = section.get("video_views", 1) if isinstance(section, dict) else 1
    return int(views or 1) if has_video and args.task == "classify" else 1


def build_dataset(model, config, manifest: Path, label_csv: Optional[Path], args: argparse.Namespace):
    from avmae.data import AudioDataset, AVDataset
    from avmae.hub import frontend_for, input_size

    # clips padded or cut to the model's input length, so that they batch (a model whose
    # frontend keeps each clip's own frames, BEATs, is evaluated at its input length too)
    length = input_size(model)[0]
    frontend = frontend_for(model, config, norm=args.norm, mean=args.mean, std=args.std, target_length=length)
    multilabel = args.multilabel if args.multilabel is not None else _data_section(config).get("multilabel")
    common = dict(frontend=frontend, sample_rate=frontend.sample_rate, train=False, multilabel=multilabel)
    mods = getattr(model, "modalities", None)
    has_video = mods is not None and "video" in mods
    views = resolve_views(args, config, has_video)
    if has_video:
        video = mods["video"]
        frames, _, height, _ = video.input_shape
        return AVDataset(
            manifest, label_csv, num_frames=int(frames), image_size=int(height), eval_views=views, **common
        )
    return AudioDataset(manifest, label_csv, **common)


def resolve_train_data(args: argparse.Namespace, config: Optional[Dict[str, Any]]) -> Path:
    """knn / linear: the reference clips: ``--train-data``, else the run's training manifest, else
    the demo training split the run trained on."""
    if args.train_data is not None:
        return Path(args.train_data)
    data = _data_section(config)
    if data.get("train_manifest"):
        return Path(data["train_manifest"])
    root = _demo_root(config)
    if root is not None:
        return root / "train.json"
    raise SystemExit(f"evaluate --task {args.task}: pass --train-data (the labelled reference clips)")


def resolve_task(args: argparse.Namespace, model, name: str) -> str:
    """The task to run, or a one-line SystemExit saying why the asked one does not apply."""
    from avmae.train.retrieval import supports_retrieval

    pretraining = hasattr(model, "decoder")
    task = args.task
    if task == "auto":
        task = "reconstruction" if pretraining else "classify"
    if task == "retrieval" and not supports_retrieval(model):
        mods = list(getattr(model, "modalities", None) or [])
        what = "is a classifier" if not pretraining else f"takes {' and '.join(mods) or 'one input'} only"
        raise SystemExit(
            f"evaluate --task retrieval: {name} {what}; retrieval ranks audio against video clips and needs an "
            "audio-visual pretraining model (cav_mae_*, avmae_*). Try --task knn or --task linear for an audio encoder."
        )
    if task == "classify" and pretraining:
        raise SystemExit(
            f"evaluate --task classify: {name} is a pretraining model without a class head; use --task reconstruction"
            " (its default), knn or linear"
        )
    if task == "reconstruction" and not pretraining:
        raise SystemExit(
            f"evaluate --task reconstruction: {name} is a classifier without a decoder; use --task classify (its"
            " default), knn or linear"
        )
    if task in ("knn", "linear") and "audio" not in (getattr(model, "modalities", None) or {}):
        raise SystemExit(f"evaluate --task {task}: {name} has no audio input to embed")
    return task


def sigmoid_outputs(config: Optional[Dict[str, Any]], multilabel: bool) -> bool:
    """Whether the model's outputs are read as sigmoids (multi-label data, or a run trained with
    ``train.loss: bce``) rather than softmaxes; decides how several views are averaged."""
    section = (config or {}).get("train")
    return bool(multilabel) or (isinstance(section, dict) and section.get("loss") == "bce")


def label_order(model_labels: Optional[List[str]], class_ids: List[str]) -> Optional[List[int]]:
    """Columns of the model's outputs in the label CSV's order, for a model that names its classes
    (a fine-tuned BEATs file's ``label_dict``); None when it names none or the orders agree. A
    CSV class the model does not predict is an error."""
    if not model_labels or not class_ids or list(model_labels) == list(class_ids):
        return None
    index = {label: i for i, label in enumerate(model_labels)}
    missing = [c for c in class_ids if c not in index]
    if missing:
        raise SystemExit(
            f"evaluate: the label CSV's classes {missing[:3]} are not among the {len(model_labels)} the model names"
            " (its label_dict)"
        )
    return [index[c] for c in class_ids]


def classify(model, dataset, loader, accelerator, args, config=None) -> Dict[str, Any]:
    from avmae.probe import score
    from avmae.train.finetune import collect_predictions

    expected = getattr(accelerator.unwrap_model(model), "num_classes", None)
    order = label_order((config or {}).get("labels"), dataset.class_ids)
    if order is None and expected is not None and expected != dataset.num_classes:
        raise SystemExit(f"evaluate: the model predicts {expected} classes, the label CSV has {dataset.num_classes}")
    # views are averaged as the run's loss read the logits (sigmoids under BCE, also on single-label data)
    logits, labels = collect_predictions(
        model, loader, accelerator, multilabel=sigmoid_outputs(config, dataset.multilabel)
    )
    if logits.shape[0] != len(dataset):
        raise RuntimeError(f"gathered {logits.shape[0]} predictions for {len(dataset)} items")
    if order is not None:
        logits = logits[:, order]  # the model's classes in the label CSV's order
    summary, per_class = score(
        logits, labels, multilabel=dataset.multilabel, class_names=dataset.class_names, class_ids=dataset.class_ids
    )
    if args.save_logits and accelerator.is_main_process:
        import torch

        torch.save({"logits": logits, "labels": labels, "files": [it["wav"] for it in dataset.items]}, args.save_logits)
    views = {"video_views": dataset.eval_views} if hasattr(dataset, "eval_views") else {}
    return {"multilabel": dataset.multilabel, **views, "metrics": summary, "classes": per_class}


def retrieval(model, dataset, loader, accelerator, args) -> Dict[str, Any]:
    from avmae.train.retrieval import retrieval_metrics

    found = retrieval_metrics(model, loader, accelerator)
    return {"metrics": {k.split("/", 1)[-1]: v for k, v in found.items()}, "num_items": len(dataset)}


def reconstruction(model, dataset, loader, accelerator, args) -> Dict[str, Any]:
    """Mean pretraining losses over the eval clips (each clip once, over all processes), masks
    drawn from ``--seed``; an audio-visual model's retrieval too."""
    import torch

    from avmae.train.retrieval import supports_retrieval
    from avmae.train.task import model_inputs

    inner = accelerator.unwrap_model(model)
    ratio = args.mask_ratio
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise SystemExit(f"evaluate: --mask-ratio must be in [0, 1), got {ratio}")
    torch.manual_seed(args.seed + accelerator.process_index)
    sums: Dict[str, Any] = {}
    count = torch.zeros((), device=accelerator.device)
    for batch in loader:
        out = model(model_inputs(model, batch, accelerator), mask_ratio=ratio)
        n = next(iter(out.mask.values())).shape[0]
        for k, v in {"loss": out.loss, **out.losses}.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() * n
        count += n
    keys = sorted(sums)
    totals = accelerator.reduce(torch.stack([sums[k] for k in keys] + [count]), "sum")
    metrics = {k: (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}
    ratios = {m: inner.mask_ratio[m] if ratio is None else ratio for m in inner.modalities}
    out = {"metrics": metrics, "num_items": int(totals[-1].item()), "mask_ratio": ratios, "seed": args.seed}
    if supports_retrieval(inner):
        out["metrics"].update(
            {k.replace("/", "_"): v for k, v in retrieval(model, dataset, loader, accelerator, args)["metrics"].items()}
        )
    return out


def embedding_probe(model, config, args, task: str, manifest: Path, label_csv: Path) -> Dict[str, Any]:
    """knn / linear on the frozen encoder's clip embeddings of the train and eval (``manifest``) clips."""
    from avmae.data import read_label_csv, read_manifest
    from avmae.extract import EmbeddingExtractor
    from avmae.hub import frontend_for
    from avmae.probe import embed_items, knn_scores, label_matrix, linear_probe, score

    train_manifest = resolve_train_data(args, config)
    class_ids, class_names = read_label_csv(label_csv)
    extractor = EmbeddingExtractor(model, frontend_for(model, config, norm=args.norm, mean=args.mean, std=args.std))
    sets = {}
    for split, path in (("train", train_manifest), ("eval", manifest)):
        items = read_manifest(path)
        x, kept = embed_items(
            [it["wav"] for it in items], extractor, batch_size=args.batch_size, num_workers=args.num_workers
        )
        sets[split] = (x, label_matrix([items[i] for i in kept], class_ids, str(path)))
    (xt, yt), (xe, ye) = sets["train"], sets["eval"]
    multilabel = (
        args.multilabel if args.multilabel is not None else bool((yt.sum(1) > 1).any() or (ye.sum(1) > 1).any())
    )
    if task == "knn":
        scores, how = (
            knn_scores(xt, yt, xe, k=args.k),
            {"k": min(args.k, xt.shape[0]), "similarity": "cosine", "temperature": 0.07},
        )
    else:
        scores, how = (
            linear_probe(xt, yt, xe, multilabel=multilabel, epochs=args.epochs, seed=args.seed),
            {"epochs": args.epochs, "seed": args.seed},
        )
    summary, per_class = score(scores, ye, multilabel=multilabel, class_names=class_names, class_ids=class_ids)
    return {
        "multilabel": multilabel,
        "train_data": str(train_manifest),
        "num_train": int(xt.shape[0]),
        **how,
        "embedding": extractor.settings(),
        "metrics": summary,
        "classes": per_class,
    }


@tool_main()
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for out in (args.output, args.save_logits):
        if out:
            writable_output(out)  # before any work
    tool_logging(("accelerate", "avmae.checkpoint", "avmae.hub"), all_ranks=True)
    if (args.mean is None) != (args.std is None):
        raise SystemExit("evaluate: give both --mean and --std, or neither")

    import torch
    from accelerate import Accelerator, PartialState
    from torch.utils.data import DataLoader

    from avmae.hub import load_pretrained
    from avmae.train.precision import fresh_precision_state

    fresh_precision_state(PartialState(cpu=args.cpu).num_processes)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.precision)
    model, report = load_pretrained(args.checkpoint, model_name=args.model_name)  # errors: one line (tool_main)
    config = report.config if isinstance(report.config, dict) else None
    task = args.task = resolve_task(args, model, report.model_name)
    manifest, label_csv = resolve_data(args, config)
    if task in ("knn", "linear"):
        if accelerator.num_processes > 1:
            raise SystemExit(
                f"evaluate --task {task} runs in one process (it embeds every clip once); run it without accelerate"
                " launch"
            )
        model.to(accelerator.device)
        result = embedding_probe(model, config, args, task, manifest, label_csv)
    else:
        if task == "reconstruction" and args.label_csv is None:
            label_csv = None  # no labels needed
        dataset = build_dataset(model, config, manifest, label_csv, args)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
        model, loader = accelerator.prepare(model, loader)
        model.eval()
        with torch.no_grad():
            if task == "classify":
                result = classify(model, dataset, loader, accelerator, args, config)
            elif task == "reconstruction":
                result = reconstruction(model, dataset, loader, accelerator, args)
            else:
                result = retrieval(model, dataset, loader, accelerator, args)

    if accelerator.is_main_process:
        out = {
            "checkpoint": report.path,
            "model": report.model_name,
            "data": str(manifest),
            "label_csv": None if label_csv is None else str(label_csv),
            "task": task,
            "num_processes": accelerator.num_processes,
            **result,
        }
        metrics = out["metrics"]
        count = int(metrics.get("num_items", result.get("num_items", 0)) or 0)
        what = {
            "classify": "classification",
            "reconstruction": (
                "masked reconstruction loss (mask ratio"
                f" {', '.join(f'{m} {r:g}' for m, r in result.get('mask_ratio', {}).items())}, seed {args.seed})"
            ),
            "retrieval": "audio <-> video retrieval",
            "knn": (
                f"kNN (k={result.get('k')}, cosine) on frozen embeddings of {result.get('num_train')} reference clips"
            ),
            "linear": (
                f"linear probe ({args.epochs} epochs) on frozen embeddings of {result.get('num_train')} reference clips"
            ),
        }[task]
        shown = {
            k: v
            for k, v in metrics.items()
            if k != "classes_with_positives" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        from avmae.train.logging_utils import format_metrics

        print(f"{report.model_name} on {manifest} ({count} items), {what}: " + format_metrics(shown))
        if args.output:
            from avmae.files import write_json

            write_json(args.output, out)
            print(f"results: {args.output}")
    accelerator.wait_for_everyone()
    # the process group is destroyed before the interpreter exits: a gloo thread still running then
    # made one of two processes abort ("terminate called without an active exception", exit -6)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())

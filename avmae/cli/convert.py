"""Convert checkpoints between the official AudioMAE / timm layouts and this project's.

    avmae convert pretrained.pth --out audiomae_as2m.safetensors           # official -> avmae
    avmae convert runs/demo --out vit.safetensors --to timm                 # avmae -> timm ViT
    avmae convert model.safetensors --out checkpoint.pth --to official      # avmae -> official
    avmae convert runs/ft --out my-model/ --to pretrained                    # a shareable folder

--to avmae (default): any checkpoint load_pretrained reads (official AudioMAE pretrained or
    fine-tuned .pth, a timm-format AudioMAE encoder, this project's files) -> safetensors with the
    model name and params in its metadata, loadable by ``avmae.hub.load_pretrained`` alone.
--to timm: the encoder as a plain ``timm.models.vision_transformer.VisionTransformer`` state dict
    (.safetensors or .pth); the constructor arguments are printed and written to ``<out>.json``.
    A classifier keeps its ``fc_norm`` and head (``global_pool='avg', fc_norm=True``); a
    pretraining model keeps its final ``norm`` (``global_pool='avg', fc_norm=False``). timm's
    pre-logits features then equal this project's pooled features.
--to official: the official AudioMAE key layout in ``{"model": state_dict}`` (.pth).
--to pretrained: a shareable folder in the Hugging Face layout (``config.json``, ``model.safetensors``
    and a ``README.md`` model card with the training config and, for a run, its last evaluation);
    ``avmae.hub.from_pretrained(folder)`` loads it.

EAT / SSLAM fairseq files (pretraining or fine-tuned) and HF-port folders convert the same way
(avmae.formats.eat); --teacher takes a pretraining file's EMA teacher instead of its student.

--set key=value passes model params (e.g. --set target_length=512); --model forces a registered
model name when the file does not say which.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from avmae.errors import tool_main, writable_output
from avmae.files import to_json


def _parse_sets(items: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _save_tensors(sd: Dict[str, torch.Tensor], path: Path, meta: Optional[Dict[str, str]] = None) -> None:
    if path.suffix == ".safetensors":
        from avmae.checkpoint import write_safetensors

        write_safetensors(sd, path, metadata=meta)  # the umask's mode, not the writer's 0600
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().contiguous() for k, v in sd.items()}, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avmae convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", help="checkpoint file, checkpoint folder or run folder")
    p.add_argument("--out", "-o", required=True, help="output file")
    p.add_argument(
        "--to",
        choices=("avmae", "timm", "official", "pretrained"),
        default="avmae",
        help="target layout (default: %(default)s)",
    )
    p.add_argument(
        "--model", default=None, help="registered model name to build (default: what the file says or looks like)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model param override (JSON values)")
    p.add_argument(
        "--teacher",
        action="store_true",
        help="take the EMA teacher of a pretraining file (EAT / data2vec '_ema') instead of the student",
    )
    return p


@tool_main()
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import avmae
    from avmae.checkpoint import to_audiomae_official
    from avmae.hub import load_pretrained, to_timm

    out = Path(args.out)
    if args.to == "avmae" and out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors") if out.suffix else out / "model.safetensors"
    writable_output(out)
    model, report = load_pretrained(args.source, model_name=args.model, teacher=args.teacher, **_parse_sets(args.set))
    print(report.summary(), file=sys.stderr)
    if args.to == "avmae":
        config = {
            "model": {"name": report.model_name, "params": report.model_params},
            "converted_from": {"path": report.path, "format": report.format},
        }
        if report.config and isinstance(report.config.get("data"), dict):
            config["data"] = report.config["data"]  # keeps the normalisation stats
        avmae.save_checkpoint(model, out, model_name=report.model_name, config=config)
        print(f"wrote {out} ({report.model_name}, from {report.format})")
    elif args.to == "pretrained":
        from avmae.hub import save_pretrained

        save_pretrained(
            model,
            out,
            config=report.config,
            metrics=_last_eval(Path(report.path)),
            model_name=report.model_name,
            model_params=report.model_params,
        )
        print(f"wrote {out}/ (config.json, model.safetensors, README.md; avmae.hub.from_pretrained loads it)")
    elif args.to == "timm":
        try:
            sd, kwargs = to_timm(model)
        except (ValueError, AttributeError) as exc:
            print(f"error: {report.model_name} has no plain timm ViT equivalent: {exc}", file=sys.stderr)
            return 2
        _save_tensors(sd, out, {"timm_kwargs": to_json(kwargs)})
        side = out.with_suffix(".json")
        side.write_text(to_json(kwargs, indent=1), encoding="utf-8")
        args_text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        print(f"wrote {out} and {side}\n  timm.models.vision_transformer.VisionTransformer({args_text})")
    else:
        try:
            sd = to_audiomae_official(model)
        except Exception as exc:  # models without AudioMAE's single-modality layout
            print(f"error: {report.model_name} has no official AudioMAE layout: {exc}", file=sys.stderr)
            return 2
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in sd.items()}}, out)
        print(f"wrote {out} (official AudioMAE layout, {len(sd)} tensors)")
    return 0


def _last_eval(weights: Path) -> Dict[str, Any]:
    """The last evaluation in the metrics.jsonl of the run that wrote ``weights`` (a run's
    ``checkpoints/step_N/model.safetensors``), else {}."""
    from avmae.run_folder import METRICS_FILE

    for run in weights.parents[:3]:
        path = run / METRICS_FILE
        if path.is_file():
            from avmae.train.logging_utils import read_metrics

            records = read_metrics(path, prefix="eval/")
            if records:
                rec = records[-1]
                return {k: v for k, v in rec.items() if k.startswith("eval/") or k in ("step", "epoch")}
    return {}


if __name__ == "__main__":
    sys.exit(main())

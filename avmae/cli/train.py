"""Train a model from a config: pretraining or fine-tuning, audio or audio-visual, CPU or GPUs.

    avmae train --modality audio                                   # the CPU demo (README, step 2)
    avmae train --config configs/audiomae/pretrain_as2m.yaml \\
        data.train_manifest=/data/as2m/train.json train.batch_size=8
    accelerate launch --multi_gpu --num_processes 8 tools/train.py --config ... # same code, 8 GPUs
    avmae train --output-dir runs/x --resume                         # continue a run exactly
    python -m avmae.launch --nproc_per_node 8 tools/train.py --config ...      # torchrun, exit 143 on SIGTERM

Trailing ``key=value`` arguments override the config (``optim.blr=1e-3``, ``schedule.max_steps=100``).
Without ``--config``, ``--modality`` picks its demo config (``configs/demo_<modality>.yaml``: audio, av),
the only configs that read the generated demo clips (``data.demo``); any other config names its
manifests (``data.train_manifest``, ...) or stops with a config error.
``--resume`` needs ``--output-dir`` (the error names the newest run of the same config).

Exit status: 0 done; 143 stopped by SIGTERM after saving a checkpoint (resume it); 2 a bad config
or manifest, found before any work; 1 the run failed (an unreadable clip under
``data.on_error=raise``, a damaged checkpoint, non-finite losses, the run folder in use, a path
that cannot be written). Every failure is one line on stderr naming the file or key and what to do.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from avmae.config import CONFIG_DIR, ConfigError, diff, load_config, resolve_config_path
from avmae.data import MediaError
from avmae.errors import SKIP_BAD_CLIPS, TERMINATED, tool_logging, tool_main
from avmae.run_folder import CONFIG_FILE, step_folders
from avmae.train import Trainer
from avmae.train.logging_utils import format_metrics


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="avmae train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--modality",
        default=None,
        help=(
            "the dataset builder: audio | av | audio_shards (or a plugin's); without --config, the demo of audio or av"
            " (default: the config's, else audio)"
        ),
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="config delta(s), merged in order (default: configs/demo_<modality>.yaml)",
    )
    p.add_argument("--output-dir", default=None, help="run folder (default: runs/<modality>-<task>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --output-dir")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.blr=1e-3 train.batch_size=4"
    )
    return p.parse_intermixed_args(argv)  # key=value overrides before and after options


def check_modality(modality: str, *, demo_needed: bool) -> None:
    """``--modality`` names a registered dataset builder, and one with a demo config when no
    ``--config`` is given; else a ``ConfigError`` listing the valid values."""
    from avmae.config import DEMO_DATA
    from avmae.registry import DATASETS

    valid = DATASETS.names()
    if modality not in valid:
        raise ConfigError(
            "--modality",
            f"unknown modality {modality!r}; valid: {', '.join(valid)} (demo data: {', '.join(DEMO_DATA)})",
        )
    if demo_needed and not (CONFIG_DIR / f"demo_{modality}.yaml").is_file():
        raise ConfigError(
            "--modality",
            f"{modality!r} has no demo config (demos: {', '.join(DEMO_DATA)}); pass --config with its"
            " data.train_manifest",
        )


def newest_run_like(cfg, runs: Path = Path("runs")):
    """The newest run folder under ``runs/`` with checkpoints and the config ``cfg`` (output_dir
    and resume aside), or None."""
    found = []
    for folder in runs.iterdir() if runs.is_dir() else ():
        ckpts = step_folders(folder)
        if not ckpts or not (folder / CONFIG_FILE).is_file():
            continue
        try:
            same = not [
                k
                for k in diff(load_config([folder / CONFIG_FILE], check=False), cfg)
                if k not in ("output_dir", "resume")
            ]
        except Exception:  # noqa: BLE001 - an unreadable config is not a match
            continue
        if same:
            found.append((ckpts[-1].stat().st_mtime, folder))
    return max(found)[1] if found else None


def build_config(args: argparse.Namespace):
    if args.resume and not args.output_dir:
        # a requeued job without --output-dir would start over in a new folder every time
        try:
            newest = newest_run_like(build_config(argparse.Namespace(**{**vars(args), "resume": False})))
        except ConfigError:
            newest = None
        hint = f"; the newest run of this config is {newest}: pass --output-dir {newest}" if newest else ""
        raise ConfigError("--resume", f"needs --output-dir, the run folder to continue{hint}")
    files = list(args.config)
    saved = Path(args.output_dir or "", "config.yaml")
    if not files and args.resume and args.output_dir and saved.is_file():
        files = [saved]  # continue the run as it was configured
    if args.modality is not None:
        check_modality(args.modality, demo_needed=not files)
    if not files:
        files = [CONFIG_DIR / f"demo_{args.modality or 'audio'}.yaml"]
    overrides = list(args.overrides)
    if args.modality:
        overrides.append(f"modality={args.modality}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.resume:
        overrides.append("resume=true")
    return load_config([resolve_config_path(f) for f in files], overrides)


@tool_main(hints={MediaError: SKIP_BAD_CLIPS})
def main(argv=None) -> int:
    args = parse_args(argv)
    tool_logging()
    cfg = build_config(args)
    if args.print_config:
        from avmae.config import to_yaml

        print(to_yaml(cfg), end="")
        return 0
    trainer = Trainer(cfg)
    result = trainer.fit()
    if trainer.accelerator.is_main_process:
        print_summary(result, cfg)
    return TERMINATED if result.interrupted else 0


def print_summary(result, cfg) -> None:
    out = result.output_dir
    print(f"\nrun folder:   {out}")
    print(f"checkpoint:   {result.last_checkpoint}  (weights: model.safetensors, config: config.yaml)")
    print(
        f"metrics:      {out / 'metrics.jsonl'}"
        + (f"  (TensorBoard: tensorboard --logdir {out / 'tensorboard'})" if cfg.logging.tensorboard else "")
    )
    if result.loss_history:
        (s0, first), (s1, last) = result.loss_history[0], result.loss_history[-1]
        print(
            f"train loss:   {first:.4f} (step {s0}) -> {last:.4f} (step {s1})"
            + ("" if math.isfinite(last) else "  (not finite)")
        )
    if result.eval:
        print("eval:         " + format_metrics(result.eval))
    if result.skipped_steps:
        print(
            f"skipped:      {result.skipped_steps} of {result.steps} steps had a non-finite loss or gradient"
            f" (train.max_nonfinite={cfg.train.max_nonfinite})"
        )
    if result.skipped_items:
        print(f"unreadable:   {result.skipped_items} clip(s) skipped, listed in {out / 'skipped.tsv'}")
    resumed = f", resumed at step {result.start_step}" if result.start_step else ""
    print(
        f"time:         {result.seconds:.0f} s for {result.steps - result.start_step} steps{resumed} on"
        f" {result.plan.device} ({'fp32' if result.plan.mixed_precision == 'no' else result.plan.mixed_precision})"
    )
    if result.interrupted:
        print(f"interrupted:  resume with  avmae train --output-dir {out} --resume")


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tune a classifier on your own labelled clips, in one command.

    avmae finetune TRAIN [--eval EVAL] [--init CHECKPOINT] [--output-dir DIR] [key=value ...]

    avmae finetune data/words/train --eval data/words/test                        # from scratch
    avmae finetune data/words/train --eval data/words/test --init pretrained.pth  # the released AudioMAE
    avmae finetune train.json --eval test.json --label-csv labels.csv --init runs/my-pretraining

TRAIN, EVAL: a folder with one subfolder per class (the subfolder's name is the label of every audio
file under it), or an AudioMAE manifest (.json / .jsonl) with --label-csv (or its label ids taken
as the classes). Without --eval a seeded, stratified 20 % of TRAIN is held out.

The run is planned from the data (avmae.train.own_data; each decision is printed): the input length
from the clips' durations, the normalisation statistics (those of the --init model, else of the
training clips at that length), augmentations that never split a clip, a learning rate that also
trains from scratch, and the number of epochs. Trailing key=value arguments override any of it
(e.g. schedule.epochs=30 train.batch_size=32). At the end the held-out accuracy (mAP for multi-label
data) is printed beside chance level; the run folder holds the checkpoint, metrics and per-class
results (eval/per_class_last.json), as any training run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avmae finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("train", help="class-per-subfolder folder or manifest of the training clips")
    p.add_argument("--eval", default=None, help="the same for the held-out clips (default: 20%% of TRAIN, stratified)")
    p.add_argument(
        "--init",
        default=None,
        help="checkpoint to start from: a run folder, a weights file, the official pretrained.pth",
    )
    p.add_argument("--output-dir", "-o", default=None, help="run folder (default: runs/finetune-<time>)")
    p.add_argument(
        "--label-csv", default=None, help="index,mid,display_name CSV of manifest labels (default: the label ids found)"
    )
    p.add_argument(
        "--model", default=None, help="registered classifier to train from scratch (default: audiomae_demo_cls)"
    )
    p.add_argument(
        "--max-files",
        type=int,
        default=1000,
        help="training clips decoded to choose the length and statistics (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the held-out split and of training (default: %(default)s)"
    )
    p.add_argument("--print-config", action="store_true", help="print the planned config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    return p


from avmae.data import MediaError  # noqa: E402
from avmae.errors import SKIP_BAD_CLIPS, TERMINATED, tool_main  # noqa: E402


@tool_main(hints={MediaError: SKIP_BAD_CLIPS})
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        level=logging.INFO if main_rank else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("accelerate.checkpointing", "accelerate.accelerator"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from avmae.config import to_yaml
    from avmae.train import Trainer
    from avmae.train.own_data import plan_finetune

    # errors a user can act on (config, data, checkpoint, a stopped run) print one line (tool_main)
    out = Path(args.output_dir or Path("runs", f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"))
    plan = plan_finetune(
        args.train,
        args.eval,
        init=args.init,
        output_dir=out,
        label_csv=args.label_csv,
        model=args.model,
        overrides=args.overrides,
        max_files=args.max_files or None,
        seed=args.seed,
    )
    if args.print_config:
        print(to_yaml(plan.config), end="")
        return 0
    if main_rank:
        print("plan:\n" + "\n".join(f"  {line}" for line in plan.notes), flush=True)
    trainer = Trainer(plan.config)
    result = trainer.fit()
    if trainer.accelerator.is_main_process:
        ev = result.eval
        where = "held-out training clips" if plan.held_out else "evaluation clips"
        print(f"\nrun folder:   {result.output_dir}  (checkpoint: {result.last_checkpoint})")
        print(
            f"time:         {result.seconds:.0f} s for {result.steps - result.start_step} steps on {result.plan.device}"
        )
        if "mAP" in ev:
            print(
                f"held-out mAP: {ev['mAP']:.3f} on {plan.num_eval} {where} ({plan.num_classes} classes; per class:"
                f" {result.output_dir}/eval/per_class_last.json)"
            )
        elif "acc" in ev:
            right = round(ev["acc"] * plan.num_eval)
            print(
                f"held-out accuracy: {100 * ev['acc']:.1f} % ({right} of {plan.num_eval} {where}; chance"
                f" {100 * plan.chance:.1f} %)"
            )
        else:
            print("no evaluation ran (eval.every_n_epochs=-1?)")
    return TERMINATED if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

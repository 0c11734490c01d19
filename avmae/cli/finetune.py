"""Fine-tune a classifier on your own labelled clips, in one command.

    avmae finetune TRAIN [--eval EVAL] [--init CHECKPOINT] [--output-dir DIR] [key=value ...]

    avmae finetune data/words/train --eval data/words/test                        # from scratch
    avmae finetune data/words/train --eval data/words/test --init pretrained.pth  # the released AudioMAE
    avmae finetune train.json --eval test.json --label-csv labels.csv --init runs/my-pretraining

TRAIN, EVAL: a folder with one subfolder per class (the subfolder's name is the label of every audio
file under it), or an AudioMAE manifest (.json / .jsonl) with --label-csv (or its label ids taken
as the classes). Without --eval a seeded, stratified 20 % of TRAIN is held out.

The run is planned from the data (avmae.train.own_data, avmae.train.own_data_run; each decision is
printed): the input length from the clips' durations, the normalisation statistics (those of the
--init model, else of the training clips at that length), the pooling and augmentation that let a
model trained from scratch learn, a learning rate, and the epochs that fit --budget (seconds for the
whole command, default 600). --pretrain first pretrains an AudioMAE on the training clips (and
--unlabelled ones) for a share of the budget, then fine-tunes from it. Trailing key=value arguments
override any of it (e.g. schedule.epochs=30 train.batch_size=32). At the end the training and
held-out accuracy (mAP for multi-label data) are printed beside chance level, with the best
evaluation's epoch, and a warning when the classifier did not learn; the run folder holds the
checkpoint, metrics and per-class results (eval/per_class_last.json), as any training run.
"""

from __future__ import annotations

import argparse
import math
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
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole command; the epochs of each phase are fitted to it (default: 600)",
    )
    p.add_argument(
        "--unlabelled",
        default=None,
        help="folder or manifest of unlabelled clips added to the training clips for the pretraining phase",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pretrain", dest="pretrain", action="store_true", default=None, help="pretrain on the clips first")
    g.add_argument("--no-pretrain", dest="pretrain", action="store_false", help="skip the pretraining phase")
    p.add_argument("--print-config", action="store_true", help="print the planned config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    return p


from avmae.data import MediaError  # noqa: E402
from avmae.errors import SKIP_BAD_CLIPS, TERMINATED, tool_logging, tool_main  # noqa: E402


@tool_main(hints={MediaError: SKIP_BAD_CLIPS})
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    main_rank = tool_logging()

    from avmae.config import to_yaml
    from avmae.train.own_data import plan_finetune
    from avmae.train.own_data_run import DEFAULT_BUDGET_S, run_own_data

    # errors a user can act on (config, data, checkpoint, a stopped run) print one line (tool_main)
    out = Path(args.output_dir or Path("runs", f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"))
    common = dict(label_csv=args.label_csv, overrides=args.overrides, max_files=args.max_files or None, seed=args.seed)
    if args.print_config:
        plan = plan_finetune(args.train, args.eval, init=args.init, output_dir=out, model=args.model, **common)
        print(to_yaml(plan.config), end="")
        return 0

    def show(phase: str, notes: List[str]) -> None:
        if main_rank:
            print(f"{phase} plan:\n" + "\n".join(f"  {line}" for line in notes), flush=True)

    res = run_own_data(
        args.train,
        args.eval,
        output_dir=out,
        init=args.init,
        model=args.model,
        unlabelled=args.unlabelled,
        pretrain=args.pretrain,
        budget_s=args.budget or DEFAULT_BUDGET_S,
        on_plan=show,
        **common,
    )
    result, plan = res.finetune, res.plan
    if main_rank and not result.interrupted:
        ev = result.eval
        where = "held-out training clips" if plan.held_out else "evaluation clips"
        print(f"\nrun folder:   {result.output_dir}  (checkpoint: {result.last_checkpoint})")
        phases = f" (pretraining {res.pretrain.seconds:.0f} s, {res.pretrain.steps} steps)" if res.pretrain else ""
        print(
            f"time:         {res.seconds:.0f} s in all{phases}; fine-tuning {result.steps} steps on"
            f" {result.plan.device}"
        )
        if res.pretrain is not None and res.pretrain.first_loss is not None:
            print(f"pretraining loss: {res.pretrain.first_loss:.3f} -> {res.pretrain.last_loss:.3f}")
        if result.first_loss is not None:
            print(
                f"train loss:   {result.first_loss:.3f} -> {result.last_loss:.3f} (chance level ln C = "
                f"{math.log(max(2, plan.num_classes)):.3f})"
            )
        if "mAP" in ev:
            print(
                f"held-out mAP: {ev['mAP']:.3f} on {plan.num_eval} {where} ({plan.num_classes} classes; per class:"
                f" {result.output_dir}/eval/per_class_last.json)"
            )
        elif "acc" in ev:
            right = round(ev["acc"] * plan.num_eval)
            if res.train_acc is not None:
                print(
                    f"train accuracy: {100 * res.train_acc:.1f} % (loss {res.train_loss:.3f}; {plan.num_train} training"
                    " clips, no augmentation)"
                )
            print(
                f"held-out accuracy: {100 * ev['acc']:.1f} % ({right} of {plan.num_eval} {where}; chance"
                f" {100 * plan.chance:.1f} %)"
            )
            if res.best_eval_acc is not None:
                print(
                    f"best held-out: {100 * res.best_eval_acc:.1f} % at epoch {res.best_epoch} (the checkpoint is"
                    " the last epoch's)"
                )
        else:
            print("no evaluation ran (eval.every_n_epochs=-1?)")
        if not res.learned:
            print(
                f"\nDID NOT LEARN: on its own training clips the classifier is near chance (accuracy"
                f" {100 * res.train_acc:.1f} %, chance {100 / plan.num_classes:.1f} %; loss {res.train_loss:.3f}, ln C"
                f" {math.log(plan.num_classes):.3f}). Try:\n" + "\n".join(f"  - {tip}" for tip in res.advice)
            )
    return TERMINATED if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run by tests/test_trainer.py under ``torchrun --nproc_per_node 2`` (CPU, gloo).

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_nonfinite_check.py CLIPS_DIR OUT_DIR

Fused AdamW, so non-finite steps are skipped on the device and the stop flag is read every
``STOP_CHECK_EVERY`` steps. Only process 1 sees a NaN loss (its 2nd batch) and only process 1
receives SIGTERM (after step 3): both must skip the same step and stop at the same step. Each
process writes ``OUT_DIR/rank{R}.json``: steps, interrupted, skipped steps and a weights hash.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from avmae.config import load_config
from avmae.train import PretrainTask, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dist_train_check import tiny_run, weights_hash  # noqa: E402


class NaNOnProcess1(PretrainTask):
    """Pretraining whose loss is NaN on process 1's 2nd forward call."""

    rank = 0
    calls = 0

    def compute_loss(self, model, inputs, batch):
        loss, parts = super().compute_loss(model, inputs, batch)
        self.calls += 1
        if self.rank == 1 and self.calls == 2:
            loss = loss * float("nan")
        return loss, parts


class SigtermOnProcess1(Trainer):
    def after_step(self, step: int) -> None:
        if step == 3 and self.accelerator.process_index == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def main(clips: Path, out: Path) -> None:
    torch.set_num_threads(1)
    cfg = load_config(
        [],
        tiny_run(
            clips,
            out,
            "train.mixed_precision=no",
            "optim.fused=true",
            "schedule.epochs=5",  # 3 steps per epoch, 15 in all
            "eval.every_n_epochs=-1",
            "logging.every_n_steps=100",  # logs at steps 1 and 15 only
            "checkpoint.every_n_epochs=0",
        ),
    )
    task = NaNOnProcess1(cfg)
    trainer = SigtermOnProcess1(cfg, task=task)
    acc = trainer.accelerator
    task.rank = acc.process_index
    result = trainer.fit()
    model = acc.unwrap_model(acc._models[0])
    report = {
        "steps": result.steps,
        "interrupted": result.interrupted,
        "skipped_steps": result.skipped_steps,
        "weights_hash": weights_hash(model),
    }
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

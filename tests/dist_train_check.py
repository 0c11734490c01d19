"""Run by tests/test_trainer.py under ``torchrun --nproc_per_node 2`` (CPU, gloo).

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_train_check.py CLIPS_DIR OUT_DIR

Each process trains the tiny model for a few steps on the generated clips and writes
``OUT_DIR/rank{R}.json``: a hash of its model weights, its step count and the dataset indices it
was given, so the test can check that the replicas agree and that the data was sharded.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from avmae.config import load_config
from avmae.train import PretrainTask, Trainer


class RecordingTask(PretrainTask):
    """Pretraining that remembers which items this process trained on."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.indices = []

    def compute_loss(self, model, inputs, batch):
        self.indices += batch["index"].tolist()
        return super().compute_loss(model, inputs, batch)


def weights_hash(model: torch.nn.Module) -> str:
    sd = model.state_dict()
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def tiny_run(clips: Path, out: Path, *extra: str) -> list:
    """Overrides of a small ``audiomae_tiny`` pretraining run on ``clips``, batch 2 per process
    (12 clips / (2 x 2 processes) = 3 steps per epoch); ``extra`` last, so it wins."""
    return [
        "model.name=audiomae_tiny",
        f"data.train_manifest={clips / 'train.json'}",
        f"data.label_csv={clips / 'class_labels_indices.csv'}",
        "data.target_length=64",
        "data.num_mel_bins=64",
        "data.num_workers=0",
        "data.cache=true",
        "train.batch_size=2",
        "train.cpu=true",
        "schedule.warmup_epochs=0",
        "logging.progress=false",
        "logging.tensorboard=false",
        f"output_dir={out / 'run'}",
        *extra,
    ]


def main(clips: Path, out: Path) -> None:
    torch.set_num_threads(1)
    cfg = load_config(
        [],
        tiny_run(
            clips,
            out,
            "train.mixed_precision=bf16",
            "model.params.drop_path=0.1",
            "optim.lr=2e-3",
            "schedule.epochs=1",
            "logging.every_n_steps=1",
            "checkpoint.every_n_epochs=1",
        ),
    )
    task = RecordingTask(cfg)
    trainer = Trainer(cfg, task=task)
    result = trainer.fit()
    acc = trainer.accelerator
    model = acc.unwrap_model(acc._models[0])
    report = {
        "rank": acc.process_index,
        "world": acc.num_processes,
        "steps": result.steps,
        "weights_hash": weights_hash(model),
        "indices": task.indices,
    }
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

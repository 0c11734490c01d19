"""Training: one accelerate loop for every task and modality set (``Trainer``), the built-in tasks
(pretrain, finetune, linprobe) and dataset builders (audio, av, audio_shards), and the optimizer
pieces (param groups, layer decay, lr schedule).

Module map (one concern each): ``trainer`` (the loop), ``task`` (the ``Task`` contract),
``pretrain`` / ``finetune`` (the built-in tasks), ``datasets`` (the built-in dataset builders),
``samplers`` (the order of an epoch), ``plan`` / ``precision`` (derived values), ``guard`` (the
non-finite guard), ``checkpointing`` (resume and saves, over ``avmae.run_folder``),
``logging_utils`` (metrics and progress), ``loaders`` (DataLoaders, SIGTERM), ``optim``,
``metrics``, ``retrieval``.
"""

from ..registry import DATASETS, TASKS, register_dataset, register_task
from ..run_folder import find_latest_checkpoint, list_checkpoints
from .checkpointing import TrainState
from .datasets import (
    DatasetBuilder,
    build_audio_dataset,
    build_audio_shard_dataset,
    build_av_dataset,
    dataset_builder,
    manifest_of,
)
from .finetune import FinetuneTask, LinearProbeTask
from .guard import NonFiniteLossError
from .optim import build_optimizer, layer_id, lr_at, param_groups, scaled_lr, set_lr
from .plan import RunPlan, plan_run
from .precision import resolve_mixed_precision
from .pretrain import PretrainTask
from .samplers import EpochSampler
from .task import Task, model_inputs
from .trainer import Trainer, TrainResult, train

__all__ = [
    "Trainer",
    "TrainResult",
    "TrainState",
    "RunPlan",
    "plan_run",
    "train",
    "Task",
    "PretrainTask",
    "FinetuneTask",
    "LinearProbeTask",
    "TASKS",
    "register_task",
    "DATASETS",
    "register_dataset",
    "DatasetBuilder",
    "dataset_builder",
    "manifest_of",
    "build_audio_dataset",
    "build_av_dataset",
    "build_audio_shard_dataset",
    "model_inputs",
    "EpochSampler",
    "NonFiniteLossError",
    "find_latest_checkpoint",
    "list_checkpoints",
    "resolve_mixed_precision",
    "param_groups",
    "layer_id",
    "build_optimizer",
    "lr_at",
    "set_lr",
    "scaled_lr",
]

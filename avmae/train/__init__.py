"""Training: one accelerate loop for every task and modality set (``Trainer``), its task and
dataset-builder registries, and the optimizer pieces (param groups, layer decay, lr schedule)."""

from .optim import build_optimizer, layer_id, lr_at, param_groups, scaled_lr, set_lr
from .trainer import (
    DATASET_BUILDERS,
    TASKS,
    EpochSampler,
    FinetuneTask,
    LinearProbeTask,
    NonFiniteLossError,
    PretrainTask,
    RunPlan,
    Task,
    Trainer,
    TrainResult,
    find_latest_checkpoint,
    list_checkpoints,
    plan_run,
    register_dataset_builder,
    register_task,
    resolve_mixed_precision,
    train,
)
from . import av_data  # noqa: F401  registers the "av" dataset builder
from . import shard_data  # noqa: F401  registers the "audio_shards" dataset builder

__all__ = [
    "Trainer",
    "TrainResult",
    "RunPlan",
    "plan_run",
    "train",
    "Task",
    "PretrainTask",
    "FinetuneTask",
    "LinearProbeTask",
    "TASKS",
    "register_task",
    "DATASET_BUILDERS",
    "register_dataset_builder",
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

"""One training loop, on accelerate, for every task and every modality set.

    data (dataset builder of cfg.modality) -> task.compute_loss -> backward -> (every grad_accum
    batches) lr schedule, clip, non-finite check, AdamW step -> log -> checkpoint

The loop knows nothing about audio: it passes every batch entry whose key is one of the model's
modalities (``model.modalities``) as ``inputs``. Two registries are its seams:

- ``TASKS`` (``register_task``): what is trained. A ``Task`` builds the model, its parameter
  groups, the loss of a batch and the evaluation; "pretrain" is here, "finetune" and "linprobe"
  in ``avmae.train.finetune``.
- ``DATASET_BUILDERS`` (``register_dataset_builder``): ``builder(cfg, split) -> Dataset | None``
  per ``cfg.modality``; "audio" is here, other modality sets register theirs.

Reproducibility: the data order of an epoch depends only on (seed, epoch) (``EpochSampler``),
per-item randomness on (seed, epoch, index) in the dataset, and model randomness on the torch RNG,
which ``accelerator.save_state`` stores per process. A run resumed from the checkpoint of step k
therefore ends with the same weights as the run that was never stopped (bit-identical on CPU).

Checkpoints: ``output_dir/checkpoints/step_XXXXXXX/`` holds accelerate's state (optimizer, RNG,
scaler), ``model.safetensors`` (``avmae.save_checkpoint``: loadable by ``avmae.load_checkpoint``),
``config.yaml`` and ``trainer_state.json``. A folder is written under a temporary name and renamed
when complete, so a crash never leaves a half checkpoint that ``resume`` would pick. On resume the
pickled states (optimizer, RNG, scaler) are first read with ``weights_only=True``: a file holding
anything else (code) is refused, whatever accelerate / torch version then loads it.

Unreadable clips (``data.on_error=skip``): the datasets log them under ``output_dir/skipped/``; at
the end of every epoch (and of the run) they are merged into ``output_dir/skipped.tsv``
(``path<TAB>reason``), and the run stops when the training set's skipped fraction, over all
processes and workers, passes ``data.max_skip_fraction``.

Non-finite steps: a step whose loss (on any process) or gradient norm is not finite is skipped and
counted; ``train.max_nonfinite`` of them in a row stop the run with ``NonFiniteLossError``. With
fused AdamW (and no fp16 loss scaler) the skip is decided on the device, through the kernels'
``found_inf`` flag, and the counts stay there (``_NonFiniteSteps``): the host reads them only where
it waits for the device anyway (log steps, checkpoints, the end of an epoch, the end of the run),
so the error comes at the first such read after the streak, naming the step where the streak
reached the limit and the checkpoint saved before it. Other optimizers read the flags every step.
A stop request (SIGTERM) is a host flag in a single process, checked every step; several processes
must agree on it, which takes a read: every ``STOP_CHECK_EVERY`` steps and at log steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Type

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

import avmae
from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..config import Config, ConfigError, diff, load_config, save_config, to_dict, validate
from .logging_utils import MetricsWriter
from .optim import build_optimizer, lr_at, param_groups, resolve_fused, scaled_lr, set_fused, set_lr, skips_on_found_inf, step_unless

_logger = logging.getLogger(__name__)

__all__ = [
    "Trainer",
    "TrainResult",
    "RunPlan",
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
    "plan_run",
    "train",
]

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
SKIP_DIR = "skipped"  # the datasets' per-process skip logs, one folder per split
SKIPPED_FILE = "skipped.tsv"  # all skipped clips of the run: path<TAB>reason
# with several processes and the device-side skip, the agreed stop flag (SIGTERM on any process) is
# read every this many steps (and at log steps): a preempted job's grace period is tens of seconds
STOP_CHECK_EVERY = 10


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


# =============================================================================== registries

DatasetBuilder = Callable[[Config, str], Optional[Dataset]]
DATASET_BUILDERS: Dict[str, DatasetBuilder] = {}
TASKS: Dict[str, Type["Task"]] = {}


def register_dataset_builder(modality: str):
    """Decorator: ``builder(cfg, split)`` makes the "train" / "eval" dataset (or None: no such
    split) for ``cfg.modality == modality``. Items are dicts of tensors keyed by modality name
    (``"audio"``, ``"video"``) plus ``"label"`` ([C] float) and ``"index"``; a dataset may have
    ``set_epoch(epoch)``, which the trainer calls in every DataLoader worker."""

    def deco(fn: DatasetBuilder) -> DatasetBuilder:
        DATASET_BUILDERS[modality] = fn
        return fn

    return deco


def register_task(name: str):
    """Class decorator: make a ``Task`` subclass selectable as ``task: <name>``."""

    def deco(cls: Type["Task"]) -> Type["Task"]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


def split_manifest(cfg: Config, split: str, demo_root: Callable[[], Path]):
    """(manifest, label_csv) of ``split``, from ``demo_root()`` when ``data.train_manifest`` is None;
    None when the run has no manifest for this split."""
    d = cfg.data
    if d.train_manifest is None:
        root = demo_root()
        return root / f"{split}.json", root / "class_labels_indices.csv"
    manifest = d.train_manifest if split == "train" else d.eval_manifest
    return None if manifest is None else (manifest, d.label_csv)


def audio_frontend(cfg: Config):
    """The ``AudioFrontend`` the data config describes (statistics by name or explicit mean/std)."""
    from ..data import NORM_STATS, AudioFrontend

    d = cfg.data
    mean, std = (d.mean, d.std) if d.mean is not None else NORM_STATS[d.norm]
    return AudioFrontend(sample_rate=d.sample_rate, num_mel_bins=d.num_mel_bins, target_length=d.target_length, mean=mean, std=std)


def dataset_options(cfg: Config, split: str) -> Dict[str, Any]:
    """Keyword arguments every manifest dataset takes from the config."""
    d = cfg.data
    return dict(
        sample_rate=d.sample_rate,
        train=split == "train",
        augment=dataclasses.asdict(d.augment),
        on_error=d.on_error,
        max_skip_fraction=d.max_skip_fraction,
        seed=cfg.train.seed,
        multilabel=d.multilabel,
        # one folder per split: the trainer checks the training set's skip ceiling
        skip_log_dir=None if cfg.output_dir is None else Path(cfg.output_dir) / SKIP_DIR / split,
        allow_outside_root=d.allow_outside_root,
    )


@register_dataset_builder("audio")
def build_audio_dataset(cfg: Config, split: str) -> Optional[Dataset]:
    """``AudioDataset`` of ``split``; the embedded demo data when ``data.train_manifest`` is None."""
    from ..data import AudioDataset, ensure_demo_audio

    found = split_manifest(cfg, split, ensure_demo_audio)
    if found is None:
        return None
    manifest, label_csv = found
    return AudioDataset(manifest, label_csv, frontend=audio_frontend(cfg), **dataset_options(cfg, split))


# =============================================================================== tasks


class Task:
    """A training objective: the four seams the loop calls.

    - ``build_model(train_set) -> nn.Module``: the model, initialised (e.g. from
      ``checkpoint.init_from``); its ``modalities`` name the batch keys it takes as inputs.
    - ``param_groups(model) -> list``: AdamW groups (weight decay, ``lr_scale``).
    - ``compute_loss(model, inputs, batch) -> (loss, {name: scalar})``: ``inputs`` holds the
      batch entries the model takes; ``batch`` is the whole batch (labels, indices).
    - ``evaluate(model, loader, accelerator) -> {name: float}``: metrics over the eval split,
      identical on every process (gather or reduce across processes).
    - ``items_per_epoch(train_set)`` / ``build_sampler(train_set, plan)``: the epoch's length
      and order (``EpochSampler``; a ``BalancedSampler`` with ``data.balanced``).

    Subclass and decorate with ``@register_task("name")`` to add one; override what differs.
    ``model_needs_data = False`` (pretraining) builds the model before the datasets, so that bad
    ``model.params`` fail before any data work; leave it True when ``model_params`` reads the set.
    """

    name = "task"
    model_needs_data = True

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def model_params(self, train_set: Dataset) -> Dict[str, Any]:
        """Factory params: ``model.params`` plus the input size from ``data.*``."""
        return {**self.cfg.model.params, "target_length": self.cfg.data.target_length, "num_mel_bins": self.cfg.data.num_mel_bins}

    def build_model(self, train_set: Dataset) -> nn.Module:
        name, params = self.cfg.model.name, self.model_params(train_set)
        try:
            model = avmae.create_model(name, **params)
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError("model.params", f"model {name!r} rejected its params {params}: {exc}") from exc
        if self.cfg.checkpoint.init_from:
            self.load_init(model)
        return model

    def load_init(self, model: nn.Module) -> None:
        path = weights_path(self.cfg.checkpoint.init_from)
        report = load_checkpoint(model, path, strict=True, reset_head=True)
        _logger.info("initialised from %s", report.summary())

    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        return param_groups(model, self.cfg.optim.weight_decay, layer_decay=self.cfg.optim.layer_decay)

    def items_per_epoch(self, train_set: Dataset) -> int:
        """Training items per epoch: the set's size, or ``data.epoch_len`` with balanced sampling."""
        return self.cfg.data.epoch_len if self.cfg.data.balanced and self.cfg.data.epoch_len else len(train_set)

    def build_sampler(self, train_set: Dataset, plan: "RunPlan") -> Sampler:
        """The global order of each epoch as ``(epoch, index)`` pairs, with ``set_position``:
        ``EpochSampler``, or a ``BalancedSampler`` when ``data.balanced``."""
        if self.cfg.data.balanced:
            from .samplers import balanced_sampler

            return balanced_sampler(self.cfg, train_set, plan.train_items, global_batch=plan.effective_batch)
        return EpochSampler(len(train_set), global_batch=plan.effective_batch, seed=self.cfg.train.seed)

    def compute_loss(self, model: nn.Module, inputs: Dict[str, torch.Tensor], batch: Mapping[str, Any]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, accelerator) -> Dict[str, float]:
        """Mean of ``compute_loss``'s loss and parts over the eval batches, across processes."""
        sums: Dict[str, torch.Tensor] = {}
        count = torch.zeros((), device=accelerator.device)
        for batch in loader:
            loss, parts = self.compute_loss(model, model_inputs(model, batch, accelerator), batch)
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            count += 1
        if not sums:
            return {}
        keys = sorted(sums)
        totals = accelerator.reduce(torch.stack([sums[k] for k in keys] + [count]), "sum")
        return {k: (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}


@register_task("pretrain")
class PretrainTask(Task):
    """Masked-autoencoder pretraining: the model returns its loss (``MAEOutput``)."""

    model_needs_data = False

    def model_params(self, train_set: Dataset) -> Dict[str, Any]:
        params = super().model_params(train_set)
        if self.cfg.masking.mask_ratio is not None:  # None: the model's own default
            params["mask_ratio"] = self.cfg.masking.mask_ratio
        return params

    def build_model(self, train_set: Dataset) -> nn.Module:
        model = super().build_model(train_set)
        per = dict(self.cfg.masking.per_modality)
        unknown = set(per) - set(getattr(model, "modalities", {}))
        if unknown:
            raise ConfigError("masking.per_modality", f"names {sorted(unknown)}, not modalities of {self.cfg.model.name} ({list(model.modalities)})")
        # ratio per modality, passed at every forward (None: the model's default from mask_ratio)
        if per:
            base = self.cfg.masking.mask_ratio
            defaults = getattr(model, "mask_ratio", None)
            defaults = defaults if isinstance(defaults, Mapping) else {}
            unset = [m for m in model.modalities if m not in per and base is None and m not in defaults]
            if unset:
                raise ConfigError(
                    "masking.per_modality",
                    f"gives no ratio for {unset} and {self.cfg.model.name} has no default ratio per modality (a `mask_ratio` mapping); "
                    "name every modality here or set masking.mask_ratio",
                )
            self.mask_ratio = {m: per[m] if m in per else (base if base is not None else defaults[m]) for m in model.modalities}
        else:
            self.mask_ratio = None
        return model

    def compute_loss(self, model, inputs, batch):
        out = model(inputs, mask_ratio=getattr(self, "mask_ratio", None))
        return out.loss, dict(out.losses)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, accelerator) -> Dict[str, float]:
        """Mean losses; for an audio-visual model also audio <-> video retrieval recall@1/5/10."""
        metrics = super().evaluate(model, loader, accelerator)
        from .av_data import retrieval_metrics

        metrics.update(retrieval_metrics(model, loader, accelerator))
        return metrics


def model_inputs(model: nn.Module, batch: Mapping[str, Any], accelerator=None) -> Dict[str, torch.Tensor]:
    """The batch entries the model takes: those keyed by one of its modalities."""
    inner = accelerator.unwrap_model(model, keep_torch_compile=False) if accelerator is not None else model
    keys = getattr(inner, "modalities", None)
    if keys is None:
        raise TypeError(f"{type(inner).__name__} has no `modalities`; the trainer cannot tell which batch entries are inputs")
    inputs = {k: batch[k] for k in keys if k in batch}
    if not inputs:
        raise KeyError(f"batch keys {sorted(batch)} hold none of the model's modalities {list(keys)}")
    return inputs


def weights_path(path: os.PathLike | str) -> Path:
    """A weights file from a file, a checkpoint folder or a run folder (its newest checkpoint)."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / WEIGHTS_FILE).is_file():
            return p / WEIGHTS_FILE
        latest = find_latest_checkpoint(p)
        if latest is not None:
            return latest / WEIGHTS_FILE
        raise ConfigError("checkpoint.init_from", f"{p} holds neither {WEIGHTS_FILE} nor checkpoints")
    return p


# =============================================================================== data order


class EpochSampler(Sampler):
    """The global order of one epoch, as ``(epoch, index)`` pairs.

    The order is ``torch.randperm`` from a generator seeded by (seed, epoch), cut to a whole
    number of ``global_batch`` items (batch x accumulation x processes, so every process gets the
    same number of full optimizer steps and no item twice). accelerate hands batch i of this order
    to process ``i % num_processes``. ``set_position(epoch, start)`` picks the epoch and skips
    the ``start`` items already consumed (resume). The epoch travels with the index, so datasets
    in persistent DataLoader workers see it.
    """

    def __init__(self, num_items: int, *, global_batch: int, seed: int = 0, shuffle: bool = True) -> None:
        if num_items < global_batch:
            raise ValueError(f"{num_items} items are fewer than one global batch of {global_batch}")
        self.num_items = num_items
        self.global_batch = global_batch
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def items_per_epoch(self) -> int:
        return self.num_items // self.global_batch * self.global_batch

    def set_position(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.items_per_epoch:
            raise ValueError(f"start {start} outside the epoch's {self.items_per_epoch} items")
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)[: self.items_per_epoch]
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=g)[: self.items_per_epoch]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.epoch
        for i in self.order(epoch)[self.start :].tolist():
            yield (epoch, i)

    def __len__(self) -> int:
        return self.items_per_epoch - self.start


class MemoryCached(Dataset):
    """Items of ``dataset`` kept after their first load (each DataLoader worker keeps its own).
    Only for datasets whose items do not change between epochs."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._items: Dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # num_classes, multilabel, ...
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        if index not in self._items:
            self._items[index] = self.dataset[index]
        return self._items[index]


class EpochIndexed(Dataset):
    """``dataset`` indexed by ``(epoch, index)``: calls ``dataset.set_epoch`` when the epoch changes."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._epoch: Optional[int] = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        if epoch != self._epoch:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            self._epoch = epoch
        return self.dataset[index]


# =============================================================================== run plan


@dataclass
class RunPlan:
    """Values derived from the config and the world, computed once (``plan_run``) and logged."""

    num_processes: int
    batch_size: int
    grad_accum: int
    effective_batch: int
    blr: float
    lr: float
    lr_rule: str
    min_lr: float
    train_items: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    epochs: int
    mixed_precision: str
    device: str

    def describe(self) -> str:
        return (
            f"{self.num_processes} process(es) x batch {self.batch_size} x accum {self.grad_accum} = effective batch {self.effective_batch}; "
            f"lr {self.lr:.3g} ({self.lr_rule}); {self.train_items} items -> {self.steps_per_epoch} steps/epoch, "
            f"{self.total_steps} steps ({self.epochs} epochs), warm-up {self.warmup_steps} steps; "
            f"precision {self.mixed_precision} on {self.device}"
        )


def plan_run(cfg: Config, train_items: int, num_processes: int, *, mixed_precision: str = "no", device: str = "cpu") -> RunPlan:
    """Effective batch, absolute lr, steps: the one place these are derived."""
    t, s = cfg.train, cfg.schedule
    effective = t.batch_size * t.grad_accum * num_processes
    if cfg.optim.lr is not None:
        lr, rule = cfg.optim.lr, "optim.lr"
    else:
        lr, rule = scaled_lr(cfg.optim.blr, effective), f"blr {cfg.optim.blr:g} x {effective} / 256"
    steps_per_epoch = train_items // effective
    if steps_per_epoch < 1:
        raise ConfigError(
            "train.batch_size", f"the effective batch ({effective} = batch_size x grad_accum x processes) exceeds the {train_items} training items"
        )
    total = s.max_steps if s.max_steps is not None else s.epochs * steps_per_epoch
    warmup = min(int(round(s.warmup_epochs * steps_per_epoch)), total)
    if s.min_lr > lr:
        raise ConfigError("schedule.min_lr", f"({s.min_lr}) exceeds the lr ({lr:.3g}, {rule})")
    return RunPlan(
        num_processes=num_processes,
        batch_size=t.batch_size,
        grad_accum=t.grad_accum,
        effective_batch=effective,
        blr=cfg.optim.blr,
        lr=lr,
        lr_rule=rule,
        min_lr=s.min_lr,
        train_items=train_items,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        epochs=math.ceil(total / steps_per_epoch),
        mixed_precision=mixed_precision,
        device=device,
    )


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16() -> bool:
    """True where bf16 matrix products run on native tiles (x86 AMX, Sapphire Rapids and later).

    Without AMX, oneDNN runs bf16 products through AVX-512 conversions at about half the fp32 rate
    (measured: 164 vs 298 GFLOP/s on 2 cores of an AVX512-BF16 Xeon), so autocast would slow training.
    """
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    return "amx_bf16" in _cpu_flags()


def resolve_mixed_precision(choice: str, device: torch.device) -> str:
    """"auto" -> "bf16" on GPUs that support it ("fp16" on older ones) and on CPUs with native bf16
    matrix units (AMX); fp32 ("no") on other CPUs, where bf16 autocast is slower than fp32."""
    if choice == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "no"
        return "no"
    if choice == "fp16" and device.type != "cuda":
        raise ConfigError("train.mixed_precision", f"fp16 needs a GPU (loss scaling); use bf16 or no on {device.type}")
    return choice


# =============================================================================== checkpoints


@dataclass
class TrainState:
    """Progress, saved as ``trainer_state.json`` in every checkpoint."""

    step: int = 0  # optimizer steps done (skipped non-finite steps included)
    epoch: int = 0  # current epoch
    epoch_step: int = 0  # optimizer steps done in the current epoch
    skipped_steps: int = 0
    nonfinite_streak: int = 0
    global_batch: int = 0
    num_processes: int = 1
    last_checkpoint: Optional[str] = None


def list_checkpoints(output_dir: os.PathLike | str) -> List[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit() and (p / STATE_FILE).is_file():
            found.append((int(p.name[5:]), p))
    return [p for _, p in sorted(found)]


def _state_safe_globals() -> List[Any]:
    """What accelerate's pickled states need beyond tensors: numpy arrays (RNG states)."""
    try:
        from accelerate.utils.other import TORCH_SAFE_GLOBALS

        return list(TORCH_SAFE_GLOBALS)
    except ImportError:
        import codecs

        import numpy as np

        core = getattr(np, "_core", None) or np.core
        return [core.multiarray._reconstruct, np.ndarray, np.dtype, codecs.encode]


def check_pickled_states(ckpt: os.PathLike | str) -> None:
    """Read every pickled file of a checkpoint folder (``*.bin``, ``*.pkl``, ``*.pt``, ``*.pth``)
    with ``weights_only=True`` (tensors, plain values and numpy arrays only); raise
    ``CheckpointError`` naming the file when one holds anything else. Tensors are memory-mapped,
    not read."""
    safe = _state_safe_globals()
    for f in sorted(Path(ckpt).iterdir()):
        if f.suffix not in (".bin", ".pkl", ".pt", ".pth") or not f.is_file():
            continue
        try:
            with torch.serialization.safe_globals(safe):
                try:
                    torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap" not in str(exc):
                        raise
                    torch.load(f, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
        except pickle.UnpicklingError as exc:
            lines = str(exc).strip().splitlines()
            detail = next((line.strip() for line in lines if "GLOBAL" in line), None)
            if detail is None:  # not a pickle of known objects: corrupt
                what = next((line.strip() for line in lines if line.startswith("Unsupported")), "not a torch pickle")
                raise CheckpointError(f"{f}: unreadable ({what})") from None
            raise CheckpointError(
                f"{f}: refusing to resume from it: it holds more than tensors and plain values ({detail}). "
                "Only resume from checkpoints you trust."
            ) from None
        except Exception as exc:
            raise CheckpointError(f"{f}: unreadable ({type(exc).__name__}: {exc})") from exc


def find_latest_checkpoint(output_dir: os.PathLike | str) -> Optional[Path]:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


# =============================================================================== trainer


@dataclass
class TrainResult:
    output_dir: Path
    steps: int  # optimizer steps done in all (a resumed run counts the earlier ones)
    last_checkpoint: Optional[Path]
    first_loss: Optional[float]  # first / last logged train loss of this session
    last_loss: Optional[float]
    start_step: int = 0  # the step this session started from (> 0 when resumed)
    loss_history: List[Tuple[int, float]] = field(default_factory=list)  # (step, logged train loss)
    eval: Dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    plan: Optional[RunPlan] = None
    skipped_items: int = 0  # unreadable clips skipped (data.on_error=skip), listed in skipped.tsv


class Trainer:
    """Builds everything from a ``Config`` and runs ``fit``.

    ``task`` and ``datasets`` (train, eval) may be passed in to replace the registered ones
    (tests, notebooks). ``after_step(step)`` is a no-op hook a subclass may use.
    ``device_skip = False`` (class attribute) reads the non-finite flags every step even where
    the optimizer could skip on the device.
    """

    device_skip: bool = True

    def __init__(self, cfg: Config, *, task: Optional[Task] = None, datasets: Optional[Tuple[Dataset, Optional[Dataset]]] = None) -> None:
        from accelerate import Accelerator, PartialState
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        validate(cfg)
        if task is None and cfg.task not in TASKS:
            raise ConfigError("task", f"unknown task {cfg.task!r}; registered: {', '.join(sorted(TASKS))}")
        if datasets is None and cfg.modality not in DATASET_BUILDERS:
            raise ConfigError("modality", f"no dataset builder for {cfg.modality!r}; registered: {', '.join(sorted(DATASET_BUILDERS))}")
        state = PartialState(cpu=cfg.train.cpu)
        cfg = dataclasses.replace(cfg, output_dir=str(self._output_dir(cfg, state)))
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.task = task if task is not None else TASKS[cfg.task](cfg)
        self._datasets = datasets
        self.mixed_precision = resolve_mixed_precision(cfg.train.mixed_precision, state.device)
        if state.num_processes == 1:  # one process may run several trainers (notebooks, tests), each with its own precision
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state()
        self.accelerator = Accelerator(
            cpu=cfg.train.cpu,
            mixed_precision=self.mixed_precision,
            gradient_accumulation_steps=cfg.train.grad_accum,
            log_with="tensorboard" if cfg.logging.tensorboard else None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir)),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters)],
            step_scheduler_with_optimizer=False,
        )
        self._stop_signal: Optional[str] = None
        self._nonfinite: Optional[_NonFiniteSteps] = None

    @staticmethod
    def _output_dir(cfg: Config, state) -> Path:
        if cfg.output_dir:
            return Path(cfg.output_dir).expanduser().resolve()
        # one timestamp for all processes: the main process picks it
        from accelerate.utils import broadcast_object_list

        name = [f"{cfg.modality}-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"]
        if state.num_processes > 1:
            broadcast_object_list(name, from_process=0)
        return Path("runs", name[0]).resolve()

    # ------------------------------------------------------------------------ the loop
    def fit(self, stop_after: Optional[int] = None) -> TrainResult:
        """Train to the end of the schedule (or until ``stop_after`` steps, or SIGTERM: then save
        a checkpoint and return ``interrupted=True``, as a preempted run does)."""
        cfg, acc, task = self.cfg, self.accelerator, self.task
        t_start = time.time()
        self._prepare_output_dir()

        # data and model: every process builds the same model from the same seed
        from accelerate.utils import set_seed

        set_seed(cfg.train.seed)
        model = None if task.model_needs_data else task.build_model(None)  # bad model params fail before data work
        with acc.main_process_first():
            train_set, eval_set = self._datasets if self._datasets is not None else self._build_datasets()
        if cfg.data.cache:
            train_set = MemoryCached(train_set)
            eval_set = MemoryCached(eval_set) if eval_set is not None else None
        if model is None:
            model = task.build_model(train_set)
        plan = plan_run(cfg, task.items_per_epoch(train_set), acc.num_processes, mixed_precision=self.mixed_precision, device=str(acc.device))
        _logger.info("run plan: %s", plan.describe())
        fused = resolve_fused(cfg.optim.fused, self._param_devices())
        optimizer = build_optimizer(task.param_groups(model), lr=plan.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, fused=fused)
        _logger.info("optimizer: AdamW, %s implementation (optim.fused=%s)", "fused" if fused else "default", cfg.optim.fused)
        sampler = task.build_sampler(train_set, plan)
        train_loader = self._loader(EpochIndexed(train_set), cfg.train.batch_size, sampler=sampler)
        eval_loader = self._loader(eval_set, cfg.eval.batch_size or cfg.train.batch_size) if eval_set is not None and cfg.eval.every_n_epochs >= 0 else None
        if cfg.train.compile:
            model = torch.compile(model)
        model, optimizer, train_loader, eval_loader = acc.prepare(model, optimizer, train_loader, eval_loader)
        self._register_weight_hooks()
        set_seed(cfg.train.seed + acc.process_index)  # per-process masking / drop-path randomness

        state = self._resume(plan)
        if state.last_checkpoint:
            set_fused(optimizer, fused)  # the loaded state carries the implementation that wrote it
        start_step = state.step
        metrics = MetricsWriter(self.output_dir / "metrics.jsonl", acc if cfg.logging.tensorboard else None, enabled=acc.is_main_process)
        if cfg.logging.tensorboard:
            acc.init_trackers("tensorboard")
        if state.step and acc.is_main_process:
            metrics.truncate_after(state.step)
        self._write_run_info(plan)

        from tqdm.auto import tqdm

        bar = tqdm(total=plan.total_steps, initial=state.step, disable=not (acc.is_local_main_process and cfg.logging.progress), dynamic_ncols=True)
        params = [p for p in model.parameters() if p.requires_grad]
        window = _Window(acc.device)
        history: List[Tuple[int, float]] = []
        eval_metrics: Dict[str, float] = {}
        evaluated_at = -1
        interrupted = False
        last_saved = state.step if state.last_checkpoint else -1
        clip = cfg.optim.clip_grad if cfg.optim.clip_grad is not None else math.inf
        multi = acc.num_processes > 1
        # fused AdamW skips a non-finite step on the device; with fp16 the loss scaler sets found_inf itself
        if self.device_skip and acc.scaler is None and skips_on_found_inf(optimizer):
            self._nonfinite = _NonFiniteSteps(state, acc.device, cfg.train.max_nonfinite)
        _logger.info("non-finite steps: skipped %s", "on the device" if self._nonfinite is not None else "after reading the flags every step")
        stop = False
        self._install_signal_handler()
        try:
            while state.step < plan.total_steps and not interrupted:
                sampler.set_position(state.epoch, start=state.epoch_step * plan.effective_batch)
                model.train()
                for batch in train_loader:
                    with acc.accumulate(model):
                        loss, parts = task.compute_loss(model, model_inputs(model, batch, acc), batch)
                        acc.backward(loss)
                        window.add(loss, parts, cfg.train.batch_size)
                        if not acc.sync_gradients:
                            continue
                        lr = lr_at(state.step, base_lr=plan.lr, min_lr=plan.min_lr, warmup_steps=plan.warmup_steps, total_steps=plan.total_steps)
                        set_lr(optimizer, lr)
                        grad_norm = acc.clip_grad_norm_(params, clip)
                        flags = self._flags(window, grad_norm)
                        if self._nonfinite is not None:  # skipped on the device: nothing is read
                            step_unless(optimizer, self._nonfinite.update(flags, state.step + 1))
                            optimizer.zero_grad(set_to_none=True)
                        else:
                            bad_loss, bad_grad, stop = (bool(v > 0) for v in flags.tolist())
                            # with fp16 the scaler skips overflowing steps itself; only a bad loss counts
                            if bad_loss or (bad_grad and acc.scaler is None):
                                optimizer.zero_grad(set_to_none=True)
                                if acc.scaler is not None:
                                    acc.scaler.update()
                                state.skipped_steps += 1
                                state.nonfinite_streak += 1
                            else:
                                optimizer.step()
                                optimizer.zero_grad(set_to_none=True)
                                state.nonfinite_streak = 0
                    state.step += 1
                    state.epoch_step += 1
                    bar.update(1)
                    log_due = state.step == 1 or state.step % cfg.logging.every_n_steps == 0 or state.step == plan.total_steps
                    save_due = bool(cfg.checkpoint.every_n_steps) and state.step % cfg.checkpoint.every_n_steps == 0
                    if self._nonfinite is None:
                        if state.nonfinite_streak:
                            self._on_nonfinite(state, bad_loss)
                    elif log_due or save_due or (multi and state.step % STOP_CHECK_EVERY == 0):
                        stop = self._read_nonfinite(state)
                    if log_due:
                        record = self._log_train(metrics, window, state, plan, lr, grad_norm)
                        if "train/loss" in record and isinstance(record["train/loss"], float):
                            history.append((state.step, record["train/loss"]))
                            bar.set_postfix(loss=f"{record['train/loss']:.4f}", lr=f"{lr:.2e}")
                    if save_due:
                        self._save(state)
                        last_saved = state.step
                    self.after_step(state.step)
                    # several processes stop on the agreed flag only, so they stop at the same step
                    if (stop if multi else self._stop_signal) or (stop_after is not None and state.step >= stop_after):
                        interrupted = True
                        break
                    if state.step >= plan.total_steps:
                        break
                if state.epoch_step >= plan.steps_per_epoch:  # a full epoch ended
                    self._read_nonfinite(state)
                    state.epoch += 1
                    state.epoch_step = 0
                    done = state.step >= plan.total_steps
                    if eval_loader is not None and self._eval_due(state.epoch, done):
                        eval_metrics = self._evaluate(model, eval_loader, metrics, state.step)
                        evaluated_at = state.step
                    self._skip_report(train_set, check=True)
                    if cfg.checkpoint.every_n_epochs and state.epoch % cfg.checkpoint.every_n_epochs == 0 and last_saved != state.step:
                        self._save(state)
                        last_saved = state.step
            self._read_nonfinite(state)
            if not interrupted and eval_loader is not None and evaluated_at != state.step:
                eval_metrics = self._evaluate(model, eval_loader, metrics, state.step)  # a run that ended mid-epoch
            if last_saved != state.step:
                self._save(state)
        finally:
            self._nonfinite = None
            self._restore_signal_handler()
            bar.close()
            _stop_workers(train_loader, eval_loader)
            acc.end_training()
            skipped_items = self._skip_report(train_set, check=False, final=True)
        if interrupted:
            _logger.info("stopped at step %d (%s); resume with resume=true", state.step, self._stop_signal or "stop requested")
        return TrainResult(
            output_dir=self.output_dir,
            steps=state.step,
            last_checkpoint=Path(state.last_checkpoint) if state.last_checkpoint else None,
            first_loss=history[0][1] if history else None,
            last_loss=history[-1][1] if history else None,
            start_step=start_step,
            loss_history=history,
            eval=eval_metrics,
            skipped_steps=state.skipped_steps,
            interrupted=interrupted,
            seconds=time.time() - t_start,
            plan=plan,
            skipped_items=skipped_items,
        )

    def after_step(self, step: int) -> None:
        """Called after every optimizer step (a hook for subclasses)."""

    def _param_devices(self) -> List[str]:
        """Device types the optimizer steps parameters on: the training device, and the CPU where
        FSDP offloads the parameters there."""
        devices = [self.accelerator.device.type]
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        offload = getattr(plugin, "cpu_offload", None)
        if getattr(offload, "offload_params", False) or type(offload).__name__ == "CPUOffloadPolicy":
            devices.append("cpu")
        return devices

    # ------------------------------------------------------------------------ pieces
    def _build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        builder = DATASET_BUILDERS[self.cfg.modality]
        train_set = builder(self.cfg, "train")
        if train_set is None:
            raise ConfigError("data.train_manifest", f"the {self.cfg.modality!r} dataset builder made no training set")
        return train_set, builder(self.cfg, "eval")

    def _loader(self, dataset: Dataset, batch_size: int, *, sampler: Optional[Sampler] = None) -> DataLoader:
        workers = self.cfg.data.num_workers
        g = torch.Generator()
        g.manual_seed(self.cfg.train.seed)  # worker seeds; keeps the global RNG untouched
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=sampler is not None,
            num_workers=workers,
            pin_memory=self.accelerator.device.type == "cuda",
            persistent_workers=workers > 0,
            worker_init_fn=_init_worker,
            generator=g,
        )

    def _skip_report(self, train_set: Dataset, *, check: bool, final: bool = False) -> int:
        """Merge the skip logs under ``output_dir/skipped/`` into ``skipped.tsv`` (main process)
        -> number of skipped clips. ``check``: stop when the training set's skipped fraction over
        all processes and workers passes its ``max_skip_fraction`` (a dataset checks only what its
        own process or worker saw). ``final``: at the end of ``fit``, without a barrier, never raises."""
        from ..data import TooManySkippedError, collect_skipped

        acc = self.accelerator
        if not final:
            acc.wait_for_everyone()  # every process's logs of this epoch are complete
        root = self.output_dir / SKIP_DIR
        found: Dict[str, str] = {}
        try:
            for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []:
                for path, reason in collect_skipped(folder).items():
                    found.setdefault(path, reason)
            if found and acc.is_main_process:
                out = self.output_dir / SKIPPED_FILE
                tmp = out.with_name(out.name + ".tmp")
                tmp.write_text("".join(f"{p}\t{r}\n" for p, r in sorted(found.items())), encoding="utf-8")
                os.replace(tmp, out)
        except OSError as exc:
            if not final:
                raise
            _logger.warning("could not write %s: %s", self.output_dir / SKIPPED_FILE, exc)
        if found and acc.is_main_process and len(found) != getattr(self, "_skips_logged", 0):
            self._skips_logged = len(found)
            _logger.info("%d unreadable clip(s) skipped so far, listed in %s", len(found), self.output_dir / SKIPPED_FILE)
        log_dir, fraction = getattr(train_set, "skip_log_dir", None), getattr(train_set, "max_skip_fraction", None)
        if check and log_dir is not None and fraction is not None:
            skipped = len(collect_skipped(log_dir)) if Path(log_dir).is_dir() else 0
            if skipped > fraction * len(train_set):
                raise TooManySkippedError(
                    f"{skipped} of {len(train_set)} training clips are unreadable, more than data.max_skip_fraction={fraction} "
                    f"(listed in {self.output_dir / SKIPPED_FILE}). Check the data (or raise data.max_skip_fraction)."
                )
        return len(found)

    def _flags(self, window: "_Window", grad_norm: torch.Tensor) -> torch.Tensor:
        """[non-finite losses, non-finite grad norm, stop requested], summed over processes, on the
        device (nothing is read; the all-reduce is only enqueued on an accelerator)."""
        device = self.accelerator.device
        flags = torch.stack(
            [
                window.take_nonfinite(),
                (~torch.isfinite(grad_norm.detach().float())).float().reshape(()),
                torch.full((), 1.0 if self._stop_signal else 0.0, device=device),  # a fill, not a host-to-device copy
            ]
        )
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, "sum")
        return flags

    def _on_nonfinite(self, state: TrainState, bad_loss: bool) -> None:
        what = "loss" if bad_loss else "gradient"
        _logger.warning(
            "non-finite %s at step %d: optimizer step skipped (%d in a row, %d in all)", what, state.step, state.nonfinite_streak, state.skipped_steps
        )
        if state.nonfinite_streak >= self.cfg.train.max_nonfinite:
            raise self._too_many_nonfinite(state.nonfinite_streak, what, state.step, state)

    def _too_many_nonfinite(self, count: int, what: str, step: int, state: TrainState) -> NonFiniteLossError:
        return NonFiniteLossError(
            f"{count} consecutive non-finite {what} steps, the last at step {step} "
            f"(train.max_nonfinite={self.cfg.train.max_nonfinite}); last good checkpoint: {state.last_checkpoint or 'none'}. "
            "Lower optim.blr, set optim.clip_grad, use train.mixed_precision=bf16/no, or check the data."
        )

    def _read_nonfinite(self, state: TrainState) -> bool:
        """Where the skip is decided on the device: read its counts into ``state``, warn about the
        steps skipped since the last read, raise ``NonFiniteLossError`` if a streak reached
        ``train.max_nonfinite`` -> the stop flag agreed across processes. A no-op (-> False) where
        the flags are read every step. Called before every checkpoint, so the saved state holds
        exact counts and the checkpoint named by the error is the one saved before the streak."""
        tracker = self._nonfinite
        if tracker is None:
            return False
        seen = tracker.read()
        new = seen.skipped - state.skipped_steps
        state.skipped_steps, state.nonfinite_streak = seen.skipped, seen.streak
        if new > 0:
            _logger.warning(
                "%d optimizer step(s) skipped for a non-finite loss or gradient up to step %d, the last at step %d (non-finite %s; %d in a row now, %d in all)",
                new, state.step, seen.last, "loss" if seen.last_loss else "gradient", seen.streak, seen.skipped,
            )
        if seen.tripped:
            raise self._too_many_nonfinite(seen.tripped_streak, "loss" if seen.tripped_loss else "gradient", seen.tripped, state)
        return seen.stop

    def _log_train(self, metrics: MetricsWriter, window: "_Window", state: TrainState, plan: RunPlan, lr: float, grad_norm: torch.Tensor) -> Dict[str, Any]:
        means, samples, seconds = window.flush(self.accelerator)
        record = {f"train/{k}": v for k, v in means.items()}
        record.update(
            {
                "epoch": state.epoch + state.epoch_step / plan.steps_per_epoch,
                "train/lr": lr,
                "train/grad_norm": grad_norm.item(),
                "train/samples_per_s": samples * self.accelerator.num_processes / max(seconds, 1e-9),  # items, all processes
                "train/skipped_steps": state.skipped_steps,
            }
        )
        return metrics.write(state.step, record)

    def _eval_due(self, epoch: int, done: bool) -> bool:
        n = self.cfg.eval.every_n_epochs
        return done if n == 0 else (done or epoch % n == 0)

    def _evaluate(self, model: nn.Module, loader, metrics: MetricsWriter, step: int) -> Dict[str, float]:
        # evaluation draws its randomness (e.g. masks) from a fixed seed, outside the training RNG stream
        device = self.accelerator.device
        devices = [device.index or 0] if device.type == "cuda" else []
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.cfg.train.seed)
                result = self.task.evaluate(model, loader, self.accelerator)
        finally:
            model.train()
        if result:
            metrics.write(step, {f"eval/{k}": v for k, v in result.items()})
            _logger.info("eval at step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in result.items()))
        return result

    # ------------------------------------------------------------------------ output dir, resume, save
    def _prepare_output_dir(self) -> None:
        acc = self.accelerator
        if list_checkpoints(self.output_dir) and not self.cfg.resume:  # every process raises
            raise ConfigError(
                "resume", f"{self.output_dir} already holds checkpoints; pass --resume (resume=true) to continue it, or choose another --output-dir"
            )
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            root = self.output_dir / CHECKPOINT_DIR
            for stale in root.glob(".tmp-*") if root.is_dir() else ():
                shutil.rmtree(stale, ignore_errors=True)  # left by a crash while saving
            save_config(self.cfg, self.output_dir / CONFIG_FILE)
        acc.wait_for_everyone()

    def _resume(self, plan: RunPlan) -> TrainState:
        state = TrainState(global_batch=plan.effective_batch, num_processes=plan.num_processes)
        if not self.cfg.resume:
            return state
        ckpt = find_latest_checkpoint(self.output_dir)
        if ckpt is None:
            _logger.info("resume: no checkpoint in %s yet, starting from scratch", self.output_dir)
            return state
        check_pickled_states(ckpt)
        rng_file = ckpt / f"random_states_{self.accelerator.process_index}.pkl"
        if not rng_file.is_file():
            _logger.warning("%s lacks %s: the random streams restart, so the continuation is not bit-exact", ckpt, rng_file.name)
        self.accelerator.load_state(str(ckpt))
        saved = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        state = TrainState(**{k: v for k, v in saved.items() if k in TrainState.__dataclass_fields__})
        state.last_checkpoint = str(ckpt)
        old_cfg = ckpt / CONFIG_FILE
        if old_cfg.is_file():
            changed = [k for k in diff(load_config([old_cfg], check=False), self.cfg) if k not in ("resume", "output_dir")]
            if changed:
                _logger.warning("resuming with a config that differs from the checkpoint's in: %s", ", ".join(changed))
        if state.global_batch != plan.effective_batch or state.num_processes != plan.num_processes:
            # another world size: continue at the same item of the epoch, rounded down; not bit-exact
            consumed = state.epoch_step * state.global_batch
            state.epoch_step = consumed // plan.effective_batch
            _logger.warning(
                "resuming with effective batch %d on %d process(es) (checkpoint: %d on %d); the continuation is not bit-exact",
                plan.effective_batch, plan.num_processes, state.global_batch, state.num_processes,
            )
            state.global_batch, state.num_processes = plan.effective_batch, plan.num_processes
        if state.epoch_step > plan.steps_per_epoch:
            state.epoch, state.epoch_step = state.epoch + 1, 0
        _logger.info("resumed from %s at step %d (epoch %d, step %d of it)", ckpt, state.step, state.epoch, state.epoch_step)
        return state

    def _register_weight_hooks(self) -> None:
        """Model weights go through avmae's safetensors export, not accelerate's own file, so a
        checkpoint's ``model.safetensors`` is the exported model (no ``module.`` prefixes)."""
        acc = self.accelerator

        def save_hook(models, weights, output_dir):
            if acc.is_main_process:
                save_checkpoint(acc.unwrap_model(models[0], keep_torch_compile=False), Path(output_dir) / WEIGHTS_FILE, model_name=self.cfg.model.name, config=to_dict(self.cfg))
            weights.clear()

        def load_hook(models, input_dir):
            from safetensors.torch import load_file

            sd = load_file(str(Path(input_dir) / WEIGHTS_FILE), device="cpu")
            acc.unwrap_model(models[0], keep_torch_compile=False).load_state_dict(sd, strict=True)
            models.clear()

        acc.register_save_state_pre_hook(save_hook)
        acc.register_load_state_pre_hook(load_hook)

    def _save(self, state: TrainState) -> Path:
        """Checkpoint of ``state.step``: temp folder, complete, then renamed; old ones rotated."""
        acc = self.accelerator
        self._read_nonfinite(state)  # exact counts in trainer_state.json; no checkpoint after a failed streak
        root = self.output_dir / CHECKPOINT_DIR
        final = root / f"step_{state.step:07d}"
        tmp = root / f".tmp-step_{state.step:07d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            save_config(self.cfg, tmp / CONFIG_FILE)
            record = dataclasses.asdict(state)
            record.pop("last_checkpoint")
            (tmp / STATE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._rotate()
        acc.wait_for_everyone()
        state.last_checkpoint = str(final)
        _logger.info("saved checkpoint %s", final)
        return final

    def _rotate(self) -> None:
        keep = self.cfg.checkpoint.keep_last
        if keep > 0:
            for old in list_checkpoints(self.output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    def _write_run_info(self, plan: RunPlan) -> None:
        if self.accelerator.is_main_process:
            info = {"plan": dataclasses.asdict(plan), "avmae_version": avmae.__version__, "torch_version": torch.__version__}
            (self.output_dir / "run.json").write_text(json.dumps(info, indent=1), encoding="utf-8")

    # ------------------------------------------------------------------------ SIGTERM
    def _install_signal_handler(self) -> None:
        self._previous_handler = None
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            self._stop_signal = signal.Signals(signum).name
            _logger.warning("%s received: saving a checkpoint at the end of this step", self._stop_signal)

        self._previous_handler = signal.signal(signal.SIGTERM, handler)

    def _restore_signal_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None


def _init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: ``seed_worker``, and SIGTERM ignored. A preempted job's
    SIGTERM often reaches every process of the group; a worker killed by it made the main process
    fail (DataLoader's SIGCHLD check) in the middle of the final checkpoint. The main process saves,
    then stops its workers as usual."""
    from ..data import seed_worker

    seed_worker(worker_id)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _stop_workers(*loaders: Optional[DataLoader]) -> None:
    """Shut the persistent DataLoader workers down now. Left to interpreter exit, they would
    outlive ``fit`` (notebooks) and, as they ignore SIGTERM, hang the exit of a preempted run."""
    for loader in loaders:
        it = getattr(loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            try:
                it._shutdown_workers()
            except Exception as exc:  # never mask the run's own outcome
                _logger.debug("stopping DataLoader workers: %s", exc)
            loader._iterator = None


@dataclass
class _NonFiniteRead:
    """What ``_NonFiniteSteps.read`` found."""

    streak: int  # non-finite steps in a row now
    skipped: int  # skipped steps in all (the run's, a resumed run's earlier ones included)
    last: int  # the last skipped step (0: none this session)
    last_loss: bool  # whether its loss (else only its gradient) was non-finite
    tripped: int  # the step where the streak first reached the limit (0: never)
    tripped_streak: int  # the streak then
    tripped_loss: bool
    stop: bool  # a stop requested on some process, as of the last step


class _NonFiniteSteps:
    """Non-finite step bookkeeping kept on the device, so that a step needs no read: ``update``
    turns a step's summed flags into fused AdamW's ``found_inf`` and counts with tensor ops
    (``streak = (streak + 1) * bad``, ``skipped += bad``); ``read`` is the one host read (none
    again until the next ``update``)."""

    def __init__(self, state: TrainState, device: torch.device, limit: int) -> None:
        def scalar(value: int) -> torch.Tensor:
            return torch.full((), value, dtype=torch.long, device=device)

        self.limit = limit
        self.streak = scalar(state.nonfinite_streak)
        self.skipped = scalar(state.skipped_steps)
        self.last, self.last_loss = scalar(0), scalar(0)
        self.tripped, self.tripped_streak, self.tripped_loss = scalar(0), scalar(0), scalar(0)
        self.stop = scalar(0)
        self._seen: Optional[_NonFiniteRead] = None

    def update(self, flags: torch.Tensor, step: int) -> torch.Tensor:
        """Count optimizer step ``step`` (1-based) from ``Trainer._flags``' summed flags -> its
        ``found_inf``: float32 1.0 where the step is to be skipped, else 0.0."""
        loss = flags[0] > 0
        bad = loss | (flags[1] > 0)
        b = bad.long()
        self.streak = (self.streak + 1) * b
        self.skipped = self.skipped + b
        self.last = torch.where(bad, step, self.last)
        self.last_loss = torch.where(bad, loss.long(), self.last_loss)
        trip = (self.streak >= self.limit) & (self.tripped == 0)  # streak > 0 here: limit >= 1
        self.tripped = torch.where(trip, step, self.tripped)
        self.tripped_streak = torch.where(trip, self.streak, self.tripped_streak)
        self.tripped_loss = torch.where(trip, loss.long(), self.tripped_loss)
        self.stop = (flags[2] > 0).long()
        self._seen = None
        return b.to(torch.float32)

    def read(self) -> _NonFiniteRead:
        """The counts, in one read of the device."""
        if self._seen is None:
            values = [self.streak, self.skipped, self.last, self.last_loss, self.tripped, self.tripped_streak, self.tripped_loss, self.stop]
            streak, skipped, last, last_loss, tripped, tripped_streak, tripped_loss, stop = torch.stack(values).tolist()
            self._seen = _NonFiniteRead(streak, skipped, last, bool(last_loss), tripped, tripped_streak, bool(tripped_loss), bool(stop))
        return self._seen


class _Window:
    """Running sums of the loss and its parts between two log lines (on device, no syncs)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.nonfinite = torch.zeros((), device=device)
        self._reset()

    def _reset(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = torch.zeros((), device=self.device)
        self.samples = 0
        self.started = time.time()

    def add(self, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], items: int) -> None:
        loss = loss.detach().float()
        ok = torch.isfinite(loss)
        self.nonfinite = self.nonfinite + (~ok).float()
        for k, v in {"loss": loss, **parts}.items():
            v = v.detach().float()
            self.sums[k] = self.sums.get(k, 0.0) + torch.where(ok & torch.isfinite(v), v, torch.zeros_like(v))
        self.count = self.count + ok.float()
        self.samples += items

    def take_nonfinite(self) -> torch.Tensor:
        out, self.nonfinite = self.nonfinite, torch.zeros((), device=self.device)
        return out

    def flush(self, accelerator) -> Tuple[Dict[str, float], int, float]:
        """(means across processes, items seen by this process, seconds) since the last flush."""
        keys = sorted(self.sums)
        seconds = time.time() - self.started
        micro = self.samples
        if keys:
            totals = torch.stack([torch.as_tensor(self.sums[k], device=self.device) for k in keys] + [self.count])
            if accelerator.num_processes > 1:
                totals = accelerator.reduce(totals, "sum")
            totals = totals.tolist()
            means = {k: (totals[i] / totals[-1] if totals[-1] else float("nan")) for i, k in enumerate(keys)}
        else:
            means = {}
        self._reset()
        return means, micro, seconds


def train(cfg: Config, **kwargs: Any) -> TrainResult:
    """``Trainer(cfg, **kwargs).fit()``."""
    return Trainer(cfg, **kwargs).fit()


# the classification tasks ("finetune", "linprobe") live in their own module and register on import
from .finetune import FinetuneTask, LinearProbeTask  # noqa: E402

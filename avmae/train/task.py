"""The ``Task`` contract: what a run does with a model and data (``task: <name>`` in the config).

A task is a class registered in ``avmae.registry.TASKS`` (``@register_task("name")``, or the
``avmae.tasks`` entry-point group). The trainer calls its seams and nothing else:

    build_model(train_set) -> nn.Module          the model, initialised (checkpoint.init_from)
    param_groups(model) -> list                  AdamW groups (weight decay, lr_scale)
    items_per_epoch(train_set) / build_sampler   the length and the order of an epoch
    compute_loss(model, inputs, batch)           -> (loss, {name: scalar}) of one batch
    validate(cfg) (classmethod)                  what only the task knows about a config
    options                                      a dataclass of its ``task_params`` (``self.params``)
    after_optimizer_step(model, step, total)     after every optimizer step (an EMA teacher)
    evaluate(model, loader, accelerator)         -> {name: float}, identical on every process

``after_optimizer_step`` was called ``after_step``: a task that still implements that name is
called by it, with a ``DeprecationWarning``.

``model_params(train_set)`` is the one place the factory params of the run's model are derived
from the config (``model.params`` plus the input size from ``data.*``, and what the task adds);
they are stored with every checkpoint's weights, so ``avmae.hub.load_pretrained`` rebuilds the
model without knowing the task.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Sampler

import avmae

from ..checkpoint import CheckpointError, load_checkpoint
from ..config import Config, ConfigError, param_source
from ..deprecation import deprecated_alias
from ..options import merge_options
from ..run_folder import resolve_weights
from .optim import param_groups

_logger = logging.getLogger(__name__)

__all__ = [
    "Task",
    "base_model_params",
    "build_model",
    "model_inputs",
    "input_shapes",
    "data_statistics",
    "warn_other_statistics",
]


def base_model_params(cfg: Config) -> Dict[str, Any]:
    """``model.params`` plus the input size from ``data.*`` (the single source of truth)."""
    return {**cfg.model.params, "target_length": cfg.data.target_length, "num_mel_bins": cfg.data.num_mel_bins}


def build_model(name: str, params: Mapping[str, Any]) -> nn.Module:
    """``avmae.create_model(name, **params)``; a rejected param is a ``ConfigError``. The call
    travels with the model (``model.avmae_spec``) into every checkpoint's weights."""
    try:
        return avmae.create_model(name, **params)
    except (TypeError, ValueError, KeyError) as exc:
        key = param_source(str(exc)) or "model.params"
        raise ConfigError(key, f"model {name!r} rejected its params {dict(params)}: {exc}") from exc


def input_shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """``{modality: input shape without the batch}`` of a model (its modalities' ``input_shape``)."""
    mods = getattr(model, "modalities", None) or {}
    return {
        m: tuple(int(v) for v in mod.input_shape)
        for m, mod in mods.items()
        if getattr(mod, "input_shape", None) is not None
    }


def model_inputs(model: nn.Module, batch: Mapping[str, Any], accelerator=None) -> Dict[str, torch.Tensor]:
    """The batch entries the model takes: those keyed by one of its modalities."""
    inner = accelerator.unwrap_model(model, keep_torch_compile=False) if accelerator is not None else model
    keys = getattr(inner, "modalities", None)
    if keys is None:
        raise TypeError(
            f"{type(inner).__name__} has no `modalities`; the trainer cannot tell which batch entries are inputs"
        )
    inputs = {k: batch[k] for k in keys if k in batch}
    if not inputs:
        raise KeyError(f"batch keys {sorted(batch)} hold none of the model's modalities {list(keys)}")
    return inputs


def data_statistics(data: Mapping[str, Any]) -> Optional[Tuple[float, float, str]]:
    """(mean, std, how they were given) of a run config's ``data`` section, None when unknown."""
    from ..data import NORM_STATS

    if data.get("mean") is not None and data.get("std") is not None:
        return float(data["mean"]), float(data["std"]), "data.mean/std"
    norm = data.get("norm") or "audioset"
    return (*NORM_STATS[norm], f"data.norm={norm}") if norm in NORM_STATS else None


def warn_other_statistics(cfg: Config, init_from) -> None:
    """Warn when ``init_from`` was trained with other fbank statistics than ``cfg`` normalises with:
    the pretrained weights then see inputs on another scale. A file without a run config (the
    released AudioMAE) counts as trained with AudioSet's."""
    import dataclasses

    from ..hub import checkpoint_config

    try:
        saved = checkpoint_config(init_from)
    except CheckpointError:
        return
    if saved is None:  # a foreign file may describe its inputs (BEATs)
        from ..hub import describe_checkpoint

        try:
            saved = describe_checkpoint(init_from).config
        except CheckpointError:
            saved = None
    data = (saved or {}).get("data")
    style = data.get("fbank_style") if isinstance(data, Mapping) else None
    if style and style != cfg.data.fbank_style:
        _logger.warning(
            "checkpoint.init_from takes the %r fbank; this run computes the %r one (data.fbank_style=%s keeps theirs)",
            style,
            cfg.data.fbank_style,
            style,
        )
    theirs = data_statistics(data) if isinstance(data, Mapping) else data_statistics({"norm": "audioset"})
    ours = data_statistics(dataclasses.asdict(cfg.data))
    if theirs is None or ours is None:
        return
    if abs(theirs[0] - ours[0]) > 1e-3 * max(1.0, abs(theirs[0])) or abs(theirs[1] - ours[1]) > 1e-3 * max(
        1.0, abs(theirs[1])
    ):
        where = "its run config" if saved else "assumed for a file without a run config, as the released AudioMAE"
        _logger.warning(
            "checkpoint.init_from was trained on fbank statistics mean %.4g, std %.4g (%s, %s); this run normalises"
            " with mean %.4g, std %.4g (%s), so the pretrained weights see inputs on another scale. Keep theirs"
            " (data.mean=%.7g data.std=%.7g) unless that is meant.",
            theirs[0],
            theirs[1],
            theirs[2],
            where,
            ours[0],
            ours[1],
            ours[2],
            theirs[0],
            theirs[1],
        )


class Task:
    """Base class of a task; subclass, decorate with ``@avmae.register_task("name")`` and override
    what differs (``compute_loss`` at least).

    ``model_needs_data = False`` (pretraining) builds the model before the datasets, so that bad
    ``model.params`` fail before any data work; leave it True when ``model_params`` reads the set.
    """

    name = "task"
    model_needs_data = True
    options: Optional[type] = None  # a dataclass of the task's own ``task_params`` (see avmae.options)

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.params = self.options_of(cfg)

    @classmethod
    def options_of(cls, cfg: Config) -> Any:
        """``task_params`` as an instance of ``options`` (None when the task declares none)."""
        if cls.options is None:
            return None
        return merge_options(cls.options, cfg.task_params, "task_params", f"task {cfg.task!r}")

    @classmethod
    def validate(cls, cfg: Config) -> None:
        """What only this task knows about a config; a ``ConfigError`` naming the key. Called by
        ``avmae.config.validate`` (after the generic checks, with ``task_params`` merged)."""

    # ------------------------------------------------------------------ model
    def model_params(self, train_set: Optional[Dataset]) -> Dict[str, Any]:
        """Factory params of the run's model: ``base_model_params`` and what the task adds."""
        return base_model_params(self.cfg)

    def build_model(self, train_set: Optional[Dataset]) -> nn.Module:
        model = build_model(self.cfg.model.name, self.model_params(train_set))
        if self.cfg.checkpoint.init_from:
            self.load_init(model)
        return model

    def load_init(self, model: nn.Module) -> None:
        try:
            path = resolve_weights(self.cfg.checkpoint.init_from)
        except CheckpointError as exc:
            raise ConfigError("checkpoint.init_from", str(exc)) from None
        report = load_checkpoint(model, path, strict=True, reset_head=True)  # logs what it loaded
        _logger.info("initialised the model from %s (%s)", path, report.format)
        warn_other_statistics(self.cfg, path)

    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        return param_groups(model, self.cfg.optim.weight_decay, layer_decay=self.cfg.optim.layer_decay)

    # ------------------------------------------------------------------ data order
    def items_per_epoch(self, train_set: Dataset) -> int:
        """Training items per epoch: the set's size, or ``data.epoch_len`` with balanced sampling."""
        return self.cfg.data.epoch_len if self.cfg.data.balanced and self.cfg.data.epoch_len else len(train_set)

    def build_sampler(self, train_set: Dataset, plan) -> Sampler:
        """The global order of each epoch as ``(epoch, index)`` pairs, with ``set_position``:
        ``EpochSampler``, or a ``BalancedSampler`` when ``data.balanced``."""
        from .samplers import EpochSampler, balanced_sampler

        if self.cfg.data.balanced:
            return balanced_sampler(self.cfg, train_set, plan.train_items, global_batch=plan.effective_batch)
        return EpochSampler(len(train_set), global_batch=plan.effective_batch, seed=self.cfg.train.seed)

    # ------------------------------------------------------------------ steps
    def compute_loss(
        self, model: nn.Module, inputs: Dict[str, torch.Tensor], batch: Mapping[str, Any]
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (1-based) of ``total_steps``: update what the model keeps
        besides its trained weights (an EMA teacher); ``model`` unwrapped."""

    after_step = deprecated_alias("after_optimizer_step", "after_step")

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

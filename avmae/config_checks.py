"""Checks of a merged run config: ``validate`` rejects impossible values before any work starts,
naming the key (``ConfigError``); ``require_training_data`` asks for the training data a run reads.
Public through ``avmae.config``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from .config_error import ConfigError
from .config_schema import DATA_KEYS_IN_MODEL, DEMO_DATA, Config
from .options import check_entries

__all__ = ["validate", "require_training_data"]


def require_training_data(cfg: Config) -> Config:
    """A run reads its training data from ``data.train_manifest`` or, in the demo configs, from
    ``data.demo``; neither is a ``ConfigError`` on ``data.train_manifest``. Kept out of ``validate``
    so that a recipe without its manifests still loads (to print or inspect it). Returns ``cfg``."""
    d = cfg.data
    _check(
        d.train_manifest is not None or d.demo is not None,
        "data.train_manifest",
        "not set: give data.train_manifest=<train.json> (with data.eval_manifest and data.label_csv), or"
        f" data.demo={cfg.modality if cfg.modality in DEMO_DATA else 'audio'} for the generated demo clips",
    )
    return cfg


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _in(key: str, value: Any, allowed: Sequence[Any]) -> None:
    _check(value in allowed, key, f"must be one of {list(allowed)}, got {value!r}")


def _check_plugin_spec(key: str, spec: Any, registry) -> None:
    """A registered name, or a mapping with a registered ``name`` (its params are checked when built)."""
    try:
        name = registry.parse(spec)[0]
    except ValueError:
        name = None
    _check(
        bool(name),
        key,
        f"must be a registered {registry.kind} name or {{name: ..., <params>}}, got {spec!r}",
    )
    _check(name in registry, key, f"unknown {registry.kind} {name!r}; registered: {', '.join(registry.names())}")


def validate(cfg: Config) -> Config:
    """Reject impossible values before any work; the error names the key. Returns ``cfg``.

    Names that live in registries (model, task, modality) are checked against what is registered
    when this runs; the model's own params are checked by its factory when the model is built.
    """
    import avmae  # the model registry; imported here so that avmae.config stays cheap to import

    _check(bool(cfg.task), "task", "must name a task (pretrain, finetune, linprobe)")
    _check(bool(cfg.dataset or cfg.modality), "dataset", "must name a dataset builder (audio, av, audio_shards)")
    _check(
        not cfg.resume or bool(cfg.output_dir), "resume", "needs output_dir (--output-dir): the run folder to continue"
    )

    # model
    names = avmae.list_models()
    _check(cfg.model.name in names, "model.name", f"unknown model {cfg.model.name!r}; registered: {', '.join(names)}")
    for k, source in DATA_KEYS_IN_MODEL.items():
        _check(k not in cfg.model.params, f"model.params.{k}", f"is set from {source}; set it there instead")

    # data
    d = cfg.data
    _check(d.sample_rate > 0, "data.sample_rate", f"must be > 0, got {d.sample_rate}")
    # whether the model's patches tile the input is the model's to say (its error names these keys)
    _check(d.target_length > 0, "data.target_length", f"must be > 0 frames, got {d.target_length}")
    _check(d.num_mel_bins > 0, "data.num_mel_bins", f"must be > 0, got {d.num_mel_bins}")
    if d.mean is None and d.std is None:
        from avmae.data import NORM_STATS

        _in("data.norm", d.norm, sorted(NORM_STATS))
    else:
        _check(
            d.mean is not None and d.std is not None,
            "data.mean" if d.mean is None else "data.std",
            "give both data.mean and data.std, or neither (then data.norm names the stats)",
        )
        _check(d.std > 0, "data.std", f"must be > 0, got {d.std}")
    _check(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    _in("data.on_error", d.on_error, ["raise", "skip"])
    _check(0.0 <= d.max_skip_fraction <= 1.0, "data.max_skip_fraction", f"must be in [0, 1], got {d.max_skip_fraction}")
    for key in ("train_manifest", "eval_manifest", "label_csv"):
        value = getattr(d, key)
        if value is not None:
            _check(Path(value).expanduser().is_file(), f"data.{key}", f"no such file: {value}")
    _check(
        d.demo is None or d.demo in DEMO_DATA,
        "data.demo",
        f"must be one of {list(DEMO_DATA)} (the generated demo clips) or null, got {d.demo!r}",
    )
    if d.train_manifest is None:
        given = [f"data.{k}" for k in ("eval_manifest", "label_csv") if getattr(d, k) is not None]
        _check(
            not given,
            "data.train_manifest",
            f"is not set while {' and '.join(given)} {'is' if len(given) == 1 else 'are'}; give the training"
            " manifest too",
        )
    a = d.augment
    _check(a.freqm >= 0, "data.augment.freqm", f"must be >= 0, got {a.freqm}")
    _check(a.timem >= 0, "data.augment.timem", f"must be >= 0, got {a.timem}")
    _check(
        a.freqm <= d.num_mel_bins,
        "data.augment.freqm",
        f"must be <= data.num_mel_bins ({d.num_mel_bins}), got {a.freqm}",
    )
    _check(0.0 <= a.mixup <= 1.0, "data.augment.mixup", f"is a probability in [0, 1], got {a.mixup}")
    _check(a.mixup_alpha > 0, "data.augment.mixup_alpha", f"must be > 0, got {a.mixup_alpha}")
    _check(0.0 <= a.speed < 1.0, "data.augment.speed", f"is a fraction in [0, 1), got {a.speed}")
    augmenting = a.freqm or a.timem or a.mixup or a.gain or a.roll or a.shift or a.noise or a.speed
    _check(d.epoch_len is None or d.epoch_len >= 1, "data.epoch_len", f"must be >= 1 (or null), got {d.epoch_len}")
    _check(
        d.epoch_len is None or d.balanced,
        "data.epoch_len",
        "sets the length of a balanced-sampling epoch; set data.balanced=true too",
    )
    _check(
        d.sample_weights is None or d.balanced,
        "data.sample_weights",
        "is used by balanced sampling; set data.balanced=true too",
    )
    if d.sample_weights is not None:
        _check(
            Path(d.sample_weights).expanduser().is_file(), "data.sample_weights", f"no such file: {d.sample_weights}"
        )
    _check(
        not (d.cache and augmenting),
        "data.cache",
        "would freeze the training augmentation (data.augment.*); turn one of them off",
    )

    # masking
    m = cfg.masking
    _check(
        m.mask_ratio is None or 0.0 <= m.mask_ratio < 1.0,
        "masking.mask_ratio",
        f"must be in [0, 1) (or null: the model's default), got {m.mask_ratio}",
    )
    for name, r in m.per_modality.items():
        _check(0.0 <= r < 1.0, f"masking.per_modality.{name}", f"must be in [0, 1), got {r}")
    for key in ("mask_t_prob", "mask_f_prob"):
        p = getattr(m, key)
        _check(0.0 <= p < 1.0, f"masking.{key}", f"must be in [0, 1), got {p}")
    from avmae.registry import MASKERS, OBJECTIVES

    for name, spec in m.maskers.items():
        _check_plugin_spec(f"masking.maskers.{name}", spec, MASKERS)
    for i, spec in enumerate(cfg.objectives):
        _check_plugin_spec(f"objectives[{i}]", spec, OBJECTIVES)

    # optim
    o = cfg.optim
    _check(o.blr > 0 and math.isfinite(o.blr), "optim.blr", f"must be > 0, got {o.blr}")
    _check(
        o.lr is None or (o.lr > 0 and math.isfinite(o.lr)), "optim.lr", f"must be > 0 (or null to use blr), got {o.lr}"
    )
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    for i, b in enumerate(o.betas):
        _check(0.0 <= b < 1.0, "optim.betas", f"each beta must be in [0, 1), got {list(o.betas)} (index {i})")
    _check(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
    _check(
        o.clip_grad is None or o.clip_grad > 0,
        "optim.clip_grad",
        f"must be > 0 (or null for no clipping), got {o.clip_grad}",
    )
    _check(0.0 < o.layer_decay <= 1.0, "optim.layer_decay", f"must be in (0, 1] (1 = off), got {o.layer_decay}")
    if isinstance(o.fused, bool):  # OptimConfig(fused=True) built in Python
        o.fused = "true" if o.fused else "false"
    _in("optim.fused", o.fused, ["auto", "true", "false"])

    # schedule
    s = cfg.schedule
    _check(s.epochs >= 1, "schedule.epochs", f"must be >= 1, got {s.epochs}")
    _check(s.warmup_epochs >= 0, "schedule.warmup_epochs", f"must be >= 0, got {s.warmup_epochs}")
    # an error rather than a quietly shortened warm-up: the schedule that runs is the one the config says
    _check(
        s.max_steps is not None or s.warmup_steps is not None or s.warmup_epochs <= s.epochs,
        "schedule.warmup_epochs",
        f"({s.warmup_epochs:g}) exceeds schedule.epochs ({s.epochs}); shorten the warm-up too, e.g."
        f" schedule.warmup_epochs={s.epochs / 10:g} (a tenth of the run)",
    )
    _check(
        s.warmup_steps is None or s.warmup_steps >= 0,
        "schedule.warmup_steps",
        f"must be >= 0 (or null: schedule.warmup_epochs), got {s.warmup_steps}",
    )
    _check(s.min_lr >= 0, "schedule.min_lr", f"must be >= 0, got {s.min_lr}")
    base_lr = o.lr if o.lr is not None else None
    if base_lr is not None:
        _check(s.min_lr <= base_lr, "schedule.min_lr", f"({s.min_lr}) exceeds optim.lr ({base_lr})")
    _check(s.max_steps is None or s.max_steps >= 1, "schedule.max_steps", f"must be >= 1 (or null), got {s.max_steps}")
    _check(
        s.max_seconds is None or s.max_seconds > 0,
        "schedule.max_seconds",
        f"must be > 0 (or null), got {s.max_seconds}",
    )
    _check(
        s.max_seconds is None or s.max_steps is None,
        "schedule.max_seconds",
        "a time budget re-plans the epochs; it cannot be combined with schedule.max_steps",
    )

    # train
    t = cfg.train
    _check(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _check(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {t.grad_accum}")
    _in("train.mixed_precision", t.mixed_precision, ["auto", "no", "bf16", "fp16"])
    t.threads = str(t.threads)
    _check(
        t.threads == "auto" or (t.threads.isdigit() and int(t.threads) >= 1),
        "train.threads",
        f"must be 'auto' or a number of threads >= 1, got {t.threads!r}",
    )
    _check(t.seed >= 0, "train.seed", f"must be >= 0, got {t.seed}")
    _check(t.max_nonfinite >= 1, "train.max_nonfinite", f"must be >= 1, got {t.max_nonfinite}")
    _in("train.loss", t.loss, ["auto", "bce", "ce"])
    _check(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")

    # eval, logging, checkpoints
    _check(
        cfg.eval.every_n_epochs >= -1,
        "eval.every_n_epochs",
        f"must be >= 0, or -1 for never; got {cfg.eval.every_n_epochs}",
    )
    _check(
        cfg.eval.batch_size is None or cfg.eval.batch_size >= 1,
        "eval.batch_size",
        f"must be >= 1 (or null), got {cfg.eval.batch_size}",
    )
    _check(cfg.eval.video_views >= 1, "eval.video_views", f"must be >= 1, got {cfg.eval.video_views}")
    _check(cfg.logging.every_n_steps >= 1, "logging.every_n_steps", f"must be >= 1, got {cfg.logging.every_n_steps}")
    c = cfg.checkpoint
    _check(c.every_n_epochs >= 0, "checkpoint.every_n_epochs", f"must be >= 0 (0 = off), got {c.every_n_epochs}")
    _check(c.every_n_steps >= 0, "checkpoint.every_n_steps", f"must be >= 0 (0 = off), got {c.every_n_steps}")
    _check(c.keep_last >= 0, "checkpoint.keep_last", f"must be >= 0 (0 = keep all), got {c.keep_last}")
    if c.init_from is not None:
        _check(
            Path(c.init_from).expanduser().exists(), "checkpoint.init_from", f"no such file or folder: {c.init_from}"
        )
    # what only the task and the dataset builder know, and the entries' own options (avmae.options)
    return check_entries(cfg)

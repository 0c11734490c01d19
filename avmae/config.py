"""Run configuration: typed dataclass defaults, YAML deltas, ``key=value`` overrides.

    Config (defaults below)  <-  configs/*.yaml (only what an experiment changes)  <-  key=value

``load_config(["configs/demo_audio.yaml"], ["optim.blr=1e-3", "train.batch_size=4"])`` merges the
three layers with OmegaConf's structured configs, so an unknown key or a value of the wrong type is
an error that names the key; ``validate`` then rejects impossible values (a mask ratio of 1, an
unregistered masker, ...) before any work starts, again naming the key. What only the model can
judge (a ``target_length`` its patches do not tile) fails when the model is built, before any
data work for pretraining, naming the config key that set the param (``DATA_KEYS_IN_MODEL``).

A YAML delta is a nested mapping (``optim: {blr: 1e-3}``); flat dotted keys (``optim.blr: 1e-3``)
are accepted too. ``model`` is the plugin-style section: ``name`` picks a registered model and
``params`` is passed to its factory, which validates it. ``data.target_length`` and
``data.num_mel_bins`` are the single source of truth for the input size: the trainer injects them
into the model's params, and setting them in ``model.params`` is an error.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config_error import ConfigError
from .options import check_entries
from .registry import CONFIG_FOLDERS

__all__ = [
    "list_configs",
    "resolve_config_path",
    "CONFIG_DIR",
    "Config",
    "ModelConfig",
    "DataConfig",
    "AugmentConfig",
    "MaskingConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "EvalConfig",
    "LoggingConfig",
    "CheckpointConfig",
    "ConfigError",
    "load_config",
    "merge_overrides",
    "validate",
    "to_dict",
    "to_yaml",
    "save_config",
    "CONFIG_DIR",
    "DATA_KEYS_IN_MODEL",
    "param_source",
    "DEMO_DATA",
    "require_training_data",
]

PathLike = Union[str, os.PathLike]

# the shipped configs: package data (avmae/configs/; a clone's configs/ links to it), so that a
# config resolves by name (``audiomae/pretrain_as2m``) from any folder, installed or not
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# model params that come from other sections (the single source of truth named on the right)
DATA_KEYS_IN_MODEL: Dict[str, str] = {
    "target_length": "data.target_length",
    "num_mel_bins": "data.num_mel_bins",
    "mask_ratio": "masking.mask_ratio",
    "maskers": "masking.maskers",
    "objectives": "objectives",
    "mask_t_prob": "masking.mask_t_prob",
    "mask_f_prob": "masking.mask_f_prob",
    "num_classes": "data.label_csv (the number of classes comes from the label file)",
}


def param_source(message: str) -> Optional[str]:
    """The config key that sets the model param an error message starts with (``"target_length=100
    must be ..."`` -> ``"data.target_length"``), or None (also for a message that names config
    keys itself, as a factory comparing two of them does)."""
    if "model.params" in message or "data." in message:
        return None
    for name, source in DATA_KEYS_IN_MODEL.items():
        if message.startswith((f"{name}=", f"{name} ", f"{name}:")):
            return source.split()[0]
    return None


# values of data.demo: the generated demo clips, each read by the dataset builder of the same name
DEMO_DATA: Tuple[str, ...] = ("audio", "av")


# ------------------------------------------------------------------------------------ schema


@dataclass
class ModelConfig:
    """A registered model: ``name`` (see ``avmae.list_models()``) and factory ``params``."""

    name: str = "audiomae_demo"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    """Training-time augmentation of the dataset (``train=True`` only); see avmae.data.datasets.AUGMENT_DEFAULTS."""

    freqm: int = 0  # max SpecAugment frequency-mask width (bins)
    timem: int = 0  # max SpecAugment time-mask width (frames)
    mixup: float = 0.0  # probability of mixing a clip with another
    mixup_alpha: float = 10.0  # lambda ~ Beta(alpha, alpha)
    gain: bool = False  # random waveform gain (AudioMAE's "roll_mag_aug")
    roll: bool = False  # random circular time shift of the waveform (splits clips shorter than the input: use shift)
    shift: bool = (
        False  # random time shift keeping the clip whole: moved within its padding, or a random crop of a longer clip
    )
    noise: bool = False  # official fbank noise + small roll (AST's Speech Commands recipe; off in AudioMAE's)


@dataclass
class DataConfig:
    """Where the clips are and how they become model inputs.

    A run names its training data: ``train_manifest`` (with ``eval_manifest`` and ``label_csv``),
    or ``demo``, the generated demo clips of the modality set (``audio`` | ``av``: generated once,
    cached, with their own eval split and label file; the ``configs/demo_*.yaml`` set it). A given
    ``train_manifest`` is read instead of the demo clips. Normalisation: ``norm`` names a key of
    ``avmae.data.NORM_STATS``, unless ``mean`` and ``std`` are both given.
    """

    demo: Optional[str] = None  # "audio" | "av": the generated demo clips, read when train_manifest is None
    train_manifest: Optional[str] = None
    eval_manifest: Optional[str] = None
    label_csv: Optional[str] = None
    multilabel: Optional[bool] = None  # None: inferred by the dataset (an item with >1 label)
    sample_rate: int = 16000
    target_length: int = 1024  # fbank frames (10 ms each); a multiple of 16
    num_mel_bins: int = 128  # a multiple of 16
    norm: str = "audioset"
    mean: Optional[float] = None
    std: Optional[float] = None
    fbank_style: str = "audiomae"  # "audiomae" | "beats" (BEATs' fbank: avmae.data.AudioFrontend(style=))
    num_workers: int = 2
    on_error: str = "raise"  # "raise" | "skip" unreadable clips
    max_skip_fraction: float = 0.1
    # relative manifest paths may leave the manifest's folder (via .. or symlinks); absolute paths always work
    allow_outside_root: bool = False
    cache: bool = False  # keep loaded items in memory (small datasets without augmentation)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # balanced sampling (AudioSet-2M fine-tuning): each epoch draws epoch_len items by weight
    balanced: bool = False
    epoch_len: Optional[int] = None  # items per epoch (None: the training set's size)
    replacement: bool = False  # draw with replacement (AudioMAE's AS-2M recipe: without)
    sample_weights: Optional[str] = None  # weight file, one float per item (None: avmae.sampling.balanced_weights)
    # the dataset builder's own options (its ``options`` dataclass; see avmae.options)
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class MaskingConfig:
    """Pretraining: ``mask_ratio`` for every modality (None: each model's own default: 0.8 for
    AudioMAE, 0.75 for CAV-MAE's audio and video, the video modality's 0.75 for frames / 0.9 for
    tubelets); ``per_modality`` overrides it by name, e.g. {video: 0.9}. ``maskers``: which tokens
    are hidden, per modality, a registered masker (``avmae.masking``: random, tube, inverse_block,
    time_freq, or a plugin's) by name or as {name: ..., <param>: ...}, e.g.
    {audio: {name: inverse_block, block: 5}}; unset: each model's own.
    Fine-tuning: AudioMAE's structured time/frequency masking probabilities."""

    mask_ratio: Optional[float] = None
    per_modality: Dict[str, float] = field(default_factory=dict)
    maskers: Dict[str, Any] = field(default_factory=dict)
    mask_t_prob: float = 0.0
    mask_f_prob: float = 0.0


@dataclass
class OptimConfig:
    """AdamW. ``lr = blr * effective_batch / 256`` unless ``lr`` is given; ``layer_decay < 1``
    scales block i's lr by ``layer_decay ** (depth + 1 - layer_id)`` (fine-tuning).

    ``fused``: "auto" = torch's fused AdamW kernels where torch has them for the training device
    (CUDA; CPU from torch 2.4), else the default implementation; "true" requires them (an error
    where torch has none); "false" = the default implementation.
    """

    blr: float = 2e-4
    lr: Optional[float] = None
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: Optional[float] = None
    layer_decay: float = 1.0
    fused: str = "auto"  # "auto" | "true" | "false"


@dataclass
class ScheduleConfig:
    """Per-iteration linear warm-up, then half-cycle cosine to ``min_lr``.

    ``max_steps`` (optimizer steps), when set, is the length of the run and of the schedule
    (a short run still decays fully); otherwise ``epochs`` full passes.
    """

    epochs: int = 33
    warmup_epochs: float = 3.0
    warmup_steps: Optional[int] = None  # when set, the warm-up in optimizer steps (instead of warmup_epochs)
    min_lr: float = 0.0
    max_steps: Optional[int] = None


@dataclass
class TrainConfig:
    """``batch_size`` is per process; effective batch = batch_size * grad_accum * processes.

    ``mixed_precision``: "auto" = bf16 on GPUs that support it (else fp16); on a CPU the faster of
    fp32 ("no") and bf16 autocast by a short matmul probe at the model's shapes, cached per machine
    (``avmae.train.precision``). ``max_nonfinite``: consecutive non-finite steps (skipped) before
    the run stops. ``cpu``: stay on the CPU even when a GPU is present. ``threads``: intra-op CPU
    threads of each process, "auto" (``OMP_NUM_THREADS`` if set, else the cores the process may
    use) or a number (``avmae.train.threads``).
    """

    batch_size: int = 8
    grad_accum: int = 1
    mixed_precision: str = "auto"
    threads: str = "auto"
    seed: int = 0
    max_nonfinite: int = 3
    compile: bool = False
    cpu: bool = False
    find_unused_parameters: bool = False
    loss: str = "auto"  # classification: "auto" (BCE for multi-label data, else CE) | "bce" | "ce"
    label_smoothing: float = 0.0


@dataclass
class EvalConfig:
    """Evaluation on ``data.eval_manifest`` every ``every_n_epochs`` (0 = only at the end, -1 = never).

    ``video_views`` (audio-visual classification, ``modality: av``): views of each eval clip's
    video, each the model's frame count, evaluated one at a time and their class probabilities
    averaged; 10 with a one-frame model (``cav_mae_*_ft``) is CAV-MAE's 10-frame evaluation.
    """

    every_n_epochs: int = 1
    batch_size: Optional[int] = None  # None: train.batch_size
    video_views: int = 1


@dataclass
class LoggingConfig:
    every_n_steps: int = 10
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on the main process


@dataclass
class CheckpointConfig:
    """Checkpoints go to ``output_dir/checkpoints/step_XXXXXXX/``; the last step is always saved.

    ``keep_last``: how many to keep (0 = all). ``init_from``: weights to start from (fine-tuning
    from a pretraining checkpoint: a ``model.safetensors`` file, a checkpoint folder, or an
    official AudioMAE ``.pth``).
    """

    every_n_epochs: int = 1
    every_n_steps: int = 0
    keep_last: int = 3
    init_from: Optional[str] = None


@dataclass
class Config:
    """A run. ``objectives`` (pretraining): what the model optimises, a list of registered
    objectives (``avmae.objectives``: mae_mse, info_nce, or a plugin's) as {name: ..., weight: ...,
    <param>: ...}; empty: the model's own (masked-patch MSE, plus InfoNCE for audio-visual models)."""

    task: str = "pretrain"  # "pretrain" | "finetune" | "linprobe" (or a registered task)
    modality: str = "audio"  # "audio" | "av": the dataset builder's former key (``dataset`` wins)
    dataset: Optional[str] = None  # the registered dataset builder (audio, av, audio_shards, a plugin's)
    task_params: Dict[str, Any] = field(default_factory=dict)  # the task's own options (avmae.options)
    output_dir: Optional[str] = None
    resume: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    objectives: List[Any] = field(default_factory=list)


# ------------------------------------------------------------------------------------ merging


def _first_line(exc: OmegaConfBaseException) -> str:
    msg = getattr(exc, "msg", None) or str(exc)
    return msg.strip().splitlines()[0]


def _leaves(d: Mapping[str, Any], prefix: str = "") -> Iterable[Tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from _leaves(v, key + ".")
        else:
            yield key, v


def _nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """{"a.b": 1, "c": {"d": 2}} -> {"a": {"b": 1}, "c": {"d": 2}} (dotted keys expanded)."""
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, Mapping):
            value = _nest(value)
        node = out
        parts = str(key).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(str(key), f"conflicts with a value given for {p!r}")
        last = parts[-1]
        if isinstance(node.get(last), dict) and isinstance(value, dict):
            node[last] = {**node[last], **value}
        else:
            node[last] = value
    return out


def _merge(base: DictConfig, delta: Mapping[str, Any], source: str) -> DictConfig:
    """Merge ``delta`` into the typed ``base``; errors name the key and the source."""
    try:
        return OmegaConf.merge(base, delta)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        if not key:  # e.g. a tuple of the wrong length: find the leaf that fails
            for leaf, value in _leaves(delta):
                try:
                    OmegaConf.merge(base, _nest({leaf: value}))
                except OmegaConfBaseException:
                    key = leaf
                    break
        raise ConfigError(key or "<config>", f"{_first_line(exc)} (from {source})") from None


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            "--config", f"{path}: no such file, nor a shipped config of that name (list them: avmae configs)"
        ) from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError("--config", f"{path} must hold a mapping of keys, got {type(doc).__name__}")
    if "defaults" in doc:
        raise ConfigError(
            "defaults",
            f"{path}: configs are flat deltas over the dataclass defaults; 'defaults:' lists are not supported",
        )
    return _nest(doc)


def _parse_dotlist(overrides: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key=value (e.g. optim.blr=1e-3)")
        key, _, _ = item.partition("=")
        if not key.strip():
            raise ConfigError(item, "an override needs a key before '='")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(key, f"cannot parse override {item!r}: {_first_line(exc)}") from None
        out = _deep_update(out, parsed)
    return out


def _deep_update(a: Dict[str, Any], b: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_update(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


def resolve_config_path(path: PathLike) -> Path:
    """A config file: ``path`` as given when it exists, else a shipped config by name
    (``audiomae/pretrain_as2m``, with or without ``.yaml``, also as ``configs/audiomae/...``,
    the path in a clone), else a plugin's (``eat/demo``: the folder its ``avmae.configs`` entry
    point names). An unknown name is returned as given (reading it names the file)."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    parts = p.parts[1:] if p.parts[:1] == ("configs",) else p.parts
    if not parts:
        return p
    rel = Path(*parts)
    folders = [CONFIG_DIR / rel]
    if len(parts) > 1 and parts[0] in CONFIG_FOLDERS:
        folders.append(Path(CONFIG_FOLDERS.get(parts[0])).joinpath(*parts[1:]))
    for candidate in folders:
        for file in (candidate, candidate.with_name(candidate.name + ".yaml")):
            if file.is_file():
                return file
    return p


def list_configs() -> List[str]:
    """The configs by the name ``--config`` takes (``audiomae/pretrain_as2m``), sorted: the shipped
    ones, then the plugins' (``eat/demo``)."""
    names = [f.relative_to(CONFIG_DIR).with_suffix("").as_posix() for f in CONFIG_DIR.rglob("*.yaml")]
    for prefix, folder in CONFIG_FOLDERS.items():
        names += [f"{prefix}/{f.relative_to(folder).with_suffix('').as_posix()}" for f in Path(folder).rglob("*.yaml")]
    return sorted(set(names))


def merge_overrides(
    config_files: Sequence[PathLike] = (),
    overrides: Sequence[str] = (),
    base: Optional[Union[Config, Mapping[str, Any]]] = None,
) -> DictConfig:
    """Typed DictConfig: dataclass defaults (or ``base``) <- YAML files in order <- dotlist."""
    cfg = OmegaConf.structured(Config)
    if base is not None:
        cfg = _merge(cfg, to_dict(base) if isinstance(base, Config) else dict(base), "base config")
    for f in config_files:
        path = resolve_config_path(f)
        cfg = _merge(cfg, _read_yaml(path), str(path))
    if overrides:
        cfg = _merge(cfg, _parse_dotlist(overrides), "command line")
    return cfg


def load_config(
    config_files: Sequence[PathLike] = (),
    overrides: Sequence[str] = (),
    *,
    base: Optional[Union[Config, Mapping[str, Any]]] = None,
    check: bool = True,
) -> Config:
    """Merge defaults, YAML deltas and ``key=value`` overrides into a validated ``Config``."""
    cfg = OmegaConf.to_object(merge_overrides(config_files, overrides, base))
    assert isinstance(cfg, Config)
    # YAML 1.1 reads a bare `no` as false, which the str field stores as "False"
    if cfg.train.mixed_precision in ("False", "false"):
        cfg.train.mixed_precision = "no"
    # YAML / overrides read true/false as booleans, which the str field stores as "True"/"False"
    if cfg.optim.fused in ("True", "False"):
        cfg.optim.fused = cfg.optim.fused.lower()
    if check:
        validate(cfg)
    return cfg


def to_dict(cfg: Config) -> Dict[str, Any]:
    """Plain nested dict (tuples become lists), suitable for JSON/YAML."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)


def save_config(cfg: Config, path: PathLike) -> Path:
    """Write ``cfg`` as YAML (atomically); ``load_config([path])`` gives it back."""
    from .files import atomic_write

    return atomic_write(path, to_yaml(cfg))


def diff(a: Config, b: Config) -> List[str]:
    """Dotted keys whose values differ between two configs."""
    la, lb = dict(_leaves(to_dict(a))), dict(_leaves(to_dict(b)))
    return sorted(k for k in set(la) | set(lb) if la.get(k) != lb.get(k))


# ------------------------------------------------------------------------------------ checks


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
    augmenting = a.freqm or a.timem or a.mixup or a.gain or a.roll or a.shift or a.noise
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

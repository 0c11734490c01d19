"""The run configuration's schema: typed dataclasses whose defaults are the bottom layer of every
run config (``avmae.config`` merges YAML deltas and ``key=value`` overrides over them; see its
docstring). Public through ``avmae.config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

__all__ = [
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
    "DATA_KEYS_IN_MODEL",
    "param_source",
    "DEMO_DATA",
]

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
    speed: float = 0.0  # speed perturbation: played f times faster, f uniform in [1 - speed, 1 + speed]


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

    ``max_seconds``, when set, is a time budget for ``fit`` (training and evaluations, from its
    start; a resumed run counts the time its checkpoint had spent): ``epochs`` is the first plan,
    and at every epoch end the trainer re-plans the number of epochs from the speed of the epoch
    just run (and of the last evaluation), so that the run ends within the budget on a machine that
    turns out faster or slower than planned. The cosine follows the new length; the run is at least
    ``epochs_done + 1`` epochs while time is left, and stops at the epoch end where none is.
    ``avmae finetune --budget`` uses it. Not with ``max_steps``.
    """

    epochs: int = 33
    warmup_epochs: float = 3.0
    warmup_steps: Optional[int] = None  # when set, the warm-up in optimizer steps (instead of warmup_epochs)
    min_lr: float = 0.0
    max_steps: Optional[int] = None
    max_seconds: Optional[float] = None


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

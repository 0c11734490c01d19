"""``avmae finetune`` end to end: the optional self-supervised pretraining on the user's clips, the
fine-tuning, the time budget shared between them, and the summary (did it learn?).

    result = run_own_data("clips/train", "clips/test", output_dir="runs/ft", budget_s=600)

Phases (each a ``Trainer`` run with its own progress bar, in sub-folders of ``output_dir``):

1. **pretrain** (without ``init``, unless ``pretrain=False``): an AudioMAE of the classifier's size
   (``audiomae_<size>``) pretrained on the training clips, and on the clips of ``unlabelled`` when
   given, at the fine-tuning input length and statistics, for ``PRETRAIN_SHARE`` of the time left.
2. **finetune**: ``plan_finetune`` (``avmae.train.own_data``) from the pretraining (or ``init``, or
   from scratch), its number of epochs fitted to the time then left.

The budget: the time of one optimizer step is measured on the machine before each phase (a few
steps of the planned model on a random batch, plus the clip decoding time the survey measured), and
the epochs that fit, within [``MIN_EPOCHS``, ``MAX_EPOCHS``], are the first plan (its warm-up and
evaluation interval). The phase's time is then its ``schedule.max_seconds``: at every epoch end the
trainer re-plans the epochs from the epoch it just ran, so a machine faster or busier than the probe
saw still ends on time with a full cosine (the probe alone missed by up to 3x on a shared machine).

After fine-tuning the training clips are classified once without augmentation: the summary gives
training and held-out accuracy, the best held-out evaluation and its epoch, and ``learned`` is False
(with advice) when the training accuracy stays near chance.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from ..config import Config
from .own_data import FinetunePlan, PathLike, plan_finetune

_logger = logging.getLogger(__name__)

__all__ = [
    "OwnDataResult",
    "PretrainPlan",
    "plan_pretrain",
    "run_own_data",
    "step_seconds",
    "DEFAULT_BUDGET_S",
    "PRETRAIN_SHARE",
    "MIN_EPOCHS",
    "MAX_EPOCHS",
]

DEFAULT_BUDGET_S = 600.0  # the whole command, ~400 clips of ~1 s, on a 2-core CPU
PRETRAIN_SHARE = 0.4  # of the time left after planning, when the pretraining phase runs
MIN_EPOCHS = 5
MAX_EPOCHS = 300
# what a training step costs beyond the timed model step and clip decoding (augmentation, collation,
# logging, evaluations): on the bench a run took 0.56 s a step where 0.44 s was estimated
STEP_OVERHEAD = 1.3
RESERVE = 0.08  # of the budget kept for evaluations, the training-accuracy pass and start-up
# the model did not learn: training accuracy below NOT_LEARNED x chance, or training loss above
# NOT_LEARNED_LOSS x ln C (both on the training clips without augmentation)
NOT_LEARNED = 1.5
NOT_LEARNED_LOSS = 0.9


@dataclass
class OwnDataResult:
    """What ``run_own_data`` did: the plans and results of its phases, and the summary."""

    plan: FinetunePlan
    finetune: Any  # TrainResult
    pretrain: Any = None  # TrainResult of the pretraining phase, when it ran
    pretrain_config: Optional[Config] = None
    train_acc: Optional[float] = None
    train_loss: Optional[float] = None  # cross-entropy on the training clips, unaugmented
    eval_acc: Optional[float] = None
    best_eval_acc: Optional[float] = None
    best_epoch: Optional[int] = None
    learned: bool = True
    advice: List[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class PretrainPlan:
    """The pretraining phase's config, what it decided (``notes``) and its steps per epoch."""

    config: Config
    notes: List[str]
    steps_per_epoch: int
    num_clips: int


def plan_pretrain(
    plan: FinetunePlan, *, output_dir: PathLike, unlabelled: Optional[PathLike] = None, seed: int = 0
) -> PretrainPlan:
    """The AudioMAE pretraining of ``plan``'s classifier size on its training clips (and those of
    ``unlabelled``: a folder searched recursively, or a manifest), at ``plan``'s input length and
    statistics: no augmentation (each clip decoded once, ``data.cache``), AudioMAE's 80 % masking."""
    from ..config import ConfigError, load_config
    from ..data import read_manifest, write_manifest
    from ..extract import MEDIA_EXTENSIONS, find_media
    from .own_data import BATCH_SIZE, PRETRAIN_LR

    cfg = plan.config
    name = cfg.model.name[: -len("_cls")] if cfg.model.name.endswith("_cls") else cfg.model.name
    import avmae

    if name not in avmae.list_models():
        raise ConfigError("--model", f"{cfg.model.name} has no pretraining counterpart {name}; use --no-pretrain")
    items = [{"wav": it["wav"]} for it in read_manifest(cfg.data.train_manifest)]
    extra = 0
    if unlabelled is not None:
        src = Path(unlabelled).expanduser()
        if src.is_dir():
            found, _ = find_media(src, MEDIA_EXTENSIONS)
            more = [{"wav": str(p.resolve())} for p in found]
        elif src.is_file():
            more = [{"wav": it["wav"]} for it in read_manifest(src)]
        else:
            raise ConfigError("--unlabelled", f"{src}: no such folder or manifest")
        if not more:
            raise ConfigError("--unlabelled", f"{src}: no audio files")
        items += more
        extra = len(more)
    out = Path(output_dir)
    manifest = write_manifest(out / "data" / "pretrain.json", items)
    batch = int(min(BATCH_SIZE, max(4, len(items) // 10)))
    steps_per_epoch = max(1, len(items) // batch)
    classifier_only = ("drop_path", "num_classes", "pos_base_length", "global_pool", "mask_t_prob", "mask_f_prob")
    params = {k: v for k, v in cfg.model.params.items() if k not in classifier_only}
    params.update(decoder="global", norm_pix_loss=False)  # any token grid (swin needs windows that tile it)
    overrides = [
        "task=pretrain",
        "modality=audio",
        f"model.name={name}",
        f"data.train_manifest={manifest}",
        f"data.target_length={cfg.data.target_length}",
        f"data.num_mel_bins={cfg.data.num_mel_bins}",
        f"data.mean={cfg.data.mean!r}",
        f"data.std={cfg.data.std!r}",
        "data.cache=true",
        f"data.num_workers={cfg.data.num_workers}",
        "masking.mask_ratio=0.8",
        f"optim.blr={PRETRAIN_LR * 256 / batch!r}",
        "optim.weight_decay=0.05",
        "optim.betas=[0.9,0.95]",
        "schedule.epochs=10",
        "schedule.warmup_epochs=1",
        f"train.batch_size={batch}",
        f"train.seed={seed}",
        f"train.threads={cfg.train.threads}",
        f"train.mixed_precision={cfg.train.mixed_precision}",
        "eval.every_n_epochs=-1",
        f"logging.every_n_steps={max(1, min(50, steps_per_epoch))}",
        f"logging.progress={str(cfg.logging.progress).lower()}",
        f"logging.tensorboard={str(cfg.logging.tensorboard).lower()}",
        "checkpoint.every_n_epochs=0",
        "checkpoint.keep_last=1",
        f"output_dir={out}",
    ] + [f"model.params.{k}={json.dumps(v)}" for k, v in params.items()]
    pre_cfg = load_config([], overrides)
    notes = [
        f"data: {len(items)} clips ({len(items) - extra} training"
        + (f", {extra} unlabelled" if extra else "")
        + f"), {cfg.data.target_length} frames, the fine-tuning statistics; no augmentation",
        f"model: {name} (the classifier's encoder size), 80 % of the patches masked, reconstructed",
        f"optimisation: AdamW, lr {PRETRAIN_LR:.3g} at batch {batch}, betas (0.9, 0.95), 1 epoch of warm-up",
    ]
    return PretrainPlan(pre_cfg, notes, steps_per_epoch, len(items))


def step_seconds(cfg: Config, *, clip_seconds: float = 0.0, repeats: int = 3) -> float:
    """Seconds of one optimizer step of ``cfg``'s model at its batch and input shape on the CPU: a
    warm-up step, then the fastest of ``repeats`` timed forward + backward + AdamW steps on random
    inputs (the fastest: on a shared machine one slow step made a bench run plan a quarter of the
    epochs of its neighbours), plus ``clip_seconds`` (decoding and frontend of one clip) per item of
    the batch, times ``STEP_OVERHEAD``."""
    from .task import base_model_params, build_model

    params = dict(base_model_params(cfg))
    if cfg.task == "finetune":
        params["num_classes"] = 2
    model = build_model(cfg.model.name, params)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    x = {"audio": torch.randn(cfg.train.batch_size, 1, cfg.data.target_length, cfg.data.num_mel_bins)}

    def step() -> None:
        out = model(x)
        loss = out.float().pow(2).mean() if torch.is_tensor(out) else out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return (min(times) + cfg.train.batch_size * clip_seconds) * STEP_OVERHEAD


def _epochs_for(seconds: float, cfg: Config, steps_per_epoch: int, clip_seconds: float) -> (int, float):
    """(epochs that fit in ``seconds``, measured seconds per step) for ``cfg``."""
    per_step = step_seconds(cfg, clip_seconds=clip_seconds)
    fit = int(seconds / max(per_step * steps_per_epoch, 1e-9))
    return max(MIN_EPOCHS, min(MAX_EPOCHS, fit)), per_step


def _best_eval(output_dir: Path, steps_per_epoch: int, metric: str) -> (Optional[float], Optional[int]):
    """(best held-out ``metric``, its epoch) from ``output_dir/metrics.jsonl``."""
    best, epoch = None, None
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return None, None
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        value = rec.get(f"eval/{metric}")
        if value is not None and (best is None or value > best):
            best, epoch = value, int(round(rec["step"] / max(1, steps_per_epoch)))
    return best, epoch


def training_accuracy(cfg: Config, checkpoint: PathLike) -> Optional[Tuple[float, float]]:
    """(top-1 accuracy, cross-entropy) of the classifier in ``checkpoint`` on ``cfg``'s training
    clips, read as the evaluation clips are (no augmentation); None for multi-label data."""
    import dataclasses

    from ..hub import load_pretrained
    from .datasets import build_audio_dataset
    from .loaders import build_loader
    from .task import model_inputs

    cfg_eval = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_manifest=cfg.data.train_manifest))
    dataset = build_audio_dataset(cfg_eval, "eval")
    if dataset is None or getattr(dataset, "multilabel", False):
        return None
    model, _ = load_pretrained(checkpoint, target_length=cfg.data.target_length)
    model.eval()
    loader = build_loader(dataset, cfg.train.batch_size, num_workers=0, seed=cfg.train.seed, pin_memory=False)
    right = total = 0
    loss = 0.0
    with torch.no_grad():
        for batch in loader:
            logits = model(model_inputs(model, batch)).float()
            target = batch["label"]
            target = target.argmax(-1) if target.dim() > 1 else target
            right += int((logits.argmax(-1) == target).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            total += int(target.numel())
    return (right / total, loss / total) if total else None


def _advice(plan: FinetunePlan, train_acc: Optional[float], pretrained: bool) -> List[str]:
    """What to try when the training accuracy stayed near chance."""
    tips = [
        "a longer run: --budget (seconds) or schedule.epochs=N",
        "a higher or lower learning rate: optim.lr=... (the plan's is printed above)",
    ]
    if not pretrained:
        tips.append("a pretrained encoder: --init (a run folder, the released AudioMAE pretrained.pth)")
    tips.append("check the labels: each class's clips in its own subfolder, named after the class")
    return tips


def run_own_data(
    train: PathLike,
    eval_data: Optional[PathLike] = None,
    *,
    output_dir: PathLike,
    init: Optional[PathLike] = None,
    label_csv: Optional[PathLike] = None,
    model: Optional[str] = None,
    overrides: Sequence[str] = (),
    unlabelled: Optional[PathLike] = None,
    pretrain: Optional[bool] = None,
    budget_s: float = DEFAULT_BUDGET_S,
    max_files: int = 1000,
    seed: int = 0,
    on_plan=None,
) -> OwnDataResult:
    """Plan, (pretrain,) fine-tune and summarise (see the module doc). ``pretrain``: None = the
    default (``own_data.PRETRAIN_DEFAULT`` without ``init``; never with it). ``on_plan(name, notes)``
    is called with each phase's plan before it runs (the tool prints it)."""
    from .own_data import PRETRAIN_DEFAULT
    from .trainer import Trainer

    t_start = time.time()
    out = Path(output_dir)
    if pretrain is None:
        pretrain = PRETRAIN_DEFAULT and init is None
    if pretrain and init is not None:
        raise ValueError("pretrain=True with init: the pretraining phase starts from scratch; give one of them")
    deadline = t_start + budget_s * (1 - RESERVE)
    plan = plan_finetune(
        train,
        eval_data,
        init=init,
        output_dir=out / "finetune" if pretrain else out,
        label_csv=label_csv,
        model=model,
        overrides=overrides,
        max_files=max_files,
        seed=seed,
    )
    pre_result, pre_cfg = None, None
    if pretrain:
        pre = plan_pretrain(plan, output_dir=out / "pretrain", unlabelled=unlabelled, seed=seed)
        left = (deadline - time.time()) * PRETRAIN_SHARE
        # the clips are decoded once (cached): the first epoch pays for the decoding
        epochs, per_step = _epochs_for(left - pre.num_clips * plan.clip_seconds, pre.config, pre.steps_per_epoch, 0.0)
        pre_cfg = _with_epochs(pre.config, epochs, seconds=left)
        pre.notes.append(
            f"length: {epochs} epochs of {pre.steps_per_epoch} steps ({per_step:.2f} s a step measured now;"
            f" {left:.0f} s of the budget)"
        )
        if on_plan:
            on_plan("pretrain", pre.notes)
        pre_result = Trainer(pre_cfg).fit()
        plan = plan_finetune(
            train,
            eval_data,
            init=pre_result.output_dir,
            output_dir=out / "finetune",
            label_csv=label_csv,
            overrides=overrides,
            max_files=max_files,
            seed=seed,
            self_pretrained=True,
        )
    left = deadline - time.time()
    if not _fixed_epochs(overrides):
        epochs, per_step = _epochs_for(left, plan.config, plan.steps_per_epoch, plan.clip_seconds)
        timed = not _given(overrides, "schedule.max_seconds")
        plan.config = _with_epochs(
            plan.config,
            epochs,
            eval_every=not _given(overrides, "eval.every_n_epochs"),
            seconds=left if timed else None,
        )
        plan.notes = [n for n in plan.notes if not n.startswith("length:")] + [
            f"length: {epochs} epochs of {plan.steps_per_epoch} steps ({per_step:.2f} s a step measured now;"
            f" {left:.0f} s of the {budget_s:.0f} s budget left)"
            + ("; re-planned at every epoch end from the speed seen (schedule.max_seconds)" if timed else "")
        ]
    if on_plan:
        on_plan("finetune", plan.notes)
    trainer = Trainer(plan.config)
    result = trainer.fit()
    summary = OwnDataResult(plan=plan, finetune=result, pretrain=pre_result, pretrain_config=pre_cfg)
    if not trainer.accelerator.is_main_process or result.interrupted:
        return summary
    ev = result.eval
    summary.eval_acc = ev.get("acc")
    metric = "mAP" if "mAP" in ev else "acc"
    summary.best_eval_acc, summary.best_epoch = _best_eval(result.output_dir, plan.steps_per_epoch, metric)
    fit = training_accuracy(plan.config, result.output_dir) if result.last_checkpoint is not None else None
    if fit is not None:
        summary.train_acc, summary.train_loss = fit
    chance = 1.0 / plan.num_classes
    # an untrained head guesses near the prior (loss ln C) even where its random features happen to sort a
    # few clips right: either sign says the model did not learn
    if fit is not None and (
        summary.train_acc < NOT_LEARNED * chance or summary.train_loss > NOT_LEARNED_LOSS * math.log(plan.num_classes)
    ):
        summary.learned = False
        summary.advice = _advice(plan, summary.train_acc, init is not None or pretrain)
        _logger.warning(
            "the classifier did not learn: training accuracy %.1f %% (chance %.1f %%)",
            100 * summary.train_acc,
            100 * chance,
        )
    summary.seconds = time.time() - t_start
    return summary


def _given(overrides: Sequence[str], *keys: str) -> bool:
    return any(o.split("=", 1)[0].strip() in keys for o in overrides)


def _fixed_epochs(overrides: Sequence[str]) -> bool:
    return _given(overrides, "schedule.epochs", "schedule.max_steps")


def _with_epochs(cfg: Config, epochs: int, *, eval_every: bool = False, seconds: Optional[float] = None) -> Config:
    """``cfg`` with ``epochs`` epochs (and, with ``eval_every``, about five evaluations; with
    ``seconds``, that time budget: the trainer re-plans the epochs from the speed it sees)."""
    import dataclasses

    schedule = dataclasses.replace(cfg.schedule, epochs=int(epochs))
    if seconds is not None:
        schedule = dataclasses.replace(schedule, max_seconds=max(1.0, float(seconds)))
    cfg = dataclasses.replace(cfg, schedule=schedule)
    if eval_every:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, every_n_epochs=max(1, int(epochs) // 5)))
    return cfg

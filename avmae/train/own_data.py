"""Fine-tuning on your own labelled clips without writing a config (``avmae finetune``).

``plan_finetune(train, eval_data, init=...)`` turns a labelled folder or manifest into a run config and
says what it decided and why (``FinetunePlan.notes``); the trainer then runs it as any config.

Labels. A folder holds one subfolder per class: the subfolder's name is the label of every audio
or video file under it (searched recursively); files directly in the folder are refused. A
manifest (AudioMAE JSON / JSON Lines) brings its own ``labels``, mapped through ``label_csv``, or,
without one, one class per distinct label id (sorted). The evaluation split must use labels of the
training split. Without an evaluation split, a seeded, stratified fifth of the training clips is
held out.

The decisions, each logged (``key=value`` overrides win over all of them):

- **input length** ``data.target_length``: the 95th percentile of the training clips' lengths,
  rounded up to a multiple of 16 frames, within [32, 1024] (and at most the initial model's own
  length): shorter clips are padded, the few longer ones cropped. An AudioMAE encoder pretrained
  on 10 s inputs takes it with the positions it saw at the start of its input
  (``avmae.modalities.audio``).
- **normalisation statistics**, one rule: with ``init``, the statistics the initial model was
  trained with (its run config's ``data.mean``/``data.std`` or ``data.norm``; AudioSet's for
  foreign files such as the released AudioMAE, which was pretrained with them), because the
  pretrained weights expect inputs normalised that way; from scratch, the mean and std of the
  training clips at the chosen length (padding included, as the frontend sees them).
- **pooling**: an AudioMAE classifier, from scratch or pretrained, keeps the frequency bands apart
  (``global_pool="time_avg"``, ``avmae.models.classifier``; the head is new either way): AudioMAE's
  mean over every token hides where in frequency a pattern sat, and a from-scratch ViT on a few
  hundred clips then stays at ln C for hundreds of steps (the failure this plan was rebuilt for).
  Measured on generated spoken digits with held-out voices (10 classes, 400 clips, cached inputs,
  200 steps): training accuracy 15 % with the mean over all tokens, 17 % with the cls token, 30 %
  with the inputs scaled up 4x, 79 % with the bands kept apart. Other classifiers (AST, CAV-MAE,
  BEATs, EAT) keep their own pooling.
- **augmentation**, one recipe from scratch and from ``init``: ``data.augment.shift`` (the clip moves
  within its padding, or a random crop of a longer clip: a word is never split) instead of the
  circular ``roll``, random gain, and speed perturbation of +-``SPEED`` (pitch and tempo: voices and
  instruments not in the training clips); no mixup, SpecAugment or token masking. From scratch,
  mixup 0.5 with SpecAugment reached 60 % where none reached 69 % at the same step (400) on the
  digits, its training loss still 1.48 against 0.14; from the demo pretraining AudioMAE's whole
  fine-tuning recipe (mixup, SpecAugment, token masking 0.2 / 0.2, mean pooling, lr 2.5e-4) reached
  30.8 % where this one reached 81.7 % (300 s budget).
- **model**: the classifier of the initial checkpoint's architecture (``audiomae_<size>_cls`` for a
  pretraining model, the classifier itself for a fine-tuned one), else ``audiomae_demo_cls`` (a
  small ViT that trains from scratch on a CPU in minutes).
- **learning rate**: ``FROM_SCRATCH_LR`` (1e-3) from scratch; ``INIT_LR`` (2.5e-4) with layer-wise
  decay ``INIT_LAYER_DECAY`` (0.75) from a pretrained encoder (``init``), 1e-3 with that decay after
  the pretraining phase on the same clips; for the 192-wide demo encoder at the planned batch,
  scaled by 192 / width (6.25e-5 for a ViT-B: AudioMAE's own fine-tuning lr at that batch).
  Measured from scratch with the bands kept apart: 3e-3 and 3e-4 learnt no better than 1e-3 in 200
  steps on the digits or on noisy two-synthesiser commands; from the demo pretraining (digits, 300
  s): 2.5e-4 82.5 %, 1e-3 81.7 %, layer decay 1.0 81.7 %, two frozen epochs first
  (``task_params.freeze_epochs``) 80.0 %, the clips' statistics 79.2 %: equal within a seed's
  spread, so the lower lr (which keeps more of a large pretrained encoder), with none frozen.
  Warm-up of 2 epochs, cosine to 1e-6.
- **length**: about ``STEP_BUDGET`` optimizer steps of batch 16 (smaller for a set of fewer than 160
  clips, so that an epoch still makes about 10 steps), within [10, 200] epochs; ``avmae finetune``
  replaces it by the epochs that fit its ``--budget`` (``own_data_run``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..config import Config, ConfigError, load_config

_logger = logging.getLogger(__name__)

__all__ = [
    "FinetunePlan",
    "plan_finetune",
    "labelled_items",
    "classifier_for",
    "init_statistics",
    "FROM_SCRATCH_LR",
    "PRETRAINED_LR",
    "INIT_LR",
    "INIT_LAYER_DECAY",
    "SPEED",
    "STEP_BUDGET",
]

PathLike = Union[str, os.PathLike]

# the lr at the planned batch for a 192-wide encoder (audiomae_demo), scaled by 192 / width (Adam's steps
# suit narrower models larger); given as optim.blr = lr x 256 / batch, so more processes scale it as MAE's
# rule does. Measured on generated short words (see the README): from scratch the demo model at 4e-3 stays
# at chance level. Pretrained, 2.5e-4 x 192 / 768 = 6.25e-5 for ViT-B at batch 16 is AudioMAE's ESC-50 and
# Speech Commands lr (2.5e-4 at 64, 5e-4 at 128) brought to batch 16.
FROM_SCRATCH_LR = 1e-3
# from a pretrained encoder (--init): the same recipe as from scratch, lr 2.5e-4 with layer-wise decay 0.75.
# AudioMAE's own fine-tuning recipe (mixup, SpecAugment, token masking, mean pooling) reached 30.8 % on the
# digits where this one reached 82.5 % (demo pretraining, 300 s budget, seed 0, docs/own-data.md); lr 1e-3,
# layer decay 1.0, two frozen epochs first and the clips' statistics gave 81.7 / 81.7 / 80.0 / 79.2 %: the
# lower lr, AudioMAE's own at this width (6.25e-5 for ViT-B), keeps more of a large pretrained encoder.
# After the pretraining phase on the same clips (a weaker start), FROM_SCRATCH_LR with the layer decay.
INIT_LR = 2.5e-4
INIT_LAYER_DECAY = 0.75
PRETRAINED_LR = INIT_LR  # the former name
# speed perturbation of the training clips (data.augment.speed), from scratch and pretrained
SPEED = 0.1
REFERENCE_WIDTH = 192
STEP_BUDGET = 900
# the pretraining phase of `avmae finetune` (own_data_run): lr at batch 16 (the demo pretraining's 9.4e-4)
PRETRAIN_LR = 9.4e-4
PRETRAIN_DEFAULT = False
BATCH_SIZE = 16
HOLD_OUT = 0.2
DEFAULT_MODEL = "audiomae_demo_cls"
# params of a pretraining model that its classifier does not take
_PRETRAIN_ONLY = ("decoder", "decoder_params", "norm_pix_loss", "mask_ratio", "contrastive_weight", "loss_weights")


@dataclass
class FinetunePlan:
    """The run config and what was decided: ``notes`` (one line each), ``chance`` (accuracy of
    always guessing the commonest held-out class, or 1/C), ``held_out`` (clips set aside from the
    training split when no evaluation split was given)."""

    config: Config
    notes: List[str] = field(default_factory=list)
    num_classes: int = 0
    num_train: int = 0
    num_eval: int = 0
    held_out: bool = False
    chance: float = 0.0
    steps_per_epoch: int = 0
    clip_seconds: float = 0.0  # decoding and fbank of one training clip, measured by the survey


# ------------------------------------------------------------------------------ labelled data


def labelled_items(
    source: PathLike, label_csv: Optional[PathLike] = None
) -> Tuple[List[Dict[str, Any]], Optional[List[Tuple[str, str]]]]:
    """Items ``{"wav": absolute path, "labels": "id1,id2"}`` of a class-per-subfolder folder or a
    manifest, and the classes ``[(id, display name)]`` it defines (a folder: its subfolders; a
    manifest: those of ``label_csv``, else None: to be derived from the labels)."""
    from ..data import read_label_csv, read_manifest
    from ..extract import MEDIA_EXTENSIONS, find_media

    src = Path(source).expanduser()
    if src.is_dir():
        classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose = [p.name for p in src.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS]
        if loose:
            raise ConfigError(
                "data",
                f"{src}: {len(loose)} audio file(s) directly in the folder (e.g. {loose[0]}); put each class's files in"
                " a subfolder named after the class",
            )
        items: List[Dict[str, Any]] = []
        for name in classes:
            found, _ = find_media(src / name, MEDIA_EXTENSIONS)
            items += [{"wav": str(p.resolve()), "labels": name} for p in found]
        if not items:
            raise ConfigError(
                "data", f"{src}: no audio files in class subfolders (one subfolder per class, named after it)"
            )
        used = sorted({it["labels"] for it in items})
        return items, [(c, c) for c in used]
    if not src.is_file():
        raise ConfigError("data", f"{src}: no such folder or manifest")
    items = [{"wav": it["wav"], "labels": it.get("labels", "")} for it in read_manifest(src)]
    if label_csv is not None:
        ids, names = read_label_csv(label_csv)
        return items, list(zip(ids, names))
    return items, None


def _labels_of(item: Mapping) -> List[str]:
    return [x.strip() for x in str(item.get("labels", "")).split(",") if x.strip()]


def _stratified_split(
    items: List[Dict[str, Any]], fraction: float, seed: int
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(train, held out): ``fraction`` of each class (by first label), at least one clip of every
    class with two or more, chosen with ``seed``."""
    by_class: Dict[str, List[int]] = {}
    for i, it in enumerate(items):
        by_class.setdefault((_labels_of(it) or [""])[0], []).append(i)
    rng = random.Random(seed)
    held = set()
    for members in by_class.values():
        k = int(round(fraction * len(members)))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        held.update(rng.sample(members, k) if k else [])
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


# ------------------------------------------------------------------------------ the initial model


def classifier_for(init: PathLike) -> Tuple[str, Dict[str, Any], Any]:
    """(classifier name, its params, the checkpoint's ``PretrainedReport``) for fine-tuning from
    ``init``: the checkpoint's own architecture with a classification head."""
    import avmae

    from ..hub import describe_checkpoint
    from ..weights_fit import check_described

    rep = describe_checkpoint(init)
    # the file's description is checked against its weights before the plan builds on it
    check_described(rep.path, rep.model_name, rep.model_params, where=f"its {rep.source}")
    name, params = rep.model_name, dict(rep.model_params)
    if name.endswith("_cls") or name.startswith("ast_"):
        cls_name = name
    elif f"{name}_cls" in avmae.list_models():
        cls_name = f"{name}_cls"
    else:
        raise ConfigError(
            "--init", f"{init} holds a {name}, which has no classifier counterpart ({name}_cls) to fine-tune"
        )
    for key in _PRETRAIN_ONLY + ("num_classes", "target_length", "num_mel_bins", "mask_t_prob", "mask_f_prob"):
        params.pop(key, None)
    if cls_name.startswith("audiomae_") and "pos_base_length" not in params and rep.model_params.get("target_length"):
        params["pos_base_length"] = int(rep.model_params["target_length"])  # the pretrained positions at any length
    return cls_name, params, rep


def init_statistics(rep) -> Tuple[float, float, str]:
    """(mean, std, where from) of the data the checkpoint described by ``rep`` was trained on."""
    from ..data import NORM_STATS
    from .task import data_statistics

    data = (rep.config or {}).get("data")
    found = data_statistics(data) if isinstance(data, Mapping) else None
    if found is not None:
        return found[0], found[1], f"{found[2]} of its run config"
    mean, std = NORM_STATS["audioset"]
    return mean, std, "AudioSet's: the file carries no run config (the released AudioMAE was pretrained with them)"


def _encoder_width(name: str, params: Mapping[str, Any], num_mel_bins: int) -> int:
    """The token width of model ``name`` (built on the meta device: no memory, no init)."""
    import torch

    import avmae

    try:
        with torch.device("meta"):
            model = avmae.create_model(name, **{**params, "num_mel_bins": num_mel_bins, "num_classes": 2})
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError("model.params", f"cannot build {name}({dict(params)}): {exc}") from exc
    width = getattr(model, "embed_dim", None)
    return int(width) if width else REFERENCE_WIDTH


# ------------------------------------------------------------------------------ the plan


def plan_finetune(
    train: PathLike,
    eval_data: Optional[PathLike] = None,
    *,
    init: Optional[PathLike] = None,
    output_dir: PathLike,
    label_csv: Optional[PathLike] = None,
    model: Optional[str] = None,
    overrides: Sequence[str] = (),
    max_files: int = 1000,
    seed: int = 0,
    self_pretrained: bool = False,
) -> FinetunePlan:
    """Build the fine-tuning run for ``train`` (and ``eval_data``) -> ``FinetunePlan`` (see the module doc).
    ``self_pretrained``: ``init`` was pretrained on these clips (``own_data_run``'s pretraining phase).

    Writes ``output_dir/data/{train,eval}.json`` and ``labels.csv`` (absolute paths), decodes a
    seeded sample of ``max_files`` training clips once for their lengths and statistics."""
    from ..data import write_label_csv, write_manifest
    from ..data.stats import choose_target_length, survey_clips

    out = Path(output_dir)
    notes: List[str] = []
    for item in overrides:  # a model named by an override is planned for (its width sets the lr)
        key, _, value = item.partition("=")
        if key.strip() == "model.name" and model is None:
            model = value.strip()
    train_items, classes = labelled_items(train, label_csv)
    held_out = eval_data is None
    if held_out:
        train_items, eval_items = _stratified_split(train_items, HOLD_OUT, seed)
        notes.append(
            f"evaluation: no --eval given, so {len(eval_items)} training clips (a seeded, stratified {HOLD_OUT:.0%})"
            " are held out"
        )
    else:
        eval_items, _ = labelled_items(eval_data, label_csv)  # its labels must be training classes (below)
    if classes is None:
        classes = [(c, c) for c in sorted({lab for it in train_items for lab in _labels_of(it)})]
    known = {c for c, _ in classes}
    for where, items in (("training", train_items), ("evaluation", eval_items)):
        for it in items:
            bad = [lab for lab in _labels_of(it) if lab not in known]
            if bad:
                raise ConfigError(
                    "--eval" if where == "evaluation" else "data",
                    f"{it['wav']}: label {bad[0]!r} of the {where} split is not a training class ({len(known)} known)",
                )
    if len(classes) < 2:
        raise ConfigError("data", f"{train}: {len(classes)} class(es); a classifier needs at least two")
    if not eval_items:
        raise ConfigError("--eval", "the evaluation split is empty")
    data_dir = out / "data"
    train_manifest = write_manifest(data_dir / "train.json", train_items)
    eval_manifest = write_manifest(data_dir / "eval.json", eval_items)
    labels = write_label_csv(data_dir / "labels.csv", classes)
    multilabel = any(len(_labels_of(it)) > 1 for it in train_items + eval_items)
    notes.append(
        f"data: {len(train_items)} training and {len(eval_items)} evaluation clips of {len(classes)} classes"
        f" ({'multi-label: BCE, mAP' if multilabel else 'single-label: cross-entropy, accuracy'}); manifests in"
        f" {data_dir}"
    )

    # the model and what it expects
    params: Dict[str, Any] = {"drop_path": 0.1}
    init_rep = None
    max_length, num_mel_bins = 1024, 128
    if init is not None:
        name, init_params, init_rep = classifier_for(init)
        params.update(init_params)
        max_length = int(init_rep.model_params.get("target_length") or 1024)
        num_mel_bins = int(init_rep.model_params.get("num_mel_bins") or 128)
        notes.append(f"model: {name}, initialised from {init} ({init_rep.model_name}, {init_rep.format})")
        if model is not None and model != name:
            raise ConfigError(
                "--model", f"--init {init} holds a {init_rep.model_name}: its classifier is {name}, not {model}"
            )
    else:
        name = model or DEFAULT_MODEL
        notes.append(f"model: {name} from scratch" + ("" if model else " (the default; --model picks another)"))
    # pooling: an AudioMAE encoder, from scratch or pretrained, gets its frequency bands kept apart (the head
    # is new in any case); another classifier (AST, CAV-MAE, BEATs, EAT) keeps its own pooling
    if name.startswith("audiomae_"):
        pool = params["global_pool"] = "time_avg"
    else:
        pool = params.get("global_pool", "avg")

    # the input length, from the clips
    t_survey = time.perf_counter()
    survey = survey_clips([it["wav"] for it in train_items], max_files=max_files, seed=seed, num_mel_bins=num_mel_bins)
    clip_seconds = (time.perf_counter() - t_survey) / max(1, len(survey.frames) + len(survey.skipped))
    if not survey.frames:
        raise ConfigError(
            "data", f"none of the {len(train_items)} training clips could be read; first: {survey.skipped[:1]}"
        )
    target_length = choose_target_length(survey.frames, maximum=max_length)
    frames = sorted(survey.frames)
    notes.append(
        f"input length: {target_length} frames ({target_length / 100:.2f} s): the 95th percentile of {len(frames)}"
        f" training clips (shortest {frames[0] / 100:.2f} s, median {frames[len(frames) // 2] / 100:.2f} s, longest"
        f" {frames[-1] / 100:.2f} s), rounded up to 16 frames, at most {max_length}"
    )

    # the normalisation statistics: one rule
    if init_rep is not None:
        mean, std, where = init_statistics(init_rep)
        notes.append(f"statistics: mean {mean:.6g}, std {std:.6g}, those the initial model was trained with ({where})")
    else:
        st = survey.stats(target_length)
        mean, std = float(st["mean"]), float(st["std"])
        notes.append(
            f"statistics: mean {mean:.6g}, std {std:.6g} of the training clips at {target_length} frames (padding"
            " included)"
        )

    # length of the run, learning rate
    batch = int(min(BATCH_SIZE, max(4, len(train_items) // 10)))  # a small set still makes ~10 steps an epoch
    steps_per_epoch = max(1, len(train_items) // batch)
    epochs = int(min(max(math.ceil(STEP_BUDGET / steps_per_epoch), 10), 200))
    pretrained = init is not None
    # one recipe, from scratch or pretrained (measured on the bench: docs/own-data.md)
    width = _encoder_width(name, params, num_mel_bins)
    lr = (INIT_LR if pretrained and not self_pretrained else FROM_SCRATCH_LR) * REFERENCE_WIDTH / width
    blr = lr * 256 / batch
    layer_decay = INIT_LAYER_DECAY if pretrained else 1.0
    notes.append(
        f"optimisation: AdamW, lr {lr:.3g} at batch {batch} (optim.blr {blr:.4g}; scaled by {REFERENCE_WIDTH} /"
        f" width {width}; "
        + (f"a pretrained encoder: layer-wise decay {layer_decay}" if pretrained else "from scratch")
        + "), 2 epochs of warm-up"
        + (
            "; the encoder trains from the first step (freezing it for the first epochs gave no gain on the bench)"
            if pretrained
            else ""
        )
    )
    notes.append(f"length: {epochs} epochs of {steps_per_epoch} steps (about {STEP_BUDGET} steps)")
    notes.append(
        f"augmentation: time shift within the padding (never splits a clip), gain, speed perturbation +-{SPEED:g};"
        " no mixup, SpecAugment or token masking (within a CPU budget they slowed learning more than they"
        " regularised, from scratch and from a pretrained encoder alike)"
    )
    if pool == "time_avg":
        notes.append(
            "pooling: time_avg (the mean over time of each frequency band: where in frequency a sound sits is kept)"
        )
    else:
        notes.append(f"pooling: {pool} ({name}'s own)")

    base = [
        "task=finetune",
        "modality=audio",
        f"model.name={name}",
        f"data.train_manifest={train_manifest}",
        f"data.eval_manifest={eval_manifest}",
        f"data.label_csv={labels}",
        f"data.target_length={target_length}",
        f"data.num_mel_bins={num_mel_bins}",
        f"data.mean={mean!r}",
        f"data.std={std!r}",
        "data.augment.shift=true",
        "data.augment.roll=false",
        "data.augment.gain=true",
        f"data.augment.speed={SPEED}",
        "data.augment.mixup=0.0",
        "data.augment.freqm=0",
        "data.augment.timem=0",
        "masking.mask_t_prob=0.0",
        "masking.mask_f_prob=0.0",
        f"optim.blr={blr!r}",
        "optim.weight_decay=0.05",
        "optim.betas=[0.9,0.999]",
        f"optim.layer_decay={layer_decay}",
        f"schedule.epochs={epochs}",
        "schedule.warmup_epochs=2",
        "schedule.min_lr=1e-6",
        f"train.batch_size={batch}",
        f"train.seed={seed}",
        f"eval.every_n_epochs={max(1, epochs // 5)}",
        f"logging.every_n_steps={max(1, min(50, steps_per_epoch))}",
        "checkpoint.every_n_epochs=0",
        "checkpoint.keep_last=1",
        f"output_dir={out}",
    ]
    base += [f"model.params.{k}={json.dumps(v)}" for k, v in params.items()]
    if init is not None:
        base.append(f"checkpoint.init_from={init}")
        style = ((init_rep.config or {}).get("data") or {}).get("fbank_style")
        if style:  # the fbank the initial model takes (BEATs'), with its statistics above
            base.append(f"data.fbank_style={style}")
            notes.append(f"fbank: {style}'s, as the initial model was trained with")
    cfg = load_config([], base + list(overrides))
    if overrides:
        notes.append(f"overrides (win over the above): {' '.join(overrides)}")
    counts: Dict[str, int] = {}
    for it in eval_items:
        for lab in _labels_of(it)[:1]:
            counts[lab] = counts.get(lab, 0) + 1
    chance = max(counts.values()) / len(eval_items) if counts and not multilabel else 1.0 / len(classes)
    return FinetunePlan(
        config=cfg,
        notes=notes,
        num_classes=len(classes),
        num_train=len(train_items),
        num_eval=len(eval_items),
        held_out=held_out,
        chance=chance,
        steps_per_epoch=steps_per_epoch,
        clip_seconds=clip_seconds,
    )

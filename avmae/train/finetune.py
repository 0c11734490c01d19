"""Fine-tuning and linear probing of a classifier (``task: finetune`` / ``task: linprobe``).

AudioMAE's fine-tuning recipe, as the trainer runs it:

    checkpoint.init_from (ours or official; encoder kept, decoder ignored, fc_norm/head fresh)
    -> waveform roll/gain, Beta(10,10) waveform mixup with soft labels, SpecAugment   (data.augment)
    -> structured time/frequency token masking in training mode   (masking.mask_t_prob / mask_f_prob)
    -> encoder with drop path   (model.params.drop_path)
    -> mean pool, fc_norm, head -> loss, AdamW with layer-wise lr decay   (optim.layer_decay)

Loss (``train.loss``): "auto" picks BCE-with-logits for multi-label data (AudioSet) and
cross-entropy (soft targets allowed, ``train.label_smoothing``) for single-label data (ESC-50);
"bce" / "ce" force one. Whether the data is multi-label comes from the dataset (an item with more
than one label), or from ``data.multilabel`` when set.

Evaluation: logits and labels of the eval split are gathered with ``gather_for_metrics`` (no
item dropped or counted twice across processes). An eval set whose items hold several views of an
input (its ``input_views``, e.g. the frames of a video evaluated one at a time: ``eval.video_views``
of the "av" modality set) is scored by the average of the views' class probabilities (sigmoid
with the BCE loss, softmax with cross-entropy), as CAV-MAE's multi-frame evaluation does.
Multi-label: ``mAP`` (``avmae.train.metrics``),
``mAUC``; single-label: ``acc`` (top-1), ``acc5``. ``best_<metric>`` joins every eval record in
``metrics.jsonl``; per-class results go to ``<output_dir>/eval/per_class_last.json`` and
``per_class_best.json``.

Linear probe: the same model with everything but the classifier head frozen (the submodule the
model's ``head_name`` names: ``head``, or CAV-MAE's ``mlp_head``), so the features are the
encoder's mean-pooled tokens through ``fc_norm``. MAE's linear probe puts a
``BatchNorm1d(affine=False)`` before the head and trains with LARS; here there is no BatchNorm:
``fc_norm`` (a LayerNorm, fresh at weight 1 / bias 0 when initialised from a pretraining
checkpoint, then frozen) already standardises each feature vector, and the head trains with AdamW.
CAV-MAE's ``mlp_head`` (LayerNorm, Linear) is trained whole, its LayerNorm included.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import Config, ConfigError
from ..files import write_json
from ..registry import register_task
from .metrics import classification_report
from .task import Task, model_inputs

_logger = logging.getLogger(__name__)

__all__ = [
    "FinetuneOptions",
    "FinetuneTask",
    "LinearProbeTask",
    "classifier_head",
    "collect_predictions",
    "ensemble_logits",
    "predict_views",
    "classification_loss",
    "resolve_loss",
    "write_json",
]

LOSSES = ("auto", "bce", "ce")


def resolve_loss(choice: str, multilabel: bool) -> str:
    """ "auto" -> "bce" for multi-label data, "ce" for single-label data."""
    if choice not in LOSSES:
        raise ConfigError("train.loss", f"must be one of {list(LOSSES)}, got {choice!r}")
    return ("bce" if multilabel else "ce") if choice == "auto" else choice


def classification_loss(
    logits: torch.Tensor, target: torch.Tensor, loss: str, label_smoothing: float = 0.0
) -> torch.Tensor:
    """``logits [B, C]``, ``target [B, C]`` (multi-hot, one-hot or soft) -> scalar loss.

    "bce": mean BCE-with-logits over all B*C entries (AudioMAE's AudioSet loss).
    "ce": cross-entropy against the target distribution, with label smoothing."""
    logits, target = logits.float(), target.float()
    if loss == "bce":
        if label_smoothing:
            target = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def ensemble_logits(view_logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """``[V, B, C]`` logits of V views of each item -> ``[B, C]`` logits of the views' mean class
    probabilities: ``sigmoid(out)`` is the mean of the views' sigmoids (``multilabel``), else
    ``softmax(out)`` the mean of their softmaxes (``out`` is then its log). Computed in log space,
    so saturated logits stay finite; losses and metrics on ``out`` score the averaged probabilities."""
    if view_logits.dim() != 3 or view_logits.shape[0] < 1:
        raise ValueError(f"expected [V, B, C] logits with V >= 1, got {list(view_logits.shape)}")
    x = view_logits.float()
    if multilabel:  # log(mean p) - log(mean (1 - p)); the 1/V cancels
        return torch.logsumexp(F.logsigmoid(x), dim=0) - torch.logsumexp(F.logsigmoid(-x), dim=0)
    return torch.logsumexp(F.log_softmax(x, dim=-1), dim=0) - math.log(x.shape[0])


def input_views(dataset: Any) -> Dict[str, int]:
    """``{input key: V}`` of a dataset whose items hold V views of that input stacked on a leading
    dimension (``dataset.input_views``); empty for one view. Every listed input has the same V."""
    views = {str(k): int(v) for k, v in dict(getattr(dataset, "input_views", None) or {}).items() if int(v) != 1}
    if any(v < 1 for v in views.values()) or len(set(views.values())) > 1:
        raise ValueError(
            f"{type(dataset).__name__}.input_views must give every input the same number of views >= 1, got {views}"
        )
    return views


def predict_views(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], views: Mapping[str, int], multilabel: bool
) -> torch.Tensor:
    """Logits ``[B, C]`` of inputs holding several views: the model sees view k of every input in
    ``views`` (``[B, V, ...]`` -> ``[B, ...]``) with the other inputs unchanged, one view at a
    time; the views' probabilities are averaged (``ensemble_logits``)."""
    if not views:
        return model(dict(inputs)).float()
    for key, v in views.items():
        if key not in inputs:
            raise KeyError(f"the data has {v} views of {key!r}, which is not one of the model's inputs {list(inputs)}")
        if inputs[key].dim() < 2 or inputs[key].shape[1] != v:
            raise ValueError(f"input {key!r} should hold {v} views on dim 1, got shape {list(inputs[key].shape)}")
    count = next(iter(views.values()))
    logits = [model({k: x[:, i] if k in views else x for k, x in inputs.items()}).float() for i in range(count)]
    return ensemble_logits(torch.stack(logits), multilabel)


@torch.no_grad()
def collect_predictions(
    model: nn.Module, loader, accelerator, *, multilabel: Optional[bool] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, C]`` and labels ``[N, C]`` of every item of ``loader`` (float32, CPU), in
    dataset order, gathered from all processes with ``gather_for_metrics`` (the padding that
    evens out the processes' shares is dropped).

    When ``loader.dataset`` has ``input_views`` (several views of an input per item), each item's
    logits are those of its views' averaged probabilities (``predict_views``); ``multilabel``
    (default: the dataset's) picks sigmoid or softmax."""
    dataset = getattr(loader, "dataset", None)
    views = input_views(dataset)
    if multilabel is None:
        multilabel = bool(getattr(dataset, "multilabel", False))
    logits_all, labels_all = [], []
    for batch in loader:
        logits = predict_views(model, model_inputs(model, batch, accelerator), views, multilabel)
        logits, labels = accelerator.gather_for_metrics((logits.contiguous(), batch["label"].float().contiguous()))
        logits_all.append(logits.cpu())
        labels_all.append(labels.cpu())
    if not logits_all:
        return torch.zeros(0, 0), torch.zeros(0, 0)
    return torch.cat(logits_all), torch.cat(labels_all)


@dataclass
class FinetuneOptions:
    """``task_params`` of ``task: finetune``.

    ``freeze_epochs``: frozen, then unfrozen. For the first ``freeze_epochs`` epochs only the
    parts a fresh classifier adds train (the head and ``fc_norm``); the encoder's lr is 0 (its
    parameter groups carry ``frozen_epochs``, read by ``avmae.train.optim.set_lr``), then it joins
    in with its lr ramped up over one epoch, so that a random head's first gradients do not reach a
    pretrained encoder. 0: everything trains from the start (AudioMAE's recipe)."""

    freeze_epochs: float = 0.0


@register_task("finetune")
class FinetuneTask(Task):
    """Supervised fine-tuning of a ``model(inputs) -> logits [B, C]`` classifier
    (``task_params``: ``FinetuneOptions``)."""

    options = FinetuneOptions

    @classmethod
    def validate(cls, cfg: Config) -> None:
        if cfg.objectives:
            raise ConfigError("objectives", f"are pretraining losses; task {cfg.task!r} trains a classifier")
        frozen = cls.options_of(cfg).freeze_epochs
        if frozen < 0:
            raise ConfigError("task_params.freeze_epochs", f"must be >= 0, got {frozen}")
        if frozen and cfg.task == "linprobe":
            raise ConfigError("task_params.freeze_epochs", "a linear probe keeps the encoder frozen throughout")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.multilabel = False
        self.loss = "ce"
        self.class_ids: List[str] = []
        self.class_names: List[str] = []
        self._best: Optional[float] = None
        self._best_loaded = False

    # ------------------------------------------------------------------ model
    def model_params(self, train_set: Dataset) -> Dict[str, Any]:
        num_classes = int(getattr(train_set, "num_classes", 0) or 0)
        if num_classes < 1:
            raise ConfigError(
                "data.label_csv", f"task {self.name!r} needs labelled data; the training set has no classes"
            )
        self.multilabel = bool(getattr(train_set, "multilabel", False))
        self.loss = resolve_loss(self.cfg.train.loss, self.multilabel)
        self.class_ids = list(getattr(train_set, "class_ids", []) or [])
        self.class_names = list(getattr(train_set, "class_names", []) or [])
        _logger.info(
            "%s: %d classes, %s data, %s loss%s",
            self.name,
            num_classes,
            "multi-label" if self.multilabel else "single-label",
            self.loss.upper(),
            f" (label smoothing {self.cfg.train.label_smoothing:g})" if self.cfg.train.label_smoothing else "",
        )
        m = self.cfg.masking
        return {
            **super().model_params(train_set),
            "num_classes": num_classes,
            "mask_t_prob": m.mask_t_prob,
            "mask_f_prob": m.mask_f_prob,
        }

    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        """AdamW's groups; with ``task_params.freeze_epochs`` each group is split into the fresh
        classifier's parameters (head, ``fc_norm``) and the rest, which carries ``frozen_epochs``."""
        groups = super().param_groups(model)
        frozen = float(self.params.freeze_epochs) if self.params is not None else 0.0
        if not frozen:
            return groups
        try:
            head_name, _ = classifier_head(model)
        except AttributeError as exc:
            raise ConfigError("task_params.freeze_epochs", f"needs a classifier that names its head: {exc}") from None
        fresh = {id(p) for n, p in model.named_parameters() if n.split(".")[0] in (head_name, "fc_norm")}
        out: List[Dict[str, Any]] = []
        for g in groups:
            head = [p for p in g["params"] if id(p) in fresh]
            body = [p for p in g["params"] if id(p) not in fresh]
            if head:
                out.append({**g, "params": head})
            if body:
                out.append({**g, "params": body, "frozen_epochs": frozen, "group": f"{g['group']}_frozen"})
        _logger.info(
            "finetune: the encoder frozen for the first %g epoch(s), then unfrozen (task_params.freeze_epochs)", frozen
        )
        return out

    # ------------------------------------------------------------------ loss
    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, target, self.loss, self.cfg.train.label_smoothing)

    def compute_loss(self, model, inputs, batch):
        return self.loss_fn(model(inputs), batch["label"]), {}

    # ------------------------------------------------------------------ evaluation
    @property
    def main_metric(self) -> str:
        return "mAP" if self.multilabel else "acc"

    @torch.no_grad()
    def evaluate(self, model, loader, accelerator) -> Dict[str, float]:
        # views are averaged as the loss reads the logits: sigmoids under BCE, softmaxes under CE
        logits, labels = collect_predictions(model, loader, accelerator, multilabel=self.loss == "bce")
        if logits.numel() == 0:
            return {}
        summary, per_class = classification_report(
            logits,
            labels,
            multilabel=self.multilabel,
            class_names=self.class_names or None,
            class_ids=self.class_ids or None,
        )
        out: Dict[str, float] = {"loss": self.loss_fn(logits, labels).item()}
        if self.multilabel:
            out.update({"mAP": summary["mAP"], "mAUC": summary["mAUC"], "acc": summary["acc"]})
        else:
            out.update({"acc": summary["acc"], "acc5": summary["acc5"]})
        self._warn_at_chance(out, logits.shape[1])
        key = self.main_metric
        value = out[key]
        self._load_best()
        improved = not math.isnan(value) and (self._best is None or value > self._best)
        if improved:
            self._best = value
        if self._best is not None:
            out[f"best_{key}"] = self._best
        if accelerator.is_main_process and self.cfg.output_dir:
            record = {"metric": key, "summary": summary, "loss": out["loss"], "classes": per_class}
            folder = Path(self.cfg.output_dir) / "eval"
            write_json(folder / "per_class_last.json", record)
            if improved:
                write_json(folder / "per_class_best.json", record)
        return out

    def _warn_at_chance(self, out: Mapping[str, float], num_classes: int) -> None:
        """Say so when a single-label classifier still predicts the class prior (eval loss at ln C)."""
        if self.multilabel or self.loss != "ce" or num_classes < 2 or self.cfg.train.label_smoothing:
            return
        chance = math.log(num_classes)
        if out["loss"] >= 0.98 * chance and out["acc"] <= 1.5 / num_classes:
            _logger.warning(
                "eval loss %.3f is at chance level (ln %d = %.3f, accuracy %.1f %%): the classifier still predicts the"
                " class prior. If this lasts, the learning rate may not suit this model and data (optim.lr /"
                " optim.blr); a short clip also needs data.target_length near its length and data.augment.shift, not"
                " roll",
                out["loss"],
                num_classes,
                chance,
                100 * out["acc"],
            )

    def _load_best(self) -> None:
        """On the first evaluation, the best value so far from ``metrics.jsonl`` (a resumed run)."""
        if self._best_loaded:
            return
        self._best_loaded = True
        path = Path(self.cfg.output_dir or "", "metrics.jsonl")
        if not self.cfg.output_dir or not path.is_file():
            return
        key = f"eval/{self.main_metric}"
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                v = json.loads(line).get(key)
            except ValueError:
                continue
            if isinstance(v, (int, float)) and not math.isnan(v) and (self._best is None or v > self._best):
                self._best = float(v)


def classifier_head(model: nn.Module) -> Tuple[str, nn.Module]:
    """``(name, module)`` of a classifier's head: the submodule its ``head_name`` names (``head``
    for AudioMAE's and AST's classifiers, ``mlp_head`` for CAV-MAE's)."""
    name = getattr(model, "head_name", None)
    if not isinstance(name, str) or not name:
        raise AttributeError(f"{type(model).__name__} does not name its classifier head (no `head_name`)")
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        raise AttributeError(
            f"{type(model).__name__}.head_name is {name!r}, which is not one of its submodules"
        ) from None


@register_task("linprobe")
class LinearProbeTask(FinetuneTask):
    """Linear probe: every parameter but the classifier head's (``classifier_head``) frozen (no
    drop path unless set; the structured masking applies only when ``masking.mask_*_prob`` are set)."""

    def model_params(self, train_set: Dataset) -> Dict[str, Any]:
        params = super().model_params(train_set)
        params.setdefault("drop_path", 0.0)
        return params

    def build_model(self, train_set: Dataset) -> nn.Module:
        model = super().build_model(train_set)
        if not self.cfg.checkpoint.init_from:
            _logger.warning("linprobe without checkpoint.init_from: probing a randomly initialised encoder")
        try:
            name, head = classifier_head(model)
        except AttributeError as exc:
            raise ConfigError("model.name", f"task 'linprobe' trains a classifier's head alone: {exc}") from None
        trainable = {id(p) for p in head.parameters()}
        if not trainable:
            raise ConfigError(
                "model.name", f"{self.cfg.model.name}'s head `{name}` has no parameters to probe (num_classes=0?)"
            )
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        _logger.info(
            "linprobe: training `%s` (%d parameters), the rest frozen", name, sum(p.numel() for p in head.parameters())
        )
        return model

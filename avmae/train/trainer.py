"""One training loop, on accelerate, for every task and every modality set.

    data (dataset builder of cfg.modality) -> task.compute_loss -> backward -> (every grad_accum
    batches) lr schedule, clip, non-finite guard, AdamW step -> log -> checkpoint

The loop knows nothing about audio, losses or models: it passes every batch entry whose key is one
of the model's modalities as ``inputs`` and leaves the rest to its collaborators, one concern each:

- the task (``avmae.train.task``, registry ``TASKS``): model, parameter groups, loss, evaluation;
- the dataset builder (``avmae.train.datasets``, registry ``DATASETS``): the train / eval sets;
- the run plan (``plan.py``) and precision (``precision.py``): derived values, computed once;
- ``NonFiniteGuard`` (``guard.py``): the optimizer step, or its skip;
- ``RunCheckpoints`` (``checkpointing.py``, over ``avmae.run_folder``): the run folder, resume, saves;
- ``TrainLog`` (``logging_utils.py``): metrics.jsonl, TensorBoard, the progress bar.

Unreadable clips (``data.on_error=skip``): the datasets log them under ``output_dir/skipped/``; at
the end of every epoch (and of the run) they are merged into ``output_dir/skipped.tsv``
(``path<TAB>reason``), and the run stops when the training set's skipped fraction, over all
processes and workers, passes ``data.max_skip_fraction``.

A stop request (SIGTERM) is a host flag in a single process, checked every step; several processes
must agree on it, which takes a read: every ``STOP_CHECK_EVERY`` steps and at log steps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Sampler

from ..config import Config, ConfigError, validate
from ..deprecation import call_hook, deprecated_alias
from ..files import atomic_write
from ..registry import DATASETS, TASKS, RegistryError
from ..run_folder import SKIP_DIR, SKIPPED_FILE
from .checkpointing import RunCheckpoints, TrainState
from .datasets import dataset_builder
from .guard import NonFiniteGuard
from .loaders import StopRequest, build_loader, die_with_launcher, stop_workers
from .logging_utils import TrainLog
from .optim import build_optimizer, lr_at, resolve_fused, set_fused, set_lr
from .plan import RunPlan, plan_run
from .precision import fresh_precision_state, linear_shapes, resolve_mixed_precision
from .samplers import EpochIndexed, MemoryCached
from .task import Task, base_model_params, build_model, model_inputs
from .threads import configure_threads

_logger = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainResult", "train", "STOP_CHECK_EVERY"]

# with several processes and the device-side skip, the agreed stop flag (SIGTERM on any process) is
# read every this many steps (and at log steps): a preempted job's grace period is tens of seconds
STOP_CHECK_EVERY = 10


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


@dataclass
class _Run:
    """What ``_setup`` builds for one ``fit``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_set: Dataset
    train_loader: Any
    eval_loader: Any
    sampler: Sampler
    plan: RunPlan
    state: TrainState
    eval_metrics: Dict[str, float] = field(default_factory=dict)
    evaluated_at: int = -1
    saved_at: int = -1
    started: float = 0.0  # time.time() at the start of fit (schedule.max_seconds)
    epoch_started: float = 0.0
    eval_seconds: float = 0.0  # the last evaluation's
    epoch_seconds: List[float] = field(default_factory=list)  # the epochs of this fit, for the time budget


def _lookup(registry, name: str, key: str):
    try:
        return registry.get(name)
    except RegistryError as exc:
        raise ConfigError(key, str(exc)) from None


class Trainer:
    """Builds everything from a ``Config`` and runs ``fit``.

    ``task`` and ``datasets`` (train, eval) may be passed in to replace the registered ones
    (tests, notebooks). ``on_step_end(step)`` is a no-op hook a subclass may use (called once a
    step is logged and checkpointed; the old name ``after_step`` still works, with a warning).
    ``device_skip = False`` (class attribute) reads the non-finite flags every step even where
    the optimizer could skip on the device.
    """

    device_skip: bool = True

    def __init__(
        self, cfg: Config, *, task: Optional[Task] = None, datasets: Optional[Tuple[Dataset, Optional[Dataset]]] = None
    ) -> None:
        from accelerate import Accelerator, PartialState
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        die_with_launcher()  # a training process started by torchrun / accelerate goes when its launcher goes
        validate(cfg)
        task_cls = _lookup(TASKS, cfg.task, "task") if task is None else None
        self._builder = None
        if datasets is None:
            _lookup(DATASETS, cfg.dataset or cfg.modality, "dataset")
            self._builder = dataset_builder(cfg.dataset or cfg.modality)
            self._builder.check(cfg)  # before any work: e.g. a recipe without its manifests stops here
        state = PartialState(cpu=cfg.train.cpu)
        cfg = dataclasses.replace(cfg, output_dir=str(self._output_dir(cfg, state)))
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.task = task if task is not None else task_cls(cfg)
        self._datasets = datasets
        self.threads = configure_threads(cfg.train.threads)  # before the precision probe: it runs on them
        self.mixed_precision = resolve_mixed_precision(
            cfg.train.mixed_precision, state.device, shapes=self._probe_shapes(cfg, state.device)
        )
        fresh_precision_state(state.num_processes)
        self.accelerator = Accelerator(
            cpu=cfg.train.cpu,
            mixed_precision=self.mixed_precision,
            gradient_accumulation_steps=cfg.train.grad_accum,
            log_with="tensorboard" if cfg.logging.tensorboard else None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir)),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters)],
            step_scheduler_with_optimizer=False,
        )
        self.checkpoints = RunCheckpoints(cfg, self.output_dir, self.accelerator)
        self.stop = StopRequest()

    @staticmethod
    def _probe_shapes(cfg: Config, device: torch.device) -> Optional[List[Tuple[int, int, int]]]:
        """The matmul shapes of the run's model for ``auto`` precision on a CPU (the model built
        on the meta device: no memory, no init); None (the probe's defaults) where it cannot be."""
        if cfg.train.mixed_precision != "auto" or device.type != "cpu":
            return None
        try:
            with torch.device("meta"):
                return linear_shapes(build_model(cfg.model.name, base_model_params(cfg)))
        except ConfigError:  # a bad model config stops the run here, before the probe does any work
            raise
        except Exception as exc:  # a task-specific model (e.g. one that needs its data): default shapes
            _logger.debug("precision probe: default shapes (%s)", exc)
            return None

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
        cfg, acc, task, t_start = self.cfg, self.accelerator, self.task, time.time()
        with self.checkpoints.locked():  # one trainer per run folder, released however fit ends
            run = self._setup()
            plan, state, model, optimizer = run.plan, run.state, run.model, run.optimizer
            start_step, interrupted = state.step, False
            log = TrainLog(self.output_dir, acc, cfg, plan, state)
            params = [p for p in model.parameters() if p.requires_grad]
            clip = cfg.optim.clip_grad if cfg.optim.clip_grad is not None else math.inf
            guard = NonFiniteGuard(
                acc,
                optimizer,
                state,
                limit=cfg.train.max_nonfinite,
                stop_requested=self.stop.requested,
                on_device=self.device_skip,
            )
            try:
                with self.stop:
                    run.started = time.time() - state.seconds
                    while state.step < plan.total_steps and not interrupted:
                        run.epoch_started = time.time()
                        run.sampler.set_position(state.epoch, start=state.epoch_step * plan.effective_batch)
                        model.train()
                        for batch in run.train_loader:
                            with acc.accumulate(model):
                                loss, parts = task.compute_loss(model, model_inputs(model, batch, acc), batch)
                                acc.backward(loss)
                                log.add(loss, parts, cfg.train.batch_size)
                                if not acc.sync_gradients:
                                    continue
                                lr = lr_at(
                                    state.step,
                                    base_lr=plan.lr,
                                    min_lr=plan.min_lr,
                                    warmup_steps=plan.warmup_steps,
                                    total_steps=plan.total_steps,
                                )
                                set_lr(optimizer, lr, state.step / plan.steps_per_epoch)
                                grad_norm = acc.clip_grad_norm_(params, clip)
                                guard.step(state.step + 1, log.take_nonfinite(), grad_norm)
                            state.step += 1
                            state.epoch_step += 1
                            call_hook(
                                task,
                                "after_optimizer_step",
                                "after_step",
                                acc.unwrap_model(model, keep_torch_compile=False),
                                state.step,
                                plan.total_steps,
                            )
                            if self._finish_step(run, log, guard, lr, grad_norm, stop_after):
                                interrupted = True
                                break
                            if state.step >= plan.total_steps:
                                break
                        if state.epoch_step >= plan.steps_per_epoch:
                            interrupted = self._end_epoch(run, log, guard) or interrupted
                    self._end_run(run, log, guard, interrupted)
            finally:
                log.close()
                stop_workers(run.train_loader, run.eval_loader)
                acc.end_training()
                skipped_items = self._skip_report(run.train_set, check=False, final=True)
        if interrupted:
            _logger.info(
                "stopped at step %d (%s); resume with resume=true", state.step, self.stop.signal or "stop requested"
            )
        return TrainResult(
            output_dir=self.output_dir,
            steps=state.step,
            last_checkpoint=Path(state.last_checkpoint) if state.last_checkpoint else None,
            first_loss=log.history[0][1] if log.history else None,
            last_loss=log.history[-1][1] if log.history else None,
            start_step=start_step,
            loss_history=log.history,
            eval=run.eval_metrics,
            skipped_steps=state.skipped_steps,
            interrupted=interrupted,
            seconds=time.time() - t_start,
            plan=plan,
            skipped_items=skipped_items,
        )

    def on_step_end(self, step: int) -> None:
        """Called after every optimizer step, once it is logged and checkpointed (a hook for subclasses)."""

    after_step = deprecated_alias("on_step_end", "after_step")

    # ------------------------------------------------------------------------ the loop's pieces
    def _setup(self) -> _Run:
        """Run folder, model, data, plan, optimizer, loaders, ``accelerator.prepare``, resume."""
        from accelerate.utils import set_seed

        cfg, acc, task = self.cfg, self.accelerator, self.task
        self.checkpoints.prepare()
        set_seed(cfg.train.seed)  # every process builds the same model from the same seed
        model = None if task.model_needs_data else task.build_model(None)  # bad model params fail before data work
        with acc.main_process_first():
            train_set, eval_set = self._datasets if self._datasets is not None else self._build_datasets()
        if cfg.data.cache:
            train_set = MemoryCached(train_set)
            eval_set = MemoryCached(eval_set) if eval_set is not None else None
        if model is None:
            model = task.build_model(train_set)
        plan = plan_run(
            cfg,
            task.items_per_epoch(train_set),
            acc.num_processes,
            mixed_precision=self.mixed_precision,
            device=str(acc.device),
        )
        _logger.info("run plan: %s", plan.describe())
        fused = resolve_fused(cfg.optim.fused, self._param_devices())
        optimizer = build_optimizer(
            task.param_groups(model), lr=plan.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, fused=fused
        )
        _logger.info(
            "optimizer: AdamW, %s implementation (optim.fused=%s)", "fused" if fused else "default", cfg.optim.fused
        )
        sampler = task.build_sampler(train_set, plan)
        loader_kw = dict(num_workers=cfg.data.num_workers, seed=cfg.train.seed, pin_memory=acc.device.type == "cuda")
        train_loader = build_loader(EpochIndexed(train_set), cfg.train.batch_size, sampler=sampler, **loader_kw)
        eval_loader = None
        if eval_set is not None and cfg.eval.every_n_epochs >= 0:
            eval_loader = build_loader(eval_set, cfg.eval.batch_size or cfg.train.batch_size, **loader_kw)
        if cfg.train.compile:
            model = torch.compile(model)
        model, optimizer, train_loader, eval_loader = acc.prepare(model, optimizer, train_loader, eval_loader)
        self.checkpoints.register_weight_hooks()
        set_seed(cfg.train.seed + acc.process_index)  # per-process masking / drop-path randomness
        state = self.checkpoints.resume(plan)
        if state.planned_steps and cfg.schedule.max_seconds is not None:  # the length the time budget chose
            plan.total_steps = max(state.planned_steps, state.step)
            plan.epochs = math.ceil(plan.total_steps / plan.steps_per_epoch)
        if state.last_checkpoint:
            set_fused(optimizer, fused)  # the loaded state carries the implementation that wrote it
        self.checkpoints.write_run_info(plan)
        return _Run(
            model,
            optimizer,
            train_set,
            train_loader,
            eval_loader,
            sampler,
            plan,
            state,
            saved_at=state.step if state.last_checkpoint else -1,
        )

    def _finish_step(
        self,
        run: _Run,
        log: TrainLog,
        guard: NonFiniteGuard,
        lr: float,
        grad_norm: torch.Tensor,
        stop_after: Optional[int],
    ) -> bool:
        """Progress, log and checkpoint of the step just taken -> whether to stop now."""
        cfg, state = self.cfg, run.state
        multi = self.accelerator.num_processes > 1
        log.advance()
        log_due = log.due(state.step)
        save_due = bool(cfg.checkpoint.every_n_steps) and state.step % cfg.checkpoint.every_n_steps == 0
        if log_due or save_due or (multi and state.step % STOP_CHECK_EVERY == 0):
            guard.poll()
        if log_due:
            log.train(state, lr, grad_norm)
        if save_due:
            self._save(run, guard)
        call_hook(self, "on_step_end", "after_step", state.step)
        return self._stop_now(guard) or (stop_after is not None and state.step >= stop_after)

    def _stop_now(self, guard: NonFiniteGuard) -> bool:
        # several processes stop on the agreed flag only (as of its last read), so they stop at the same step
        return guard.stop_agreed if self.accelerator.num_processes > 1 else self.stop.requested()

    def _end_epoch(self, run: _Run, log: TrainLog, guard: NonFiniteGuard) -> bool:
        """A full epoch ended: evaluation when due, the skip report, the epoch's checkpoint.
        -> whether to stop now (a stop request, agreed at this epoch end's read)."""
        cfg, state = self.cfg, run.state
        guard.poll()
        state.epoch += 1
        state.epoch_step = 0
        epoch_seconds = time.time() - run.epoch_started
        if cfg.schedule.max_seconds is not None:
            self._fit_to_time(run, log, epoch_seconds)
        done = state.step >= run.plan.total_steps
        if run.eval_loader is not None and self._eval_due(state.epoch, done):
            t_eval = time.time()
            self._evaluate(run, log)
            run.eval_seconds = time.time() - t_eval
        self._skip_report(run.train_set, check=True)
        if (
            cfg.checkpoint.every_n_epochs
            and state.epoch % cfg.checkpoint.every_n_epochs == 0
            and run.saved_at != state.step
        ):
            self._save(run, guard)
        return self._stop_now(guard)

    def _fit_to_time(self, run: _Run, log: TrainLog, epoch_seconds: float) -> None:
        """``schedule.max_seconds``: re-plan the run's epochs so that it ends within the budget,
        from the mean time of the last few epochs (the first of this ``fit`` left out once there
        are others: it fills caches) and the last evaluation's time. The plan grows only by more
        than 5 % (an epoch's time varies; the cosine should not jitter) and shrinks whenever it no
        longer fits. The main process decides; every process takes its decision."""
        plan, state = run.plan, run.state
        epochs = plan.epochs
        run.epoch_seconds.append(epoch_seconds)
        seen = run.epoch_seconds[1:] if len(run.epoch_seconds) > 1 else run.epoch_seconds
        per_epoch = sum(seen[-5:]) / len(seen[-5:])
        if self.accelerator.is_main_process:
            left = self.cfg.schedule.max_seconds - (time.time() - run.started)
            fit = state.epoch
            every = self.cfg.eval.every_n_epochs
            while True:  # one more epoch while it (and its evaluation, when due) still fits
                nxt = fit + 1
                cost = per_epoch + (run.eval_seconds if every > 0 and nxt % every == 0 else 0.0)
                if cost > left:
                    break
                left -= cost
                fit = nxt
            if fit < plan.epochs or fit > 1.05 * plan.epochs:
                epochs = fit
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [epochs]
            broadcast_object_list(box, from_process=0)
            epochs = box[0]
        if epochs != plan.epochs:
            _logger.info(
                "time budget: %d epochs instead of %d (%.1f s an epoch lately; schedule.max_seconds=%g)",
                epochs,
                plan.epochs,
                per_epoch,
                self.cfg.schedule.max_seconds,
            )
            plan.epochs = epochs
            plan.total_steps = max(state.step, epochs * plan.steps_per_epoch)
            plan.warmup_steps = min(plan.warmup_steps, plan.total_steps)
            log.bar.total = plan.total_steps
            log.bar.refresh()
        state.planned_steps = plan.total_steps

    def _end_run(self, run: _Run, log: TrainLog, guard: NonFiniteGuard, interrupted: bool) -> None:
        """The run's last evaluation (when it ended mid-epoch) and last checkpoint."""
        guard.poll()
        if not interrupted and run.eval_loader is not None and run.evaluated_at != run.state.step:
            self._evaluate(run, log)
        if run.saved_at != run.state.step:
            self._save(run, guard)

    def _save(self, run: _Run, guard: NonFiniteGuard) -> None:
        guard.poll()  # exact counts in trainer_state.json; no checkpoint after a failed streak
        if run.started and self.cfg.schedule.max_seconds is not None:  # a time budget counts it across resumes
            run.state.seconds = time.time() - run.started
        self.checkpoints.save(run.state)
        run.saved_at = run.state.step

    def _param_devices(self) -> List[str]:
        """Device types the optimizer steps parameters on: the training device, and the CPU where
        FSDP offloads the parameters there."""
        devices = [self.accelerator.device.type]
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        offload = getattr(plugin, "cpu_offload", None)
        if getattr(offload, "offload_params", False) or type(offload).__name__ == "CPUOffloadPolicy":
            devices.append("cpu")
        return devices

    def _build_datasets(self) -> Tuple[Dataset, Optional[Dataset]]:
        train_set = self._builder.build(self.cfg, "train")
        if train_set is None:
            raise ConfigError("data.train_manifest", f"the {self.cfg.modality!r} dataset builder made no training set")
        return train_set, self._builder.build(self.cfg, "eval")

    def _eval_due(self, epoch: int, done: bool) -> bool:
        n = self.cfg.eval.every_n_epochs
        return done if n == 0 else (done or epoch % n == 0)

    def _evaluate(self, run: _Run, log: TrainLog) -> None:
        # evaluation draws its randomness (e.g. masks) from a fixed seed, outside the training RNG stream
        device = self.accelerator.device
        devices = [device.index or 0] if device.type == "cuda" else []
        run.model.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.cfg.train.seed)
                result = self.task.evaluate(run.model, run.eval_loader, self.accelerator)
        finally:
            run.model.train()
        log.eval(run.state.step, result)
        run.eval_metrics, run.evaluated_at = result, run.state.step

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
                atomic_write(self.output_dir / SKIPPED_FILE, "".join(f"{p}\t{r}\n" for p, r in sorted(found.items())))
        except OSError as exc:
            if not final:
                raise
            _logger.warning("could not write %s: %s", self.output_dir / SKIPPED_FILE, exc)
        if found and acc.is_main_process and len(found) != getattr(self, "_skips_logged", 0):
            self._skips_logged = len(found)
            _logger.info(
                "%d unreadable clip(s) skipped so far, listed in %s", len(found), self.output_dir / SKIPPED_FILE
            )
        log_dir, fraction = getattr(train_set, "skip_log_dir", None), getattr(train_set, "max_skip_fraction", None)
        if check and log_dir is not None and fraction is not None:
            skipped = len(collect_skipped(log_dir)) if Path(log_dir).is_dir() else 0
            if skipped > fraction * len(train_set):
                raise TooManySkippedError(
                    f"{skipped} of {len(train_set)} training clips are unreadable, more than"
                    f" data.max_skip_fraction={fraction} (listed in {self.output_dir / SKIPPED_FILE}). Check the data"
                    " (or raise data.max_skip_fraction)."
                )
        return len(found)


def train(cfg: Config, **kwargs: Any) -> TrainResult:
    """``Trainer(cfg, **kwargs).fit()``."""
    return Trainer(cfg, **kwargs).fit()

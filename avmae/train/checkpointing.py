"""The trainer's checkpoints: ``TrainState`` and ``RunCheckpoints`` (lock, prepare, resume, save, rotate).

A checkpoint of step N is ``<run>/checkpoints/step_000000N/`` (``avmae.run_folder``): accelerate's
state (optimizer, RNG, scaler), ``model.safetensors`` (``avmae.save_checkpoint``: the exported
model with its name, factory params and run config in the metadata), ``config.yaml``,
``trainer_state.json`` and, written last, ``manifest.json`` (size and sha256 of every other file).

What a crash (SIGKILL, power loss) can and cannot do:

- a save writes a temporary folder, its manifest last, flushes every file and the folder to disk
  (fsync), renames it to ``step_*`` and flushes the parent: a ``step_*`` folder is complete;
- rotation (``checkpoint.keep_last``) renames a folder to ``.trash-step_*`` before deleting it,
  so a half-deleted folder never looks like a checkpoint; ``prepare`` removes the leftovers;
- resume verifies the newest checkpoint against its manifest (sizes and hashes) and its state
  file; a damaged one is named in a warning with the reason, moved to ``damaged-step_*`` (kept
  for inspection, never listed) and the previous complete one is used. When none is complete,
  resume stops with an error listing them, rather than start over.

Only one trainer writes a run folder: ``locked`` holds its ``run.lock`` (``run_lock.RunLock``).

Resume reads the pickled states of the chosen checkpoint with ``weights_only=True`` first (a file
holding anything else, code, is refused), then accelerate loads them. Reproducibility: the data
order of an epoch depends only on (seed, epoch), per-item randomness on (seed, epoch, index), and
model randomness on the torch RNG that accelerate stores per process, so a resumed run ends with
the same weights as the run that was never stopped (bit-identical on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import avmae

from ..checkpoint import CheckpointError, fsync_dir, save_checkpoint
from ..config import Config, ConfigError, diff, load_config, save_config, to_dict
from ..files import to_json
from ..run_folder import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    RUN_INFO_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    check_pickled_states,
    checkpoint_dir,
    checkpoint_problem,
    list_checkpoints,
    step_folders,
    write_manifest,
)
from .plan import RunPlan
from .run_lock import RunLock, RunLockError

_logger = logging.getLogger(__name__)

__all__ = ["TrainState", "RunCheckpoints"]


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
    planned_steps: int = 0  # the run's length as re-planned for schedule.max_seconds (0: the plan's)
    seconds: float = 0.0  # seconds of fit() spent before this checkpoint (for schedule.max_seconds)


class RunCheckpoints:
    """Checkpoints of one run folder, for one ``Accelerator``."""

    def __init__(self, cfg: Config, output_dir: Path, accelerator) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.acc = accelerator

    def _share(self, value: Any) -> Any:
        """The main process's ``value``, on every process."""
        if self.acc.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run folder's lock (main process) for the block: a second trainer on the same
        folder stops at once with ``RunLockError`` naming the holder, on every process."""
        lock = RunLock(self.output_dir) if self.acc.is_main_process else None
        error: Optional[Exception] = None
        if lock is not None:
            try:
                lock.acquire()
            except Exception as exc:  # noqa: BLE001 - told to the other processes, then raised
                error = exc
        if isinstance(error, OSError):
            shared = ("os", error.errno, error.strerror, error.filename)
        else:
            shared = None if error is None else ("lock", str(error))
        shared = self._share(shared)
        if error is not None:
            raise error
        if shared is not None:  # the same error on every process
            raise OSError(*shared[1:]) if shared[0] == "os" else RunLockError(shared[1])
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def prepare(self) -> None:
        """Create the run folder (a folder holding checkpoints needs ``resume``), drop what an
        interrupted save or rotation left (``.tmp-*``, ``.trash-*``), write ``config.yaml``."""
        acc = self.acc
        if step_folders(self.output_dir) and not self.cfg.resume:  # every process raises
            raise ConfigError(
                "resume",
                f"{self.output_dir} already holds checkpoints; pass --resume (resume=true) to continue it, or choose"
                " another --output-dir",
            )
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            root = self.output_dir / CHECKPOINT_DIR
            for stale in [*root.glob(".tmp-*"), *root.glob(".trash-*")] if root.is_dir() else ():
                shutil.rmtree(stale, ignore_errors=True)  # left by a crash while saving or rotating
            save_config(self.cfg, self.output_dir / CONFIG_FILE)
        acc.wait_for_everyone()

    def write_run_info(self, plan: RunPlan) -> None:
        if self.acc.is_main_process:
            info = {
                "plan": dataclasses.asdict(plan),
                "avmae_version": avmae.__version__,
                "torch_version": __import__("torch").__version__,
            }
            (self.output_dir / RUN_INFO_FILE).write_text(to_json(info, indent=1), encoding="utf-8")

    def register_weight_hooks(self) -> None:
        """Model weights go through avmae's safetensors export, not accelerate's own file, so a
        checkpoint's ``model.safetensors`` is the exported model (no ``module.`` prefixes)."""
        acc = self.acc

        def save_hook(models, weights, output_dir):
            if acc.is_main_process:
                model = acc.unwrap_model(models[0], keep_torch_compile=False)
                # a model from avmae.create_model names itself (and its params); another gets the config's name
                name = None if getattr(model, "avmae_spec", None) else self.cfg.model.name
                save_checkpoint(model, Path(output_dir) / WEIGHTS_FILE, model_name=name, config=to_dict(self.cfg))
            weights.clear()

        def load_hook(models, input_dir):
            from safetensors.torch import load_file

            sd = load_file(str(Path(input_dir) / WEIGHTS_FILE), device="cpu")
            acc.unwrap_model(models[0], keep_torch_compile=False).load_state_dict(sd, strict=True)
            models.clear()

        acc.register_save_state_pre_hook(save_hook)
        acc.register_load_state_pre_hook(load_hook)

    # ------------------------------------------------------------------------ resume
    def resume(self, plan: RunPlan) -> TrainState:
        """The state to continue from: the newest complete checkpoint's (loaded into the prepared
        model, optimizer and RNGs) with ``resume``, else a fresh one."""
        state = TrainState(global_batch=plan.effective_batch, num_processes=plan.num_processes)
        if not self.cfg.resume:
            return state
        ckpt = self._checkpoint_to_resume()
        if ckpt is None:
            _logger.info("resume: no checkpoint in %s yet, starting from scratch", self.output_dir)
            return state
        check_pickled_states(ckpt)
        rng_file = ckpt / f"random_states_{self.acc.process_index}.pkl"
        if not rng_file.is_file():
            _logger.warning(
                "%s lacks %s: the random streams restart, so the continuation is not bit-exact", ckpt, rng_file.name
            )
        try:
            self.acc.load_state(str(ckpt))
        except CheckpointError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CheckpointError(f"{ckpt}: cannot be loaded into this run ({type(exc).__name__}: {first})") from exc
        saved = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        state = TrainState(**{k: v for k, v in saved.items() if k in TrainState.__dataclass_fields__})
        state.last_checkpoint = str(ckpt)
        old_cfg = ckpt / CONFIG_FILE
        if old_cfg.is_file():
            changed = [
                k for k in diff(load_config([old_cfg], check=False), self.cfg) if k not in ("resume", "output_dir")
            ]
            if changed:
                _logger.warning("resuming with a config that differs from the checkpoint's in: %s", ", ".join(changed))
        if state.global_batch != plan.effective_batch or state.num_processes != plan.num_processes:
            # another world size: continue at the same item of the epoch, rounded down; not bit-exact
            consumed = state.epoch_step * state.global_batch
            state.epoch_step = consumed // plan.effective_batch
            _logger.warning(
                "resuming with effective batch %d on %d process(es) (checkpoint: %d on %d); the continuation is not"
                " bit-exact",
                plan.effective_batch,
                plan.num_processes,
                state.global_batch,
                state.num_processes,
            )
            state.global_batch, state.num_processes = plan.effective_batch, plan.num_processes
        if state.epoch_step > plan.steps_per_epoch:
            state.epoch, state.epoch_step = state.epoch + 1, 0
        _logger.info(
            "resumed from %s at step %d (epoch %d, step %d of it)", ckpt, state.step, state.epoch, state.epoch_step
        )
        return state

    def _checkpoint_to_resume(self) -> Optional[Path]:
        """The newest checkpoint that passes its verification (manifest: sizes and hashes; a
        readable state file), chosen by the main process. Newer damaged ones are named in a
        warning and moved aside; none complete (but some there) is an error."""
        chosen: Optional[str] = None
        error: Optional[str] = None
        if self.acc.is_main_process:
            damaged: List[Tuple[Path, str]] = []
            for folder in reversed(step_folders(self.output_dir)):
                problem = checkpoint_problem(folder, deep=True) or _state_problem(folder)
                if problem is None:
                    chosen = str(folder)
                    break
                damaged.append((folder, problem))
            if damaged and chosen is None:
                error = (
                    f"{self.output_dir}: no complete checkpoint to resume from ("
                    + "; ".join(f"{d.name}: {why}" for d, why in damaged)
                    + f"). Move these folders out of {self.output_dir / CHECKPOINT_DIR} to start the run over, or"
                    " choose another --output-dir"
                )
                if any(why.startswith("no manifest") for _, why in damaged):
                    error += (
                        "; a checkpoint written before manifests existed that you trust can be accepted with"
                        " avmae.run_folder.write_manifest(<its folder>)"
                    )
            for folder, why in damaged if chosen is not None else ():
                aside = _set_aside(folder)
                _logger.warning(
                    "resume: checkpoint %s is damaged (%s); moved to %s, resuming from the previous complete one, %s",
                    folder,
                    why,
                    aside.name,
                    Path(chosen).name,
                )
        chosen, error = self._share((chosen, error))
        if error is not None:
            raise CheckpointError(error)
        return None if chosen is None else Path(chosen)

    # ------------------------------------------------------------------------ save
    def save(self, state: TrainState) -> Path:
        """Checkpoint of ``state.step``: a temporary folder, complete with its manifest and on
        the disk, then renamed into place; old ones rotated."""
        acc = self.acc
        final = checkpoint_dir(self.output_dir, state.step)
        tmp = final.with_name(f".tmp-{final.name}")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            save_config(self.cfg, tmp / CONFIG_FILE)
            record = dataclasses.asdict(state)
            record.pop("last_checkpoint")
            (tmp / STATE_FILE).write_text(to_json(record, indent=1), encoding="utf-8")
        acc.wait_for_everyone()  # every process's files are written
        if acc.is_main_process:
            write_manifest(tmp)  # last, with every file flushed to disk
            if final.exists():  # a folder of this step left by an earlier life of the run
                _discard(final)
            os.replace(tmp, final)
            fsync_dir(final.parent)
            self._rotate()
        acc.wait_for_everyone()
        state.last_checkpoint = str(final)
        _logger.info("saved checkpoint %s", final)
        return final

    def _rotate(self) -> None:
        keep = self.cfg.checkpoint.keep_last
        if keep > 0:
            for old in list_checkpoints(self.output_dir)[:-keep]:
                _discard(old)


def _state_problem(folder: Path) -> Optional[str]:
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{STATE_FILE} unreadable ({type(exc).__name__})"
    return None


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder so that no crash leaves it half-deleted under its name: rename
    it to ``.trash-<name>`` (flushed to disk), then delete that."""
    trash = folder.with_name(f".trash-{folder.name}")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    fsync_dir(folder.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _set_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint folder to ``damaged-<name>`` (never listed, kept to look at)."""
    aside = folder.with_name(f"damaged-{folder.name}")
    n = 1
    while aside.exists():
        n += 1
        aside = folder.with_name(f"damaged-{folder.name}-{n}")
    os.replace(folder, aside)
    fsync_dir(folder.parent)
    return aside

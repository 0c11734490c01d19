"""The trainer's checkpoints: ``TrainState`` and ``RunCheckpoints`` (prepare, resume, save, rotate).

A checkpoint of step N is ``<run>/checkpoints/step_000000N/`` (``avmae.run_folder``): accelerate's
state (optimizer, RNG, scaler), ``model.safetensors`` (``avmae.save_checkpoint``: the exported
model with its name, factory params and run config in the metadata), ``config.yaml`` and
``trainer_state.json``. It is written under a temporary name and renamed when complete, so a crash
never leaves a half checkpoint that resume would pick; ``checkpoint.keep_last`` keeps the newest.

Resume reads the newest complete checkpoint: its pickled states are first read with
``weights_only=True`` (a file holding anything else, code, is refused), then accelerate loads them.
Reproducibility: the data order of an epoch depends only on (seed, epoch), per-item randomness on
(seed, epoch, index), and model randomness on the torch RNG that accelerate stores per process, so a
resumed run ends with the same weights as the run that was never stopped (bit-identical on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch.nn as nn

import avmae

from ..checkpoint import save_checkpoint
from ..config import Config, ConfigError, diff, load_config, save_config, to_dict
from ..run_folder import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    RUN_INFO_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    check_pickled_states,
    checkpoint_dir,
    find_latest_checkpoint,
    list_checkpoints,
)
from .plan import RunPlan

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


class RunCheckpoints:
    """Checkpoints of one run folder, for one ``Accelerator``."""

    def __init__(self, cfg: Config, output_dir: Path, accelerator) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.acc = accelerator

    def prepare(self) -> None:
        """Create the run folder (a folder holding checkpoints needs ``resume``), drop the temporary
        folders of an interrupted save, write ``config.yaml``."""
        acc = self.acc
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

    def write_run_info(self, plan: RunPlan) -> None:
        if self.acc.is_main_process:
            info = {"plan": dataclasses.asdict(plan), "avmae_version": avmae.__version__, "torch_version": __import__("torch").__version__}
            (self.output_dir / RUN_INFO_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")

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
        ckpt = find_latest_checkpoint(self.output_dir)
        if ckpt is None:
            _logger.info("resume: no checkpoint in %s yet, starting from scratch", self.output_dir)
            return state
        check_pickled_states(ckpt)
        rng_file = ckpt / f"random_states_{self.acc.process_index}.pkl"
        if not rng_file.is_file():
            _logger.warning("%s lacks %s: the random streams restart, so the continuation is not bit-exact", ckpt, rng_file.name)
        self.acc.load_state(str(ckpt))
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

    # ------------------------------------------------------------------------ save
    def save(self, state: TrainState) -> Path:
        """Checkpoint of ``state.step``: temp folder, complete, then renamed; old ones rotated."""
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

"""The checkpoint policy of a training run, beside the ``RunFolder`` that stores the files: when a checkpoint is
written, that nothing unsound is ever saved, what happens when the loss diverges, where a run starts and how it
resumes.

- **When**: at every epoch end, every ``checkpoint_every`` optimiser steps, and when a SIGTERM/SIGINT asks the run
  to stop (after the step in progress).
- **Never save an unsound state**: non-finite or exploded weights or EMA, or a non-finite optimizer state, stop the
  run naming the cause and the last good checkpoint (``check_sound``).
- **Divergence**: a checkpoint counts as verified once the next step computed a finite loss from its weights; when
  the loss becomes non-finite the unverified newest checkpoint is set aside (``RunFolder.set_aside``) and the run
  stops naming the last good one.
- **Resume** is exact: the checkpoint holds every RNG state, the loader's position is a function of (seed, epoch,
  batch), and the metrics logged after the checkpoint are dropped (``resume``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from ..util.devices import DistInfo
from ..util.errors import CheckpointError, ConfigError, NonFiniteLossError, OutputError
from ..util.integrity import describe, nonfinite, unsound
from .deep_training import DeepTraining
from .run_folder import RunFolder
from .runtime import agree
from .state import TrainState, get_rng_state, set_rng_state

__all__ = ["POSITION_KEYS", "Checkpointing", "start_point"]

# Settings that decide which images each step sees: changing them on resume continues, but not exactly.
POSITION_KEYS = ("data", "data_options", "batch_size", "grad_accum_steps", "seed", "augment", "img_size")
# Settings that may change on resume without comment.
_FREE_KEYS = ("resume", "output", "workers", "progress")


def start_point(folder: RunFolder, resume: str | None, dist: DistInfo) -> str | None:
    """Rank 0 decides where the run starts (a checkpoint, None for a fresh start, or that it must not:
    ``RunFolder.start``) and tells every process."""
    decision: list[Any] = [None, None]  # [checkpoint path, error]
    if dist.main:
        try:
            start = folder.start(resume)
            decision[0] = str(start) if start else None
        except ConfigError as err:
            decision[1] = str(err)
    if dist.enabled:
        tdist.broadcast_object_list(decision, src=0)
    if decision[1]:
        raise ConfigError(decision[1])
    return decision[0]


@dataclass
class Checkpointing:
    """The policy of one run (see the module docstring). ``meta``: what every checkpoint records besides the
    state (``config``, ``class_names``, ``arch``, ``preprocess``); ``every``: also checkpoint every N steps (0: at
    epoch ends only); ``ema_decay``: named when the EMA diverges."""

    folder: RunFolder
    dist: DistInfo
    device: torch.device
    log: Callable[[str], None]
    meta: dict[str, Any]
    keep_last: int
    every: int = 0
    ema_decay: float = 0.0

    # ---- writing -----------------------------------------------------------------------------------------------
    def save(self, state: TrainState, epoch: int, batch: int, epoch_done: bool = False) -> Path | None:
        """Checkpoint after ``batch`` micro-batches of ``epoch`` (rank 0 writes; every rank gives its RNG state);
        ``epoch_done``: the epoch's evaluation is included (a resume starts the next epoch, else it evaluates
        first). An unsound state is never written (``check_sound``); a failed write (disk full) stops training
        naming the checkpoint to continue from."""
        rng = get_rng_state()
        rngs = [rng]
        if self.dist.enabled:
            rngs = [None] * self.dist.world_size
            tdist.all_gather_object(rngs, rng)
        if not self.dist.main:
            return None
        ckpt = state.to_checkpoint(epoch, batch, rngs, state.elapsed(), epoch_done=epoch_done, **self.meta)
        self.check_sound(state, f"by step {state.step}", ckpt)
        try:
            state.last_checkpoint = self.folder.save_checkpoint(ckpt, state.step, self.keep_last,
                                                                protect=state.good_checkpoint)
        except OutputError as err:
            last = state.good_checkpoint or state.last_checkpoint
            how = (f"continue from {Path(last).name} with --resume auto" if last
                   else "no checkpoint was written yet: start again with another --output (or after deleting this "
                        "one)")
            raise OutputError(f"{err}; training stopped at step {state.step}: {how}") from err
        return state.last_checkpoint

    def after_step(self, state: TrainState, epoch: int, batch: int, stop: bool) -> bool:
        """Checkpoint when a stop was asked for (then returns True: the loop ends) or ``every`` steps."""
        if stop or (self.every and state.step % self.every == 0):
            self.save(state, epoch, batch)
        return stop

    def check_sound(self, state: TrainState, when: str, ckpt: dict[str, Any] | None = None) -> None:
        """NonFiniteLossError naming what became unusable (the weights, the EMA, whose decay is then the likely
        cause, or the optimizer state) and the last good checkpoint."""
        model_sd = ckpt["model"] if ckpt else state.model.state_dict()
        ema_sd = (ckpt.get("model_ema") if ckpt else state.ema.module.state_dict() if state.ema is not None else None)
        good = f"last good checkpoint: {state.good_checkpoint or 'none'}"
        bad = unsound(("model", model_sd))
        if bad:
            raise NonFiniteLossError(
                f"the weights became unusable {when} ({describe(bad)}); not saved ({good}); lower the lr (now "
                f"{state.lr():.3g}) and continue with --resume auto, or lengthen the warm-up")
        bad = unsound(("model_ema", ema_sd or {}))
        if bad:
            raise NonFiniteLossError(
                f"the EMA weights became unusable {when} ({describe(bad)}) while the model's are fine: check "
                f"model_ema_decay ({self.ema_decay:g}); not saved ({good}); continue with --resume auto and "
                "another --model-ema-decay, or --no-model-ema")
        bad = nonfinite(("optimizer", ckpt["optimizer"]["state"] if ckpt else state.optimizer.state_dict()["state"]))
        if bad:
            raise NonFiniteLossError(
                f"the optimizer state became non-finite {when} ({describe(bad)}); not saved ({good}); lower the lr "
                f"(now {state.lr():.3g}) and continue with --resume auto")

    # ---- divergence --------------------------------------------------------------------------------------------
    def verify_step(self, state: TrainState, micro_losses: Sequence[float], stop: bool, epoch: int,
                    batch: int) -> bool:
        """Before the optimiser step: every process agrees on whether a loss was non-finite (then the run stops,
        see the module docstring) and on whether to stop after this step (returned). A finite loss verifies the
        newest checkpoint, whose weights computed it."""
        bad_loss, stop_now = agree(self.dist, self.device, not all(map(math.isfinite, micro_losses)), stop)
        if bad_loss:
            value = next((v for v in micro_losses if not math.isfinite(v)), float("nan"))
            raise NonFiniteLossError(
                f"loss is {value} at step {state.step + 1} (epoch {epoch + 1}, batch {batch}); stopped without "
                f"saving{self._set_aside_unverified(state)} (last good checkpoint: {state.good_checkpoint or 'none'})"
                f"; lower the lr (now {state.lr():.3g}) and continue with --resume auto, lengthen the warm-up or use "
                "--amp-dtype bfloat16")
        state.good_checkpoint = state.last_checkpoint
        return stop_now

    def _set_aside_unverified(self, state: TrainState) -> str:
        """The newest checkpoint, when no step has verified it, holds the weights that just gave a non-finite
        loss: rename it out of ``--resume auto``'s way; returns a clause for the error message."""
        bad = state.last_checkpoint
        if bad is None or bad == state.good_checkpoint:
            return ""
        if not self.dist.main:
            return f"; {Path(bad).name} gave it and was set aside"
        aside = self.folder.set_aside(Path(bad))
        state.last_checkpoint = state.good_checkpoint
        return f"; the weights of {Path(bad).name} gave it, so it was renamed {aside.name}"

    # ---- resuming ---------------------------------------------------------------------------------------
    def resume(self, state: TrainState, path: Path, micro_per_epoch: int, deep: DeepTraining) -> None:
        """Restore a checkpoint into ``state`` (exactly: RNG states too), and drop metrics logged after it."""
        from ..model.checkpoint_files import read_training_checkpoint

        ckpt = read_training_checkpoint(path)
        arch = self.meta["arch"]
        if ckpt.get("arch") != arch:
            raise CheckpointError(f"{path} was trained as {ckpt.get('arch')}, not {arch}; resume with the same "
                                  "model settings or start a new run with --pretrained")
        state.restore(ckpt, micro_per_epoch)
        deep.set(float(ckpt["act_learn"]))  # exactly the slope in effect when it was saved
        state.last_checkpoint = Path(path)
        rngs = ckpt.get("rng") or []
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:
            self.log(f"the checkpoint holds RNG states for {len(rngs)} processes, this run has "
                     f"{self.dist.world_size}: continuing with fresh random streams (not bit-exact)")
        self._report_changes(ckpt["config"], state.step)
        if self.dist.main:
            self.folder.truncate_metrics(state.step, epoch_done=bool(ckpt.get("epoch_done", True)))
            if ckpt.get("epoch_done") and state.best_epoch == int(ckpt["epoch"]) + 1:
                self.folder.mark_best(Path(path))  # a stop between this epoch-end checkpoint and its best.pth link
        self.log(f"resumed from {path}: epoch {state.start_epoch}, batch {state.start_batch}, step {state.step}")

    def _report_changes(self, saved: dict[str, Any], step: int) -> None:
        """A line naming the settings that differ from the checkpoint's (in effect from the next step)."""
        now = self.meta["config"]
        changed = {k: (v, now.get(k)) for k, v in saved.items() if k not in _FREE_KEYS and now.get(k) != v}
        if changed:
            moved = [k for k in changed if k in POSITION_KEYS]
            self.log(f"resuming with changed settings, in effect from step {step + 1}: "
                     + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
                     + (f" (with another {', '.join(moved)} the run does not continue exactly as it would have)"
                        if moved else ""))

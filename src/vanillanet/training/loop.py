"""The training loop: ``train_one_epoch`` (micro-batches -> steps) and ``end_epoch`` (validate, log, checkpoint,
keep the best). Each receives its parts explicitly (the ``TrainState``, the ``StepParts``, the data, the act_learn
schedule, the checkpoint policy and the ``Reporter``), never the whole config; the step itself is ``step.py``'s,
the checkpoint policy ``checkpointing.py``'s, the counting ``evaluation.py``'s.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..data.transforms import Preprocess
from ..util.devices import DistInfo
from .checkpointing import Checkpointing
from .deep_training import DeepTraining
from .evaluation import validate_model
from .run_folder import RunFolder
from .runtime import StopSignal
from .state import TrainState
from .step import StepParts, forward_backward, optimizer_step, to_device

__all__ = ["Data", "EpochProgress", "Log", "Reporter", "end_epoch", "train_one_epoch"]


@dataclass
class Data:
    """The loaders and what they imply for the rest of the run."""

    train_loader: Any
    val_loader: Any
    classes: list[str]
    preprocess: Preprocess
    micro_per_epoch: int  # micro-batches per epoch (a multiple of the accumulation steps)
    steps_per_epoch: int  # optimiser steps per epoch


class Log:
    """Lines for the main process: through the progress bar while one is shown, else printed."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)


class Reporter:
    """What a run tells: log lines (``log``), the progress bar, rows of ``metrics.jsonl`` (the main process writes
    them; step rows every ``log_every`` steps) and the ``on_step`` callback after every optimiser step."""

    def __init__(self, log: Log, folder: RunFolder, dist: DistInfo, *, eff_batch: int, epochs: int,
                 progress: bool = False, log_every: int = 1, on_step: Callable[[dict[str, Any]], None] | None = None):
        self.log, self.folder, self.dist = log, folder, dist
        self.eff_batch, self.epochs, self.progress, self.log_every, self.on_step = (eff_batch, epochs, progress,
                                                                                    log_every, on_step)

    def metrics(self, row: dict[str, Any]) -> None:
        if self.dist.main:
            self.folder.append_metrics(row)

    @contextmanager
    def epoch(self, epoch: int, steps: int, done: int) -> Iterator[EpochProgress]:
        """The progress of epoch ``epoch`` (of ``steps`` steps, ``done`` of them before a resume), with its bar."""
        from tqdm import tqdm

        show = self.dist.main and self.progress
        self.log.bar = tqdm(total=steps, initial=done, leave=False, dynamic_ncols=True,
                            desc=f"epoch {epoch + 1}/{self.epochs}", disable=None if show else True)
        try:
            yield EpochProgress(self, self.log.bar)
        finally:
            self.log.bar.close()
            self.log.bar = None


class EpochProgress:
    """Counts the steps of one epoch (the loss into ``state.epoch_loss``, img/s) and reports each one."""

    def __init__(self, report: Reporter, bar: Any):
        self.report, self.bar = report, bar
        self.steps, self.t_start = 0, time.perf_counter()

    def img_per_s(self) -> float:
        return self.steps * self.report.eff_batch / max(time.perf_counter() - self.t_start, 1e-9)

    def step(self, state: TrainState, loss: float, epoch: float, act_learn: float) -> None:
        """After optimiser step ``state.step`` with mean loss ``loss``, at (fractional) ``epoch``."""
        self.steps += 1
        state.epoch_loss = (state.epoch_loss[0] + loss, state.epoch_loss[1] + 1)
        ips = self.img_per_s()
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{state.lr():.2e}", act=f"{act_learn:.3f}", img_s=f"{ips:.0f}",
                             refresh=False)
        self.bar.update()
        info = dict(step=state.step, epoch=epoch, loss=loss, lr=state.lr(), act_learn=act_learn, img_per_s=ips)
        if state.ema is not None:
            info["ema_act_learn"] = float(getattr(state.ema.module, "act_learn", 1.0))
        if state.step % self.report.log_every == 0:
            self.report.metrics({"type": "step", **info})
        if self.report.on_step is not None:
            self.report.on_step(info)

    def finish(self, state: TrainState) -> dict[str, float]:
        """The epoch's mean loss (the part before a resume included) and img/s; the loss sum starts again."""
        loss_sum, seen = state.epoch_loss
        state.epoch_loss = (0.0, 0)
        return dict(train_loss=loss_sum / max(seen, 1), img_per_s=self.img_per_s())


def train_one_epoch(state: TrainState, parts: StepParts, data: Data, schedule: DeepTraining,
                    checkpoints: Checkpointing, report: Reporter, epoch: int, start_batch: int,
                    stop: StopSignal) -> dict[str, float] | None:
    """Run epoch ``epoch`` from micro-batch ``start_batch`` of ``data.train_loader`` (``data.micro_per_epoch``
    micro-batches, ``parts.accum`` to a step); the epoch's mean loss and img/s, or None when a signal stopped it
    (after a checkpoint)."""
    from ..data.loaders import set_epoch

    set_epoch(data.train_loader, epoch, start_batch)
    schedule.start_epoch(epoch)
    parts.train()
    params = [p for p in state.model.parameters() if p.requires_grad]
    micro_losses: list[float] = []
    with report.epoch(epoch, data.steps_per_epoch, start_batch // parts.accum) as progress:
        for i, (images, targets) in enumerate(data.train_loader, start=start_batch):
            if i >= data.micro_per_epoch:
                break
            schedule.before_step(state.step)
            last_micro = (i + 1) % parts.accum == 0
            micro_losses.append(forward_backward(parts, to_device(images, targets, parts.prep), sync=last_micro))
            if not last_micro:
                continue
            stop_now = checkpoints.verify_step(state, micro_losses, stop.requested, epoch, i + 1)
            optimizer_step(state, parts, params)
            schedule.sync_ema()
            state.scheduler.step_update(state.step)
            progress.step(state, sum(micro_losses) / parts.accum, epoch + (i + 1) / data.micro_per_epoch,
                          schedule.value)
            micro_losses.clear()
            if checkpoints.after_step(state, epoch, i + 1, stop_now):
                return None
        return progress.finish(state)


def end_epoch(state: TrainState, parts: StepParts, data: Data, schedule: DeepTraining, checkpoints: Checkpointing,
              report: Reporter, epoch: int, stats: dict[str, float]) -> None:
    """Average BN statistics across processes, evaluate, log, checkpoint and keep the best."""
    from timm.utils import distribute_bn

    dist = report.dist
    if dist.enabled:
        distribute_bn(state.model, dist.world_size, reduce=True)
        if state.ema is not None:
            distribute_bn(state.ema.module, dist.world_size, reduce=True)
    ev = validate_model(state.eval_model, data.val_loader, parts, dist)
    improved = ev["top1"] > state.best_top1
    if improved:
        state.best_top1, state.best_epoch = ev["top1"], epoch + 1
    row = dict(type="epoch", epoch=epoch + 1, step=state.step, **stats, val_loss=ev["loss"], top1=ev["top1"],
               top5=ev["top5"], lr=state.lr(), act_learn=schedule.value, ema=state.ema is not None,
               seconds=state.elapsed())
    report.metrics(row)
    report.log(f"epoch {epoch + 1}/{report.epochs}  loss {row['train_loss']:.4f}  val top-1 {100 * ev['top1']:.2f}%"
               f"{' (EMA)' if state.ema is not None else ''}  top-5 {100 * ev['top5']:.2f}%  lr {row['lr']:.3g}  "
               f"{'act_learn ' + format(row['act_learn'], '.3f') + '  ' if schedule.enabled else ''}"
               f"{row['img_per_s']:.0f} img/s  {row['seconds']:.0f} s")
    path = checkpoints.save(state, epoch, data.micro_per_epoch, epoch_done=True)
    if improved and path is not None:
        checkpoints.folder.mark_best(path)

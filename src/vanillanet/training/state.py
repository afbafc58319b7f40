"""What a training run carries across an interruption: the ``TrainState`` (model, EMA, optimizer, scheduler,
scaler, step, best) and its checkpoint dict, and RNG states in a form that ``torch.load(weights_only=True)``
accepts. (The checks that nothing unsound is saved and the weight hash live in ``integrity.py``.)"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..util.errors import CheckpointError, first_line

__all__ = ["TrainState", "get_rng_state", "set_rng_state"]


@dataclass
class TrainState:
    """Everything that changes while training. ``start_epoch``/``start_batch``: where the loop (re)starts."""

    model: nn.Module
    ema: Any | None  # timm's ModelEmaV3 (its ``.module`` is the averaged model)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    step: int = 0
    start_epoch: int = 0
    start_batch: int = 0
    best_top1: float = -1.0
    best_epoch: int = -1
    seconds: float = 0.0  # training time before this process started (resumed runs)
    epoch_loss: tuple[float, int] = (0.0, 0)  # loss sum and steps of the current epoch so far
    last_checkpoint: Any = None  # Path of the newest checkpoint written or resumed from
    good_checkpoint: Any = None  # the newest verified one: the next step computed a finite loss from its weights
    started: float = field(default_factory=time.perf_counter, repr=False)  # when this process began to train

    @property
    def eval_model(self) -> nn.Module:
        """The model that is evaluated, exported and kept as best: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def elapsed(self) -> float:
        """Seconds of training in all: before this process (a resumed run) and since it began."""
        return self.seconds + time.perf_counter() - self.started

    def lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups)

    def to_checkpoint(self, epoch: int, batch: int, rngs: list[dict[str, Any]], seconds: float,
                      **extra: Any) -> dict[str, Any]:
        """The checkpoint dict after ``batch`` micro-batches of ``epoch`` and ``seconds`` of training in all (the
        original's keys plus ours)."""
        ckpt = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "batch": batch,
            "step": self.step,
            "act_learn": float(getattr(self.model, "act_learn", 1.0)),
            "rng": rngs,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "seconds": seconds,
            "epoch_loss": list(self.epoch_loss),
            **extra,
        }
        if self.ema is not None:
            ckpt["model_ema"] = self.ema.module.state_dict()
        return ckpt

    def restore(self, ckpt: Mapping[str, Any], micro_per_epoch: int) -> None:
        """Load a checkpoint written by ``to_checkpoint``; the loop restarts after its last micro-batch.

        The optimizer's moments come from the file, its settings (lr, weight decay, betas, layer-decay scales) from
        this run, and the lr schedule is a pure function of this run's settings and the step, so a resume with a
        changed ``--lr`` or schedule uses the new values (an unchanged run resumes bit-exactly)."""
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt.get("model_ema", ckpt["model"]))
        settings = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"the optimizer state of the checkpoint does not fit this run's optimizer "
                                  f"({first_line(err, 120)}); resume with the same --opt and "
                                  "--layer-decay") from None
        for group, own in zip(self.optimizer.param_groups, settings):
            group.update(own)
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.scheduler.step_update(self.step)
        epoch, batch = int(ckpt["epoch"]), int(ckpt["batch"])
        if batch >= micro_per_epoch and ckpt.get("epoch_done", True):  # else: evaluate the finished epoch first
            epoch, batch = epoch + 1, 0
        self.start_epoch, self.start_batch = epoch, batch
        self.best_top1, self.best_epoch = float(ckpt["best_top1"]), int(ckpt["best_epoch"])
        self.seconds = float(ckpt.get("seconds", 0.0))
        loss_sum, steps = ckpt.get("epoch_loss", (0.0, 0))
        self.epoch_loss = (float(loss_sum), int(steps)) if batch else (0.0, 0)


def get_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), python and numpy RNG states as tensors and plain lists."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``get_rng_state``."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))

"""Deep training: the act_learn schedule, when it is applied, and the EMA copy that must follow the live model.

Every layer of the train form is two 1x1 convs with a leaky-ReLU of slope ``act_learn`` between them. Training
starts at 0 (a ReLU: the network is twice as deep) and anneals to exactly 1 (the identity: the two convs merge) by
``decay_epochs``. A schedule is a function t -> act_learn on t in [0, 1) (the fraction of the horizon done);
adding one is one function in ``SCHEDULES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..util.errors import ConfigError

__all__ = ["SCHEDULES", "DeepTraining", "act_learn_schedule"]


def linear(t: float) -> float:
    """The original rule: act_learn grows in proportion to the epochs done."""
    return t


def cosine(t: float) -> float:
    """Slow at both ends: (1 - cos(pi t)) / 2."""
    return (1.0 - math.cos(math.pi * t)) / 2.0


SCHEDULES: dict[str, Callable[[float], float]] = {"linear": linear, "cosine": cosine}
CADENCES = ("epoch", "step")


def act_learn_schedule(epoch: float, decay_epochs: float, mode: str = "linear") -> float:
    """act_learn at (possibly fractional) ``epoch``: 0 at the start, exactly 1.0 from ``decay_epochs`` on.

    For a per-iteration schedule pass ``epoch = step / steps_per_epoch``.
    """
    schedule = SCHEDULES.get(mode)
    if schedule is None:
        raise ConfigError(f"act_learn schedule must be one of {', '.join(SCHEDULES)}, got {mode!r}")
    if decay_epochs <= 0 or epoch >= decay_epochs:
        return 1.0
    return schedule(max(0.0, float(epoch)) / float(decay_epochs))


@dataclass
class DeepTraining:
    """Owns act_learn during a run: the schedule, its cadence (once per epoch as the original, or every step) and
    the EMA copy, which has its own slope and must always hold the live model's value.

    Models without deep training (baselines, which have no ``set_act_learn``, and ``VanillaNet(deep_training=
    False)``, whose layers are single convs from the start): every call is a no-op and ``value`` stays 1.
    """

    model: nn.Module
    ema_model: nn.Module | None
    decay_epochs: float
    mode: str = "linear"
    cadence: str = "epoch"
    steps_per_epoch: int = 1

    def __post_init__(self) -> None:
        if self.mode not in SCHEDULES:
            raise ConfigError(f"act_learn_mode must be one of {', '.join(SCHEDULES)}, got {self.mode!r}")
        if self.cadence not in CADENCES:
            raise ConfigError(f"act_learn_update must be one of {', '.join(CADENCES)}, got {self.cadence!r}")

    @property
    def enabled(self) -> bool:
        return (hasattr(self.model, "set_act_learn") and not getattr(self.model, "deploy", False)
                and getattr(self.model, "deep_training", True))

    @property
    def value(self) -> float:
        return float(getattr(self.model, "act_learn", 1.0))

    def value_at(self, epoch: float) -> float:
        return act_learn_schedule(epoch, self.decay_epochs, self.mode)

    def set(self, value: float) -> None:
        if not self.enabled:
            return
        self.model.set_act_learn(value)
        self.sync_ema()

    def sync_ema(self) -> None:
        """Copy the live value to the EMA model (call after every EMA update: the update does not touch it)."""
        if self.enabled and self.ema_model is not None:
            self.ema_model.set_act_learn(self.value)

    def start(self, epoch: int) -> None:
        """Where a run (or a resumed run) begins."""
        self.set(self.value_at(epoch))

    def start_epoch(self, epoch: int) -> None:
        if self.cadence == "epoch":
            self.set(self.value_at(epoch))

    def before_step(self, step: int) -> None:
        """Before optimiser step ``step + 1`` (``step`` steps done)."""
        if self.cadence == "step":
            self.set(self.value_at(step / self.steps_per_epoch))

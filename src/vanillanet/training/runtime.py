"""The processes a training run lives in (set up by ``util.devices``): their agreement on a branch, and the
SIGTERM/SIGINT handling that turns a signal into "finish the step, save, stop"."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
import torch.distributed as tdist

from ..util.devices import DistInfo

__all__ = ["StopSignal", "agree", "ignore_stop_signals"]


def agree(dist: DistInfo, device: torch.device, *flags: bool) -> tuple[bool, ...]:
    """The flags OR-ed across the processes of the job, so that every process takes the same branch (stops at the
    same step); one process: the flags as given."""
    if not dist.enabled:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return tuple(bool(v) for v in t)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGINT/SIGTERM to the main process, which finishes the step and
    checkpoints; they exit when it does."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class StopSignal:
    """Catch SIGTERM and SIGINT while training: the first one asks the loop to checkpoint and stop after the
    current step; a second SIGINT interrupts at once (KeyboardInterrupt). Handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signum)

    def request(self, signum: int) -> None:
        """Ask for a stop as the signal ``signum`` does."""
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + signal number, the shell convention: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + int(self.signum or 0)

"""The processes a training run lives in: the process group under torchrun, and the SIGTERM/SIGINT handling that
turns a signal into "finish the step, save, stop"."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from ..util.errors import ConfigError

__all__ = ["DistInfo", "StopSignal", "agree", "ignore_stop_signals", "setup_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly one-process) job."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """DDP when launched by torchrun with more than one process (env:// rendezvous), else a plain process."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is cuda but no CUDA device is visible; use --device cpu or auto")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), torch.device("cuda" if use_cuda else "cpu")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    owns = not tdist.is_initialized()
    if owns:
        tdist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(world, rank, local, owns), torch.device("cuda", local) if use_cuda else torch.device("cpu")


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

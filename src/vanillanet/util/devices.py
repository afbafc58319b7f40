"""Where a command runs: the device (``choose_device``), the process group under torchrun (``process_group``,
``DistInfo``), the half-precision dtype of a device (``half_dtype``) and the CPU threads (``num_threads``). Every
command and the training run choose them here, so ``--device`` and ``--threads`` mean the same everywhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from .errors import ConfigError

__all__ = ["DEVICES", "DistInfo", "choose_device", "end_distributed", "half_dtype", "num_threads", "process_group",
           "setup_distributed"]

DEVICES = ("auto", "cpu", "cuda")  # what --device accepts; auto = cuda when one is visible


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly one-process) job; ``owns_group``: this process started the group and
    ends it."""

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


def choose_device(name: str | None = "auto", local_rank: int | None = None) -> torch.device:
    """The device ``--device`` names (None or "auto": CUDA when visible, else the CPU); on CUDA the current GPU, or
    the ``local_rank``-th one (a process of a torchrun job). ConfigError for cuda without a visible GPU or an
    unknown name."""
    name = name or "auto"
    if name not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was given but no CUDA device is visible; use --device cpu or auto")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)


def setup_distributed(device: str | None = "auto") -> tuple[DistInfo, torch.device]:
    """The process group when launched by torchrun with more than one process (env:// rendezvous; nccl on CUDA,
    gloo on the CPU), else a plain process; with the device of this process. Pair with ``end_distributed``, or use
    ``process_group``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), choose_device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = choose_device(device, local)
    rank = int(os.environ["RANK"])
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = not tdist.is_initialized()
    if owns:
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(world, rank, local, owns), dev


def end_distributed(dist: DistInfo) -> None:
    """End the process group this process started (a group set up by the caller is left alone)."""
    if dist.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str | None = "auto") -> Iterator[tuple[DistInfo, torch.device]]:
    """``setup_distributed`` for the duration of the block."""
    dist, dev = setup_distributed(device)
    try:
        yield dist, dev
    finally:
        end_distributed(dist)


def half_dtype(device: torch.device) -> torch.dtype:
    """The half precision of ``--amp`` on ``device``: float16 on CUDA, bfloat16 on the CPU (which has no fast fp16
    autocast)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op threads set to ``threads`` (None: unchanged) for the block, restored after; yields the
    number in effect."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)

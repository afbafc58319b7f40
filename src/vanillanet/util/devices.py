"""Where a command runs: the device (``choose_device``), the process group under torchrun (``process_group``,
``DistInfo``), the half-precision dtype of a device (``half_dtype``) and the CPU threads (``num_threads``). Every
command and the training run choose them here, so ``--device`` and ``--threads`` mean the same everywhere.
``kept_settings`` leaves torch's process-wide settings as it found them across a library call (``fast_inference``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from .errors import ConfigError

__all__ = ["DEVICES", "DistInfo", "as_device", "choose_device", "end_distributed", "global_settings", "half_dtype",
           "kept_settings", "num_threads", "process_group", "setup_distributed"]

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


def as_device(value: object, what: str = "device") -> torch.device:
    """``value`` (a str or torch.device) as a device this package runs on, the CUDA index filled in: TypeError for
    another kind of value, ConfigError (a ValueError) naming ``what`` and the accepted values for an unknown or
    unsupported device (``meta``, ``mps``...) or a GPU that is not visible."""
    if not isinstance(value, (str, torch.device)):
        raise TypeError(f"{what} must be a str or torch.device ('cpu', 'cuda' or 'cuda:N'), got "
                        f"{type(value).__name__} {value!r:.60}")
    try:
        dev = torch.device(value)
    except RuntimeError:
        raise ConfigError(f"{what} must be 'cpu', 'cuda' or 'cuda:N', got {value!r:.60}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what} must be 'cpu', 'cuda' or 'cuda:N' (the devices this package runs on), got "
                          f"{str(dev)!r}")
    if dev.type == "cpu":
        return torch.device("cpu")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not visible:
        raise ConfigError(f"{what} {str(dev)!r} was given but no CUDA device is visible; use 'cpu'")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= visible:
        raise ConfigError(f"{what} {str(dev)!r} names GPU {index} but {visible} is/are visible; use 'cuda:0' to "
                          f"'cuda:{visible - 1}'")
    return torch.device("cuda", index)


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
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be None (unchanged) or an integer of at least 1, got {threads!r}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# torch's process-wide settings a library call may touch: (name, getter, setter)
_SETTINGS = (
    ("cudnn.benchmark", lambda: torch.backends.cudnn.benchmark,
     lambda v: setattr(torch.backends.cudnn, "benchmark", v)),
    ("cudnn.deterministic", lambda: torch.backends.cudnn.deterministic,
     lambda v: setattr(torch.backends.cudnn, "deterministic", v)),
    ("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32,
     lambda v: setattr(torch.backends.cudnn, "allow_tf32", v)),
    ("cuda.matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32,
     lambda v: setattr(torch.backends.cuda.matmul, "allow_tf32", v)),
    ("float32_matmul_precision", torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    ("mkldnn.enabled", lambda: torch.backends.mkldnn.enabled, lambda v: setattr(torch.backends.mkldnn, "enabled", v)),
    ("num_threads", torch.get_num_threads, torch.set_num_threads),
    ("default_dtype", torch.get_default_dtype, torch.set_default_dtype),
    ("deterministic_algorithms", torch.are_deterministic_algorithms_enabled, torch.use_deterministic_algorithms),
    ("grad_enabled", torch.is_grad_enabled, torch.set_grad_enabled),
)


def global_settings() -> dict[str, object]:
    """torch's process-wide settings that a library call could leave changed (cuDNN's autotuner and TF32 flags,
    the fp32 matmul precision, oneDNN, the intra-op threads, the default dtype, deterministic algorithms, grad mode)
    and the CPU random generator's state, by name."""
    return {**{name: get() for name, get, _ in _SETTINGS}, "cpu_rng_state": torch.random.get_rng_state()}


@contextlib.contextmanager
def kept_settings() -> Iterator[None]:
    """Every setting of ``global_settings`` restored after the block to what it was before (changed ones only)."""
    before = global_settings()
    try:
        yield
    finally:
        for name, get, put in _SETTINGS:
            if get() != before[name]:
                put(before[name])
        torch.random.set_rng_state(before["cpu_rng_state"])

"""What a training run must carry across an interruption and across processes: atomic checkpoint files, RNG
states in a form that ``torch.load(weights_only=True)`` accepts, the SIGTERM/SIGINT handler that turns a signal into
"save and stop", the process-group set-up under torchrun, and a hash that proves two processes hold the same weights."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from .errors import CheckpointError, ConfigError

__all__ = ["DistInfo", "StopSignal", "find_latest", "get_rng_state", "ignore_stop_signals", "link_or_copy",
           "load_train_checkpoint", "prune_checkpoints", "set_rng_state", "setup_distributed",
           "state_hash"]

CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pth$")


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` (a hard link where possible), replacing it atomically."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def checkpoint_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"checkpoint-{step:08d}.pth"


def _step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for p in Path(folder).glob("checkpoint-*.pth"):
        m = CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest(folder: Path) -> Path | None:
    """The checkpoint with the highest step in ``folder`` (for ``--resume auto``), or None."""
    found = _step_checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent step checkpoints (best.pth is not among them)."""
    for _, path in _step_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)


def load_train_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint written by ``train`` (safe loading), or CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a file written by `vanillanet train` or "
                              "--resume auto")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (any unpickling failure means: not our file)
        raise CheckpointError(f"cannot load {path} as a training checkpoint ({type(err).__name__}); resume from a "
                              "file written by `vanillanet train`") from None
    missing = [k for k in ("model", "optimizer", "step", "epoch", "config") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} has no {', '.join(missing)}: it holds weights, not a training state; use "
                              "--pretrained to start from it")
    return ckpt


# ---- RNG ------------------------------------------------------------------------------------------------------


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


# ---- processes ------------------------------------------------------------------------------------------------


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


def state_hash(*state_dicts: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over state_dicts (every name, shape and byte): equal hashes = bit-identical weights and buffers."""
    h = hashlib.sha256()
    for sd in state_dicts:
        for name, t in sd.items():
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGINT/SIGTERM to the main process, which finishes the step and
    checkpoints; they exit when it does."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


# ---- signals --------------------------------------------------------------------------------------------------


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
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + signal number, the shell convention: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + int(self.signum or 0)

"""The run folder of ``vanillanet train``: one object owning everything a run writes there.

Layout of ``OUT/``: ``checkpoint-<step>.pth`` (the last ``keep_last``), ``best.pth``, ``metrics.jsonl``,
``config.yaml``, ``summary.json``, ``training.png``, ``model_deploy.safetensors`` and, while a run is going,
``.lock``. Policies (each protects work a user already has):

- **One run at a time**: ``lock()`` takes an exclusive ``flock`` on ``OUT/.lock`` holding the owner's PID, host and
  start time; a second run into the same folder (or a ``--resume auto`` while the first is going) stops with a
  one-line error naming the owner. The kernel releases the lock when the owner dies, so a crash never leaves the
  folder locked: forked children (data-loading workers) close their copy of it at once, so none outlives a
  killed owner holding it. ``.lock`` is opened without following links (a symbolic link planted there is refused,
  never written through) and must be a regular file.
- **Never overwrite a run**: starting afresh is refused when the folder holds any output of an earlier run
  (checkpoints, metrics, best.pth, summary.json, deploy weights), not only when it holds checkpoints.
- **Stale temporaries** of interrupted writes (``.NAME.<pid>.<random>.tmp``) are removed when a run starts.
- **Resume from the newest intact checkpoint**: a truncated, unreadable or altered (SHA-256 mismatch) newest
  checkpoint is skipped, with a line saying so, in favour of the previous one.
- **Keep the last verified checkpoint**: a checkpoint counts as verified once the next training step computed a
  finite loss from its weights. Rotation (``keep_last``) never deletes the newest verified checkpoint, and when the
  loss becomes non-finite the unverified checkpoint whose weights produced it is renamed ``diverged-<step>.pth``
  (kept for inspection, never resumed from), so ``--resume auto`` continues from a checkpoint known to be good.
- **metrics.jsonl** tolerates a partial last line (what a crash during an append leaves): it is dropped on resume.
  Rows are standard JSON (non-finite numbers written as null).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ..model.checkpoint_files import read_training_checkpoint, with_digest
from ..util.errors import CheckpointError, ConfigError
from ..util.fileio import (
    append_line,
    json_safe,
    link_or_copy,
    remove_stale_temporaries,
    save_atomic,
    write_json,
    write_text,
)
from ..util.safe_open import open_output

__all__ = ["RunFolder"]

# Descriptors of the run-folder locks this process holds. A forked child (a DataLoader worker) closes its copies at
# once: a flock belongs to the open file, so a worker keeping a copy would keep the folder locked after its parent
# died (kill -9), until the worker noticed. Closing a copy leaves the parent's lock in place (no LOCK_UN).
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)

CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pth$")
OUTPUTS = ("metrics.jsonl", "best.pth", "summary.json", "model_deploy.safetensors", "training.png")


class RunFolder:
    """``OUT/`` of one training run; see the module docstring. Only the main process of a DDP job writes."""

    def __init__(self, path: str | Path, log: Callable[[str], None] = print):
        self.path = Path(path)
        self.log = log
        self._lock_fd: int | None = None

    # ---- the lock ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder exclusively for the duration of the block (see the module docstring)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"--output {self.path} is a file, not a folder; choose a folder path") from None
        except OSError as err:
            raise ConfigError(f"cannot create --output {self.path} ({err.strerror}); choose a writable "
                              "folder") from None
        lock = self.path / ".lock"
        try:
            fd = open_output(lock, os.O_RDWR | os.O_CREAT, "the lock file", ConfigError)
        except OSError as err:
            raise ConfigError(f"cannot write to --output {self.path} ({err.strerror}); choose a writable "
                              "folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 512).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise ConfigError(f"{self.path} is in use by another training run ({owner}); wait for it to finish or "
                              "choose another --output") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
                     .encode())
        self._lock_fd = fd
        _HELD_LOCKS.add(fd)
        try:
            yield
        finally:
            self._lock_fd = None
            _HELD_LOCKS.discard(fd)
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(fd)

    # ---- starting ---------------------------------------------------------------------------------------------
    def start(self, resume: str | None) -> Path | None:
        """Clean up, then decide where the run starts: the checkpoint to resume from, or None for a fresh start
        (refused when the folder holds an earlier run's outputs)."""
        for tmp in remove_stale_temporaries(self.path, owned=True):  # called under the lock
            self.log(f"removed {tmp.name}, left by an interrupted write")
        latest = self.checkpoints()
        if resume == "auto":
            found = self.newest_intact()
            if found is not None:
                return found
            if self._earlier_outputs():
                raise ConfigError(f"--resume auto: {self.path} holds a finished or damaged run without a checkpoint to "
                                  f"resume ({', '.join(self._earlier_outputs())}); choose another --output")
            self.log(f"--resume auto: no checkpoint in {self.path}, starting from scratch")
            return None
        if resume:
            return Path(resume)
        if latest:
            raise ConfigError(f"{self.path} already holds checkpoints ({latest[-1][1].name}); continue that run with "
                              "--resume auto or pick another --output")
        if self._earlier_outputs():
            raise ConfigError(f"{self.path} already holds a run ({', '.join(self._earlier_outputs())}); pick another "
                              "--output (nothing there is overwritten)")
        return None

    def _earlier_outputs(self) -> list[str]:
        found = [name for name in OUTPUTS if (self.path / name).exists()]
        found += sorted(p.name for p in self.path.glob("diverged-*.pth"))[:1]
        metrics = self.path / "metrics.jsonl"
        if "metrics.jsonl" in found and metrics.is_file() and metrics.stat().st_size == 0:
            found.remove("metrics.jsonl")  # an empty log is no run
        return found

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.path / f"checkpoint-{step:08d}.pth"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of the step checkpoints in the folder, oldest first."""
        found = []
        for p in self.path.glob("checkpoint-*.pth"):
            m = CKPT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def newest_intact(self) -> Path | None:
        """The newest checkpoint that loads as a training checkpoint; damaged newer ones are reported and skipped."""
        for _, path in reversed(self.checkpoints()):
            try:
                read_training_checkpoint(path)
            except CheckpointError as err:
                self.log(f"skipping {path.name}: {err}")
                continue
            return path
        return None

    def save_checkpoint(self, ckpt: dict[str, Any], step: int, keep: int, protect: Path | None = None) -> Path:
        """Write a checkpoint atomically with its SHA-256 digest, then delete all but the ``keep`` newest and
        ``protect`` (the newest verified checkpoint)."""
        path = save_atomic(with_digest(ckpt), self.checkpoint_path(step))
        for _, old in self.checkpoints()[:-keep]:
            if protect is None or old != Path(protect):
                old.unlink(missing_ok=True)
        return path

    def set_aside(self, path: Path) -> Path:
        """Rename a checkpoint whose weights diverged to ``diverged-<step>.pth``: kept for inspection, never resumed
        from and never rotated away."""
        target = self.path / Path(path).name.replace("checkpoint-", "diverged-", 1)
        os.replace(path, target)
        return target

    def mark_best(self, path: Path) -> None:
        link_or_copy(path, self.path / "best.pth")

    # ---- metrics, config, summary -----------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def reset_metrics(self) -> None:
        write_text(self.metrics_path, "")

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_line(self.metrics_path, json.dumps(json_safe(row), allow_nan=False))

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl; a partial (unparsable) line is skipped."""
        rows = []
        if self.metrics_path.is_file():
            for line in self.metrics_path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    if isinstance(row, dict):
                        rows.append(row)
        return rows

    def truncate_metrics(self, step: int, epoch_done: bool = True) -> list[dict[str, Any]]:
        """Keep the rows logged up to ``step`` (a resumed run logs the rest again); with ``epoch_done`` False, also
        drop an epoch row at ``step`` (the resume evaluates that epoch again); returns the dropped rows."""
        rows = self.metrics()
        kept = [r for r in rows if r.get("step", 0) < step
                or (r.get("step", 0) == step and (epoch_done or r.get("type") != "epoch"))]
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        return [r for r in rows if r.get("step", 0) > step]

    def write_config(self, flat: dict[str, Any]) -> None:
        write_text(self.path / "config.yaml", yaml.safe_dump(flat, sort_keys=False))

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return write_json(self.path / "summary.json", summary, indent=2)

"""Writing files so that nothing half-written is ever seen: every output of the package goes through here.

A file is written to a temporary name in the same folder, then moved into place with ``os.replace`` (atomic on
POSIX): readers see the old file or the new one, a crash leaves the old one, and the temporary name
(``.NAME.<pid>.<random>.tmp``) is recognisable so that stale ones can be cleaned up (``remove_stale_temporaries``).
A write that fails because the disk is full, the path is a folder or the folder is read-only raises a one-line
``OutputError`` naming the path and the cause, and leaves nothing behind; ``check_output_file`` and
``check_output_folder`` find those causes (and a wrong suffix) before a command does any work; ``refuse_inputs``
stops a command from writing its output onto one of its inputs. A special file (FIFO, device, socket) is never an
output, and a line is appended to a log only through ``O_NOFOLLOW`` (``safe_open``): a planted symbolic link is
refused, not followed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import OutputError, VanillaNetError
from .safe_open import open_output, refuse_special

__all__ = ["append_line", "check_output_file", "check_output_folder", "json_safe", "link_or_copy", "refuse_inputs",
           "remove_stale_temporaries", "save_atomic", "temporary_name", "write_atomic", "write_json", "write_text"]

_NEARLY_FULL = 1 << 20  # bytes free below which a failed write is blamed on a full disk


def temporary_name(path: Path) -> Path:
    """The temporary file ``path`` is written through: ``.NAME.<pid>.<random>.tmp`` beside it."""
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Run ``write(temporary_path)`` in the same folder, then ``os.replace`` onto ``path``: readers never see half
    a file, a failure leaves the old one, and the result gets the usual umask mode (mkstemp would give 0600)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name")
    refuse_special(path, "the output", OutputError, reading=False)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()  # the mode a plain file gets here (umask); some writers (safetensors) create files 0600
        mode = tmp.stat().st_mode & 0o777
        write(str(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except VanillaNetError:
        raise
    except Exception as err:
        reason = _write_failure(path, err)
        if reason is None:
            raise
        err.__traceback__ = None  # its frames would keep the writer's open file (and the space it took) alive
        raise OutputError(f"cannot write {path} ({reason}); nothing was written: {_fix(reason)}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def _write_failure(path: Path, err: Exception) -> str | None:
    """Why a write failed, when it was the file system (None: a bug, re-raised as it is). torch.save reports a
    full disk as a RuntimeError about stream positions, so the free space is checked as well."""
    if isinstance(err, (FileExistsError, NotADirectoryError)):
        return f"a file is in the way of the folder {path.parent}"
    if isinstance(err, OSError):
        return err.strerror or str(err)
    folder = next((p for p in (path.parent, *path.parents) if p.is_dir()), None)
    try:
        if folder is not None and shutil.disk_usage(folder).free < _NEARLY_FULL:
            return "No space left on device"
    except OSError:
        pass
    return "No space left on device" if "No space left" in str(err) else None


def _fix(reason: str) -> str:
    if "space" in reason:
        return "free some disk space (or choose another folder) and run again"
    return "choose a writable file path"


def _check_place(path: Path, flag: str, error: type[VanillaNetError] = OutputError) -> None:
    """``error`` when the folder ``path`` cannot be created or written: the nearest existing part of it is a file,
    or is not writable."""
    existing = next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), Path("."))
    if not existing.is_dir():
        raise error(f"{flag}: a file is in the way of the folder {path} ({existing} is a file); choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"{flag}: the folder {existing} is not writable; choose a writable path")


def check_output_file(path: str | Path, flag: str, suffixes: tuple[str, ...] = (), *,
                      error: type[VanillaNetError] = OutputError) -> Path:
    """``path`` as a ``Path`` once it can take the output file ``flag`` names, else OutputError, before any work: not
    a folder (nor written as one, ``out/``), not a special file, one of ``suffixes`` (lower-case, with the dot) when
    given, in a folder that exists or can be created and is writable. ``error``: the exception to raise
    (``ConfigError``, a ValueError, for an argument of the Python API)."""
    p = Path(path)
    if str(path).endswith(("/", os.sep)) or p.is_dir():
        raise error(f"{flag} {path} is a folder; give a file name")
    refuse_special(p, flag, error, reading=False)
    if suffixes and p.suffix.lower() not in suffixes:
        raise error(f"{flag} {path} must end in {' or '.join(suffixes)} (it says what the file holds); e.g. "
                    f"{p.with_suffix(suffixes[0]).name}")
    if p.exists() and not os.access(p, os.W_OK):
        raise error(f"{flag} {path} is read-only; choose a writable path")
    _check_place(p.parent, flag, error)
    return p


def check_output_folder(path: str | Path, flag: str, *, error: type[VanillaNetError] = OutputError) -> Path:
    """``path`` as a ``Path`` once it can be the output folder ``flag`` names (an existing writable folder, or one
    that can be created), else ``error`` (OutputError), before any work."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise error(f"{flag} {path} is a file, not a folder; give a folder (it is created when missing)")
    _check_place(p, flag, error)
    return p


def refuse_inputs(output: str | Path | None, *inputs: str | Path | None, flag: str = "--output") -> None:
    """OutputError when ``output`` is one of ``inputs`` (same path, or the same file through a link): writing it
    would replace what the command reads, e.g. ``export --checkpoint best.pth --output best.pth``."""
    if output is None:
        return
    out = Path(output)
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        same = out.resolve() == src.resolve()
        if not same and out.exists() and src.exists():
            same = os.path.samefile(out, src)
        if same:
            raise OutputError(f"{flag} {out} is the input {src}: writing it would replace the input; choose "
                              "another output file")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` written atomically (training checkpoints, ``.pth`` weights)."""
    import torch

    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, so that the JSON written is standard JSON (Python's
    json module would write NaN / Infinity, which other readers reject)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """Standard JSON (non-finite floats as null), written atomically."""
    return write_text(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append one line (a log row); a crash can leave at most this line partial, which readers skip."""
    try:
        fd = open_output(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "the log")
        with os.fdopen(fd, "a") as f:
            f.write(line.rstrip("\n") + "\n")
    except OSError as err:
        raise OutputError(f"cannot append to {path} ({err.strerror}); nothing was written: "
                          f"{_fix(err.strerror or '')}") from err


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` (a hard link where possible), replacing it atomically."""

    def make(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)

    write_atomic(dst, make)


def remove_stale_temporaries(folder: Path, *, owned: bool = False) -> list[Path]:
    """Delete the temporary files of writes in ``folder`` whose process is gone (a SIGKILL during a write leaves
    them); returns what was removed. Temporaries of live processes are kept, unless ``owned``: the caller holds the
    folder exclusively (a training run's lock), so every temporary there is stale, even one whose PID has since been
    reused by another process."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 3)  # ['.NAME', pid, random, 'tmp']
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if not owned and pid != os.getpid() and _alive(pid):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""Writing files so that nothing half-written is ever seen: every output of the package goes through here.

A file is written to a temporary name in the same folder, then moved into place with ``os.replace`` (atomic on
POSIX): readers see the old file or the new one, a crash leaves the old one, and the temporary name
(``.NAME.<pid>.<random>.tmp``) is recognisable so that stale ones can be cleaned up (``remove_stale_temporaries``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "link_or_copy", "remove_stale_temporaries", "save_atomic", "temporary_name",
           "write_atomic", "write_json", "write_text"]


def temporary_name(path: Path) -> Path:
    """The temporary file ``path`` is written through: ``.NAME.<pid>.<random>.tmp`` beside it."""
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Run ``write(temporary_path)`` in the same folder, then ``os.replace`` onto ``path``: readers never see half
    a file, a failure leaves the old one, and the result gets the usual umask mode (mkstemp would give 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        tmp.touch()  # the mode a plain file gets here (umask); some writers (safetensors) create files 0600
        mode = tmp.stat().st_mode & 0o777
        write(str(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` (a hard link where possible), replacing it atomically."""
    tmp = temporary_name(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of writes in ``folder`` whose process is gone (a SIGKILL during a write leaves
    them); returns what was removed. Temporaries of live processes are kept."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 3)  # ['.NAME', pid, random, 'tmp']
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid != os.getpid() and _alive(pid):
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

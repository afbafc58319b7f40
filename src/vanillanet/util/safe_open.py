"""Opening the paths a user names without surprises: no link followed where we write, no special file read or
written by accident.

- **Special files** (FIFOs, character and block devices, sockets) are refused with one line naming what the path
  is: reading a FIFO blocks forever, ``/dev/zero`` never ends, writing onto ``/dev/null`` (as root, ``os.replace``
  would replace it) destroys it. ``special_kind`` tells what a path is from ``stat``, without opening it.
- **Reading** (``open_regular``, ``read_head``, ``read_text``): the type is checked with ``stat`` first, then the
  file is opened with ``O_NONBLOCK`` (so that even a FIFO swapped in after the check cannot block the open) and
  checked again with ``fstat`` on the descriptor actually read. A symbolic link the user names is followed (the
  user chose it).
- **Writing in place** (``open_output``: the run folder's lock, appended logs) uses ``O_NOFOLLOW``: a symbolic link
  planted at that name would make us write into the file it points to, so it is refused, as is a special file.
  Descriptors are opened ``O_CLOEXEC`` (never inherited by programs started with exec).

Every refusal is the caller's one-line error class (``CheckpointError`` for checkpoints, ``DataError`` for images,
``OutputError`` or ``ConfigError`` for outputs), naming the path, what it is, and the fix.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import OutputError, VanillaNetError

__all__ = ["kind_of_mode", "open_output", "open_regular", "read_head", "read_text", "refuse_special", "special_kind"]

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind_of_mode(mode: int) -> str | None:
    """What a special file is ("a FIFO (named pipe)", "a character device"...), None for files, folders, links."""
    return next((name for test, name in _KINDS if test(mode)), None)


def special_kind(path: str | Path, *, follow: bool = True) -> str | None:
    """What ``path`` is when it is a special file (``stat``, no open); None for a regular file, a folder, a missing
    path (or, with ``follow`` False, a symbolic link)."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except (OSError, ValueError):
        return None
    return kind_of_mode(st.st_mode)


def refuse_special(path: str | Path, what: str, error: type[VanillaNetError], *, reading: bool = True) -> None:
    """``error`` (one line) when ``path`` is a special file; ``what`` names it ("checkpoint", "--json")."""
    kind = special_kind(path)
    if kind is not None:
        raise error(_special_message(path, what, kind, reading))


def _special_message(path: str | Path, what: str, kind: str, reading: bool) -> str:
    if reading:
        return (f"{what} {path} is {kind}, not a regular file: reading it could block or never end; pass a regular "
                "file")
    return f"{what} {path} is {kind}, not a regular file: writing it would not save anything; choose a file path"


def open_regular(path: str | Path, what: str, error: type[VanillaNetError]) -> int:
    """A read-only descriptor of the regular file ``path``; ``error`` for a special file, checked before and after
    opening (non-blocking, so a FIFO cannot hang the open). Missing files raise FileNotFoundError as usual."""
    refuse_special(path, what, error)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        kind = kind_of_mode(os.fstat(fd).st_mode)
        if kind is not None:
            raise error(_special_message(path, what, kind, True))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_head(path: str | Path, size: int, what: str, error: type[VanillaNetError]) -> bytes:
    """The first ``size`` bytes of the regular file ``path`` (see ``open_regular``)."""
    with os.fdopen(open_regular(path, what, error), "rb") as f:
        return f.read(size)


def read_text(path: str | Path, what: str, error: type[VanillaNetError]) -> str:
    """The text of the regular file ``path`` (see ``open_regular``): configs, studies, logs, label files."""
    with os.fdopen(open_regular(path, what, error), "r", encoding="utf-8") as f:
        return f.read()


def open_output(path: str | Path, flags: int, what: str, error: type[VanillaNetError] = OutputError,
                mode: int = 0o644) -> int:
    """A descriptor for writing ``path`` in place (``flags``: e.g. ``O_RDWR | O_CREAT`` or ``O_WRONLY | O_APPEND |
    O_CREAT``), never through a symbolic link (``O_NOFOLLOW``) and never onto a special file; ``error`` otherwise.
    Other OSErrors (permissions, a full disk) propagate for the caller's message."""
    refuse = f"{what} {path}"
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP or (err.errno in (errno.ENOTDIR, errno.EMLINK) and os.path.islink(path)):
            raise error(f"{refuse} is a symbolic link: refusing to follow it (it could make vanillanet overwrite the "
                        "file it points to); remove the link or choose another folder") from None
        kind = special_kind(path)
        if kind is not None:  # ENXIO: a FIFO without a reader
            raise error(_special_message(path, what, kind, False)) from None
        raise
    try:
        kind = kind_of_mode(os.fstat(fd).st_mode)
        if kind is not None:
            raise error(_special_message(path, what, kind, False))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd

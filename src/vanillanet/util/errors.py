"""Errors a user can cause, and the one helper that turns any exception into a one-line reason.

Each message is one line naming the cause and the fix; the CLI prints it without a traceback and exits with
status 2.
"""

from __future__ import annotations


class VanillaNetError(Exception):
    """Base class: a problem the user can fix (bad path, wrong checkpoint, bad config, bad data)."""


class ConversionError(VanillaNetError):
    """The train form cannot be converted to an equivalent deploy form (e.g. act_learn != 1), or a backend or
    exporter cannot reproduce the model's outputs."""


class CheckpointError(VanillaNetError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the model."""


class ConfigError(VanillaNetError, ValueError):
    """A configuration value, recipe or command-line option is wrong (also a ValueError, which callers of a
    constructor expect)."""


class DataError(VanillaNetError):
    """A dataset path, folder layout or image is wrong."""


class OutputError(VanillaNetError):
    """An output cannot be written: the disk is full, the path is a folder or read-only, or it is one of the
    command's inputs (which would be replaced)."""


class NonFiniteLossError(VanillaNetError):
    """The loss, the weights or the EMA became NaN or infinite: training stopped without saving the diverged
    state, naming the last good checkpoint."""


def user_message(err: BaseException) -> str:
    """The message of a user error; for one a DataLoader worker raised (torch re-raises it in the main process as
    "Caught DataError in DataLoader worker process 0. Original Traceback ... DataError: <message>") the original
    one-line message."""
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most ``limit`` characters (torch's messages are long and span
    lines); the exception's type name when it has no message."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__

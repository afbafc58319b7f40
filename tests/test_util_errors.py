"""util/errors.py: the error classes a user can cause, and ``first_line``, the one way to shorten a message."""

from __future__ import annotations

import pytest

from vanillanet.util.errors import (
    CheckpointError,
    ConfigError,
    ConversionError,
    DataError,
    NonFiniteLossError,
    OutputError,
    VanillaNetError,
    first_line,
)


@pytest.mark.parametrize("cls", [ConversionError, CheckpointError, ConfigError, DataError, OutputError,
                                 NonFiniteLossError])
def test_every_user_error_is_a_vanillanet_error(cls):
    with pytest.raises(VanillaNetError, match="the cause; the fix"):
        raise cls("the cause; the fix")


def test_config_error_is_also_a_value_error():
    """Callers of a constructor catch ValueError for a bad argument; a ConfigError is one."""
    with pytest.raises(ValueError, match="bad width"):
        raise ConfigError("bad width")
    assert not issubclass(DataError, ValueError)


def test_first_line_keeps_the_first_line_only():
    err = RuntimeError("  shape mismatch: [3, 4] vs [4, 3]\n  at frame 1\n  at frame 2  ")
    assert first_line(err) == "shape mismatch: [3, 4] vs [4, 3]"


def test_first_line_is_limited_and_names_the_type_of_an_empty_message():
    assert first_line(ValueError("x" * 500)) == "x" * 200
    assert first_line(ValueError("abcdef"), limit=3) == "abc"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(OSError("\n\n")) == "OSError"

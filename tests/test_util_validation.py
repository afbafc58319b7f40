"""util/validation.py: typed settings from one declaration. A small settings class of its own (a flat part and one
section) exercises coercion, ranges and choices, building from flat keys, the command-line flags they make and the
one-line ConfigErrors; the package's own settings classes are tested through them in test_training_config.py."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

import pytest

from vanillanet.util import validation
from vanillanet.util.errors import ConfigError
from vanillanet.util.validation import (
    add_arguments,
    build,
    check_instance,
    coerce,
    field_type,
    keys_of,
    option,
    overrides_from_args,
    parse_text,
    to_flat,
    unknown_key_error,
    value_type,
)


@dataclass(frozen=True)
class Optim:
    lr: float = option(0.1, "learning rate", gt=0)
    betas: tuple[float, float] = option((0.9, 0.999), "betas", ge=0, lt=1)
    opt: str = option("lamb", "optimiser", choices=("lamb", "sgd"))


@dataclass(frozen=True)
class Settings:
    optim: Optim = dataclasses.field(default_factory=Optim)
    epochs: int = option(10, "epochs", ge=1, aliases=("-e",))
    amp: bool = option(True, "mixed precision")
    clip: float | None = option(None, "clipping", gt=0)
    scale: tuple[float, ...] = option((0.08, 1.0), "crop scale", gt=0, le=1)
    name: str = option("run", "name")
    extra: dict[str, float] = option(help="extra", default_factory=dict)


def test_keys_are_flat_and_know_their_section_and_help():
    keys = keys_of(Settings)
    assert list(keys) == ["lr", "betas", "opt", "epochs", "amp", "clip", "scale", "name", "extra"]
    assert keys["lr"].section == "optim" and keys["epochs"].section is None
    assert keys["opt"].help == "optimiser (lamb | sgd)"
    assert keys["betas"].help == "betas [>= 0, < 1]"


@pytest.mark.parametrize(("key", "value", "hint", "want"), [
    ("lr", 1, float, 1.0), ("lr", "2e-3", float, 2e-3), ("epochs", "7", int, 7), ("clip", None, float | None, None),
    ("betas", [0.5, 0.6], tuple[float, float], (0.5, 0.6)), ("scale", 0.5, tuple[float, ...], (0.5,)),
    ("name", 3, str, "3"), ("extra", {1: 2}, dict[str, float], {"1": 2}),
])
def test_coerce_converts_to_the_field_type(key, value, hint, want):
    got = coerce(key, value, hint)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(("value", "hint", "message"), [
    (True, int, "config key 'k' needs a int, got True"),
    ("x", float, "config key 'k' needs a float, got 'x'; fix the recipe or the override"),
    (math.inf, float, "config key 'k' must be a finite number, got inf"),
    (0.5, tuple[float, float], r"config key 'k' needs a list, got 0.5; write e.g. k=\[0.5,0.5\]"),
    ([1, 2, 3], tuple[float, float], r"config key 'k' needs 2 values, got 3"),
    ("a", dict[str, float], "config key 'k' needs a mapping"),
    (1, bool, "config key 'k' needs a bool, got 1"),
])
def test_coerce_refuses_wrong_types_in_one_line(value, hint, message):
    with pytest.raises(ConfigError, match=message):
        coerce("k", value, hint)


def test_build_fills_sections_and_checks_every_value():
    s = build(Settings, {"lr": "0.5", "epochs": 3, "scale": [0.2, 1], "clip": 1})
    assert s.optim == Optim(lr=0.5) and (s.epochs, s.scale, s.clip) == (3, (0.2, 1.0), 1.0)
    assert to_flat(s) == dict(lr=0.5, betas=[0.9, 0.999], opt="lamb", epochs=3, amp=True, clip=1.0,
                              scale=[0.2, 1.0], name="run", extra={})
    assert build(Settings, {"lr": 0.5}) == build(Settings, {"lr": "5e-1"})


@pytest.mark.parametrize(("values", "message"), [
    ({"lr": 0}, "lr must be more than 0, got 0.0"),
    ({"epochs": 0}, "epochs must be at least 1, got 0"),
    ({"betas": [0.9, 1.0]}, "betas must be less than 1, got 1.0"),
    ({"scale": [0.5, 1.5]}, "scale must be at most 1, got 1.5"),
    ({"opt": "adam"}, "opt must be one of lamb, sgd, got 'adam'"),
    ({"epoch": 3}, "unknown config key 'epoch' in the recipe; did you mean 'epochs'"),
    ({"zzz": 3}, "unknown config key 'zzz' in the recipe; see --help for the keys"),
])
def test_build_refuses_bad_values_naming_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        build(Settings, values, source="the recipe")


def test_check_instance_catches_what_a_direct_constructor_skipped():
    assert check_instance(Settings()) == Settings()
    with pytest.raises(ConfigError, match="lr must be more than 0, got -1.0"):
        check_instance(Settings(optim=Optim(lr=-1.0)))
    with pytest.raises(ConfigError, match="epochs must be at least 1, got 0"):
        check_instance(dataclasses.replace(Settings(), epochs=0))


def test_parse_text_reads_yaml_but_keeps_strings_verbatim():
    assert parse_text("lr", "1e-3", float) == 1e-3
    assert parse_text("betas", "[0.5, 0.6]", tuple[float, float]) == (0.5, 0.6)
    assert parse_text("name", "1e3", str) == "1e3"
    assert parse_text("clip", "", float | None) is None
    assert parse_text("path", "runs/1", str | None) == "runs/1"
    with pytest.raises(ConfigError, match="config key 'epochs' needs a int, got 'many'"):
        parse_text("epochs", "many", int)


def test_flags_from_the_declaration():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Settings, skip=("name",))
    args = parser.parse_args(["--lr", "0.2", "-e", "4", "--no-amp", "--scale", "0.3", "1", "--betas", "0.8", "0.9"])
    assert overrides_from_args(args, Settings) == dict(lr=0.2, epochs=4, amp=False, scale=["0.3", "1"],
                                                       betas=["0.8", "0.9"])
    assert overrides_from_args(parser.parse_args([]), Settings) == {}  # unset flags are absent
    assert build(Settings, overrides_from_args(args, Settings)).scale == (0.3, 1.0)
    with pytest.raises(SystemExit, match="2"):
        parser.parse_args(["--name", "x"])  # skipped
    with pytest.raises(SystemExit, match="2"):
        parser.parse_args(["--extra", "x"])  # mappings only through --set or a recipe


def test_value_type_gives_one_line_argparse_errors():
    topk = value_type(int, ge=1)
    assert topk("5") == 5 and topk.__name__ == "int"
    with pytest.raises(argparse.ArgumentTypeError, match="^must be at least 1, got 0$"):
        topk("0")
    with pytest.raises(argparse.ArgumentTypeError, match="^needs an integer, got 'x'$"):
        topk("x")
    with pytest.raises(argparse.ArgumentTypeError, match="^needs a finite number, got 'nan'$"):
        value_type(float)("nan")
    lr = field_type(Settings, "clip")  # the declared key's type and range, None stripped from the union
    assert lr("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="must be more than 0, got -1.0"):
        lr("-1")


def test_unknown_key_error_suggests_the_closest_key():
    err = unknown_key_error("warmup", {"warmup_epochs": 1, "epochs": 2}, "--set")
    assert str(err) == "unknown config key 'warmup' in --set; did you mean 'warmup_epochs'?"


@pytest.mark.parametrize("name", sorted(validation.ENV_SWITCHES))
def test_environment_switches_are_checked(monkeypatch, name):
    """Issue 17, finding 6: every switch read from the environment goes through env_flag."""
    for raw, expected in (("", True), (" Off ", False), ("YES", True), ("0", False)):
        monkeypatch.setenv(name, raw)
        assert validation.env_flag(name, True) is expected
        validation.check_environment()
    monkeypatch.delenv(name)
    assert validation.env_flag(name, False) is False
    monkeypatch.setenv(name, "garbage")
    with pytest.raises(ConfigError, match=f"environment variable {name}='garbage' is not a switch"):
        validation.check_environment()

"""Typed settings from one declaration: frozen dataclasses whose fields carry their help text and allowed values.

One ``option(...)`` line per setting declares its default, help, allowed values (``choices``) and range (``ge``,
``gt``, ``le``, ``lt``); from it come the value checks, the command-line flag (``lr`` -> ``--lr``, booleans as
``--amp/--no-amp``, tuples as several values) and the help text. This is the package's one validation layer for
numbers a user can pass: config files, ``--set key=value``, flags (``add_arguments``, or ``value_type`` for a
command's plain argparse option), settings built in Python (``check_instance``) and what a checkpoint records all go
through ``coerce`` and ``check``, so a value of the wrong type, out of range or not finite is a one-line
``ConfigError`` naming the key and the fix.

A settings class is flat, or made of *sections* (fields whose type is itself such a dataclass, e.g.
``TrainConfig.optim``): keys stay flat and unique (``lr``, not ``optim.lr``) in files and on the command line, and
code that needs one part takes only its section.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

__all__ = ["ENV_SWITCHES", "Key", "add_arguments", "build", "check", "check_environment", "check_instance", "coerce",
           "env_flag", "field_type", "keys_of", "option",
           "overrides_from_args", "parse_text", "to_flat", "unknown_key_error", "value_type"]


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple | None = None,  # noqa: A002
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           aliases: tuple[str, ...] = (), default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text, allowed values and range (inclusive ``ge``/``le``, exclusive
    ``gt``/``lt``); ``aliases`` are extra command-line flags."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "aliases": aliases}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Key:
    """One flat setting: its name, the section holding it (None in a flat class), its field and type hint."""

    name: str
    section: str | None
    field: dataclasses.Field
    hint: Any

    @property
    def help(self) -> str:
        meta = self.field.metadata
        text = meta.get("help", "")
        if meta.get("choices"):
            text += f" ({' | '.join(map(str, meta['choices']))})"
        bounds = [f"{op} {meta[k]:g}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                  if meta.get(k) is not None]
        return text + (f" [{', '.join(bounds)}]" if bounds else "")


def _is_section(hint: Any) -> bool:
    return dataclasses.is_dataclass(hint) and isinstance(hint, type)


def keys_of(cls: type) -> dict[str, Key]:
    """Every flat key of a settings class (the fields of its sections, or its own fields)."""
    out: dict[str, Key] = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if _is_section(hints[f.name]):
            sub = typing.get_type_hints(hints[f.name])
            for g in fields(hints[f.name]):
                out[g.name] = Key(g.name, f.name, g, sub[g.name])
        else:
            out[f.name] = Key(f.name, None, f, hints[f.name])
    return out


# ---- values ---------------------------------------------------------------------------------------------------
def coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the field type ``hint`` (int -> float, list -> tuple), or ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and args[-1] is Ellipsis:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} needs a list, got {value!r}; write e.g. {key}=[0.5,0.5]")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"config key {key!r} needs {len(args)} values, got {len(value)}: {value!r}")
        return tuple(coerce(key, v, args[0]) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} needs a mapping, got {value!r}; write e.g. {key}={{name: value}}")
        return {str(k): v for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif hint is Any:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config key {key!r} needs a {name}, got {value!r}; fix the recipe or the override")


def check(key: str, value: Any, f: dataclasses.Field) -> None:
    """Allowed values and range of one field (declared with ``option``); None passes where the type allows it."""
    meta = f.metadata
    if value is None:
        return
    choices = meta.get("choices")
    items = value if isinstance(value, tuple) else (value,)
    for v in items if choices else ():
        if v not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {v!r}")
    for v in items:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        for bound, ok, word in (("ge", lambda a, b: a >= b, "at least"), ("gt", lambda a, b: a > b, "more than"),
                                ("le", lambda a, b: a <= b, "at most"), ("lt", lambda a, b: a < b, "less than")):
            limit = meta.get(bound)
            if limit is not None and not ok(v, limit):
                raise ConfigError(f"{key} must be {word} {limit:g}, got {v!r}".lstrip())


def parse_text(key: str, raw: str, hint: Any) -> Any:
    """A command-line string parsed as YAML and coerced to ``hint``; strings stay verbatim (a path named "1e3"
    stays a string)."""
    import yaml  # here, so that the CLI's start-up (which checks the environment) does not load it

    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if hint is str or (union and str in typing.get_args(hint) and value is not None):
        value = raw
    return coerce(key, value, hint)


def unknown_key_error(key: str, known: Mapping[str, Any], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "see --help for the keys"
    return ConfigError(f"unknown config key {key!r} in {source}; {hint}")


def build(cls: type, values: Mapping[str, Any], source: str = "the settings") -> Any:
    """An instance of ``cls`` from flat ``values`` (missing keys keep their defaults), every value coerced and
    checked."""
    keys = keys_of(cls)
    sections: dict[str | None, dict[str, Any]] = {}
    for name, value in values.items():
        name = str(name).replace("-", "_")
        key = keys.get(name)
        if key is None:
            raise unknown_key_error(name, keys, source)
        value = coerce(name, value, key.hint)
        check(name, value, key.field)
        sections.setdefault(key.section, {})[name] = value
    hints = typing.get_type_hints(cls)
    kwargs = dict(sections.pop(None, {}))
    for section, section_values in sections.items():
        kwargs[section] = hints[section](**section_values)
    return cls(**kwargs)


def check_instance(obj: Any) -> Any:
    """Every value of a settings instance coerced and checked as ``build`` does (an instance made directly, e.g.
    ``TrainConfig(arch=ArchConfig(width_mult=0))`` or with ``dataclasses.replace``, skipped those checks); returns
    ``obj``."""
    for name, key in keys_of(type(obj)).items():
        holder = getattr(obj, key.section) if key.section else obj
        value = getattr(holder, name)
        check(name, coerce(name, list(value) if isinstance(value, tuple) else value, key.hint), key.field)
    return obj


def value_type(hint: Any, **allowed: Any) -> Any:
    """An argparse ``type=`` for a command's plain option that parses and checks its text exactly as config keys
    are (``parse_text``, then ``check`` with ``option``'s keywords: choices, ge, gt, le, lt); a bad value is a
    one-line argparse error, e.g. ``argument --topk: must be at least 1, got 0``."""
    f = option(None, **allowed)
    name = getattr(hint, "__name__", "value")
    wanted = {int: "an integer", float: "a finite number"}.get(hint, f"a {name}")

    def parse(raw: str) -> Any:
        try:
            value = parse_text("", raw, hint)
        except ConfigError:
            raise argparse.ArgumentTypeError(f"needs {wanted}, got {raw!r}") from None
        try:
            check("", value, f)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    parse.__name__ = name
    return parse


# ---- environment variables ------------------------------------------------------------------------------------
# Every on/off switch the package reads from the environment, with its value when unset or empty.
ENV_SWITCHES = {"VANILLANET_FUSED_KERNELS": True, "VANILLANET_KERNEL_TUNING": True}
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_flag(name: str, default: bool = True) -> bool:
    """The on/off switch in environment variable ``name`` (``default`` when unset or empty); ConfigError naming the
    variable and the accepted values for anything else (``garbage`` never silently means on)."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value in _ON or value in _OFF:
        return value in _ON
    raise ConfigError(f"environment variable {name}={raw!r:.40} is not a switch: set it to one of "
                      f"{', '.join(_ON + _OFF)}, or unset it")


def check_environment() -> None:
    """Every switch of ``ENV_SWITCHES`` checked (the CLI does this before any command runs)."""
    for name, default in ENV_SWITCHES.items():
        env_flag(name, default)


def field_type(cls: type, name: str) -> Any:
    """``value_type`` of the declared key ``name`` of settings class ``cls`` (its type and allowed values), for a
    command that takes the same setting as a plain option."""
    key = keys_of(cls)[name]
    meta = key.field.metadata
    hint = next((a for a in typing.get_args(key.hint) if a is not type(None)), key.hint)
    return value_type(hint, **{k: meta[k] for k in ("choices", "ge", "gt", "le", "lt") if meta.get(k) is not None})


def to_flat(obj: Any) -> dict[str, Any]:
    """Flat plain dict (tuples as lists) of a settings instance, for YAML files, JSON and checkpoints."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(to_flat(value))
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# ---- command line ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                  prefix: str = "cfg_") -> None:
    """One flag per key of ``cls`` (unset flags are absent from the namespace, so lower layers keep their value)."""
    for name, key in keys_of(cls).items():
        if name in skip:
            continue
        flags = [f"--{name.replace('_', '-')}", *key.field.metadata.get("aliases", ())]
        kw: dict[str, Any] = dict(dest=f"{prefix}{name}", default=argparse.SUPPRESS, help=key.help)
        hint_args = typing.get_args(key.hint)
        if key.hint is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif tuple in (typing.get_origin(key.hint), *map(typing.get_origin, hint_args)):
            parser.add_argument(*flags, nargs="+", metavar="V", **kw)
        elif dict in (typing.get_origin(key.hint), *map(typing.get_origin, hint_args)):
            continue  # mappings are set with --set key={...} or in a recipe
        else:
            parser.add_argument(*flags, metavar=name.split("_")[-1].upper(), **kw)


def overrides_from_args(args: argparse.Namespace, cls: type, prefix: str = "cfg_") -> dict[str, Any]:
    """The flat values given on the command line (strings parsed and coerced; lists and booleans as they are)."""
    keys = keys_of(cls)
    out: dict[str, Any] = {}
    for dest, raw in vars(args).items():
        if dest.startswith(prefix) and dest[len(prefix):] in keys:
            name = dest[len(prefix):]
            out[name] = raw if isinstance(raw, (list, bool)) else parse_text(name, raw, keys[name].hint)
    return out

"""The study file of ``vanillanet ablate``: its format (the package docstring), ``load_study`` and the checks that
refuse a mistake in one line."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..util.errors import ConfigError, first_line

__all__ = ["MAX_RUNS", "MAX_SEEDS", "STUDY_OWNED", "Study", "Variation", "load_study", "refuse_owned"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STUDY_KEYS = {"description", "output", "seeds", "reference", "base", "variations"}
_VARIATION_KEYS = {"set", "group", "note", "paper"}
# Keys the study sets for every run itself: a value in the study or --set would put runs on top of each other.
STUDY_OWNED = {"output": "each run goes to OUT/runs/VARIATION/seedS; give the study folder with --output or the "
                         "study's 'output'",
               "seed": "list the seeds under the study's 'seeds' or pass --seeds",
               "resume": "the study resumes every run by itself (resume=auto)"}
MAX_SEEDS, MAX_RUNS = 1000, 10_000  # per study: planning resolves one config per run, up front


@dataclass(frozen=True)
class Variation:
    """One named variation: config keys over the base, a chart group, a definition and a published number."""

    name: str
    delta: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    note: str = ""
    paper: str | None = None


@dataclass(frozen=True)
class Study:
    """A base config (``recipe`` plus keys), the seeds, and the variations (the first is the default reference)."""

    name: str
    base: dict[str, Any]
    seeds: tuple[int, ...]
    variations: tuple[Variation, ...]
    reference: str
    output: str | None = None
    description: str = ""

    def variation(self, name: str) -> Variation:
        return next(v for v in self.variations if v.name == name)


def _mapping(value: Any, what: str, path: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {what} must be a mapping, got {type(value).__name__}; see `vanillanet ablate "
                          "--help` for the study format")
    return value


def load_study(path: str | Path) -> Study:
    """Read and check a study file (see the module docstring); one-line ConfigError for every mistake."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist; pass a YAML study file")
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader: 7x faster on a long file
        data = _mapping(yaml.load(path.read_text(), Loader=loader), "the study", path)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"study file {path} is not valid YAML ({first_line(err)}); fix the file") from None
    unknown = set(data) - _STUDY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown study key(s) {', '.join(sorted(unknown))}; use "
                          f"{', '.join(sorted(_STUDY_KEYS))}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r:.80}")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"{path}: {len(seeds):,} seeds is above the limit of {MAX_SEEDS:,} per study; list fewer "
                          "seeds (split the study, each with its own output)")
    variations = []
    for name, spec in _mapping(data.get("variations"), "variations", path).items():
        name = str(name)
        if not _NAME.match(name):
            raise ConfigError(f"{path}: variation name {name!r} must be letters, digits, '_', '.' or '-' (it names "
                              "a folder)")
        spec = _mapping(spec, f"variation {name!r}", path)
        unknown = set(spec) - _VARIATION_KEYS
        if unknown:
            raise ConfigError(f"{path}: variation {name!r} has unknown key(s) {', '.join(sorted(unknown))}; use "
                              f"{', '.join(sorted(_VARIATION_KEYS))} (config keys go under 'set')")
        paper = spec.get("paper")
        variations.append(Variation(name, dict(_mapping(spec.get("set"), f"{name}.set", path)),
                                    str(spec.get("group") or ""), str(spec.get("note") or "").strip(),
                                    None if paper is None else str(paper)))
    if not variations:
        raise ConfigError(f"{path}: the study has no variations; add at least one under 'variations'")
    reference = str(data.get("reference") or variations[0].name)
    if reference not in {v.name for v in variations}:
        raise ConfigError(f"{path}: reference {reference!r} is not one of the variations "
                          f"({', '.join(v.name for v in variations)})")
    base = dict(_mapping(data.get("base"), "base", path))
    for where, keys in (("base", base), *((f"variation {v.name!r}", v.delta) for v in variations)):
        refuse_owned(keys, f"{path}: {where}")
    return Study(name=path.stem, base=base, seeds=tuple(seeds),
                 variations=tuple(variations), reference=reference, output=data.get("output"),
                 description=str(data.get("description") or "").strip())


def refuse_owned(keys: Iterable[str], where: str) -> None:
    """ConfigError when one of ``keys`` (from ``where``: the study file or --set) is a key the study sets for every
    run itself (``STUDY_OWNED``), with the reason."""
    for key in keys:
        owned = STUDY_OWNED.get(str(key).strip().replace("-", "_"))
        if owned:
            raise ConfigError(f"{where} sets {key!r}, which the study sets for every run: {owned}")


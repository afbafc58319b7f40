"""ablate/study.py: the study file's mistakes, each refused in one line before anything runs (unknown keys, bad names
and seeds, keys the study sets itself, too many seeds or runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ablation_study

from vanillanet.ablate import load_study, plan_runs, run_study
from vanillanet.util.errors import ConfigError


def test_study_file_errors(tmp_path):
    path = ablation_study(tmp_path)
    data = yaml.safe_load(path.read_text())
    for change, message in [({"seeds": [0, 0]}, "distinct integers"), ({"reference": "nope"}, "reference 'nope'"),
                            ({"variations": {"bad name": {}}}, "variation name 'bad name'"),
                            ({"variations": {"a": {"lr": 1}}}, "unknown key"), ({"extra": 1}, "unknown study key")]:
        path.write_text(yaml.safe_dump({**data, **change}))
        with pytest.raises(ConfigError, match=message):
            load_study(path)
    path.write_text(yaml.safe_dump({**data, "variations": {"a": {"set": {"lerning_rate": 1}}}}))
    with pytest.raises(ConfigError, match="variation 'a' .*unknown config key 'lerning_rate'"):
        plan_runs(load_study(path), tmp_path / "out")


def _study_with(tmp_path: Path, **change) -> Path:
    path = ablation_study(tmp_path)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **change}))
    return path


def test_study_keys_the_study_owns_and_too_many_runs_are_refused(tmp_path, nothing_runs):
    with pytest.raises(ConfigError, match="variation 'relu' sets 'output', which the study sets for every run"):
        load_study(_study_with(tmp_path, variations={"relu": {"set": {"output": "x"}}}))
    with pytest.raises(ConfigError, match="base sets 'resume', which the study sets for every run"):
        load_study(_study_with(tmp_path, base={"resume": "never"}))
    path = tmp_path / "many.yaml"  # 100,000 seeds: refused at once, not after planning 100,000 configs
    seeds = "".join(f"- {s}\n" for s in range(100_000))
    path.write_text(ablation_study(tmp_path).read_text().replace("- 0\n- 1\n", seeds))
    with pytest.raises(ConfigError, match="100,000 seeds is above the limit of 1,000 per study; list fewer seeds"):
        load_study(path)
    study = load_study(ablation_study(tmp_path))
    with pytest.raises(ConfigError, match=r"2 variations x 5,001 seeds = 10,002 runs, above the limit of 10,000"):
        plan_runs(study, tmp_path / "out", seeds=range(5001))
    with pytest.raises(ConfigError, match="threads must be None .* at least 1, got 0"):
        run_study(study, tmp_path / "out", threads=0)
    with pytest.raises(ConfigError, match="--jobs must be an integer of at least 1, got 0"):
        run_study(study, tmp_path / "out", jobs=0)


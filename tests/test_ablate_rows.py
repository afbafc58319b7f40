"""ablate/rows.py: OUT/runs.jsonl read back, a line cut short by a crash skipped, a value that cannot be a run's
refused naming its line (also through `vanillanet ablate --summary-only`)."""

from __future__ import annotations

import json

import pytest
from conftest import ablation_rows, ablation_study

from vanillanet import cli
from vanillanet.ablate import read_rows
from vanillanet.util.errors import DataError


def test_rows_are_read_back_and_a_cut_line_is_skipped(tmp_path):
    rows = ablation_rows({"base": [0.9, 0.8], "relu": [0.7]})
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps(rows[0])[:25] + "\n")
    assert read_rows(path) == rows
    assert read_rows(tmp_path / "none.jsonl") == []
    path.write_text(json.dumps(dict(rows[0], cpu_seconds=-1.0)) + "\n")
    with pytest.raises(DataError, match="line 1: cpu_seconds is -1.0, not a finite number of seconds"):
        read_rows(path)
    path.write_text(json.dumps(dict(rows[0], seed=True)) + "\n")
    with pytest.raises(DataError, match="line 1: seed is True, not an integer"):
        read_rows(path)


@pytest.mark.parametrize(("value", "message"), [
    ("Infinity", "test_top1 is inf, not a fraction in"), ("NaN", "test_top1 is nan, not a fraction in"),
    ("1.5", "test_top1 is 1.5, not a fraction in"), ('"high"', "test_top1 is 'high', not a fraction in"),
])
def test_summary_only_refuses_a_row_that_cannot_be_a_run(tmp_path, capsys, value, message):
    path, out = ablation_study(tmp_path), tmp_path / "out"
    out.mkdir()
    good, bad = (json.dumps(row) for row in ablation_rows({"base": [0.9, 0.5]}))
    (out / "runs.jsonl").write_text(good + "\n" + bad.replace('"test_top1": 0.5', f'"test_top1": {value}') + "\n")
    assert cli.main(["ablate", str(path), "--output", str(out), "--summary-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vanillanet ablate: error: {out / 'runs.jsonl'} line 2: {message} [0, 1]; fix or remove that "
                   "line (a removed run is run again)")
    assert not (out / "summary.md").exists()

"""ablate/command.py: the `ablate` command's options: the dry run of an unrun study, and every bad output or value
refused in one line before any run."""

from __future__ import annotations

import re

import pytest
from conftest import ablation_study

from vanillanet import cli


def test_dry_run_lists_the_runs_and_trains_nothing(tmp_path, capsys, nothing_runs):
    path = ablation_study(tmp_path)
    assert cli.main(["ablate", str(path), "--output", str(tmp_path / "out"), "--dry-run", "--seeds", "3"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:4] for line in listing] == [["base", "seed", "3", "to"], ["relu", "seed", "3", "to"]]
    assert "series_act=False" in listing[1] and not (tmp_path / "out" / "runs.jsonl").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--output", "FILE"], r"--output FILE is a file, not a folder; give a folder \(it is created when missing\)"),
    (["--output", "FILE/sub"], r"--output: a file is in the way of the folder FILE/sub \(FILE is a file\)"),
    (["--results", "FILE"], "--results FILE is a file, not a folder"),
    (["--results", "OUT"], "--results OUT is the study folder; give another folder"),
    (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["--jobs", "0"], "argument --jobs/-j: must be at least 1, got 0"),
    (["--seeds", "x"], "argument --seeds: needs an integer, got 'x'"),
    (["--set", "output=DIR"], "--set sets 'output', which the study sets for every run: each run goes to "
                              ".*/runs/VARIATION/seedS; give the study folder with --output"),
    (["--set", "seed=3"], "--set sets 'seed', which the study sets for every run: list the seeds under"),
])
def test_cli_bad_outputs_and_values_are_one_line_before_any_run(tmp_path, capsys, nothing_runs, extra, message):
    path = ablation_study(tmp_path)
    (tmp_path / "FILE").write_text("not a folder")
    argv = ["--output", "OUT", *extra] if "--output" not in extra else extra
    argv = [a.replace("FILE", str(tmp_path / "FILE")).replace("OUT", str(tmp_path / "out")) for a in argv]
    for word, folder in (("FILE", tmp_path / "FILE"), ("OUT", tmp_path / "out")):
        message = message.replace(word, re.escape(str(folder)))
    try:
        code = cli.main(["ablate", str(path), *argv])
    except SystemExit as exit_:  # option values are checked by the parser (same one-line format)
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()


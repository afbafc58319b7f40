"""The ablation runner: summary maths on known numbers, the study file, and `vanillanet ablate` end to end on
synthetic data (two tiny variations x two seeds: rows written, resume skips finished runs, changed configs refused)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import yaml

from vanillanet import ablate, cli
from vanillanet.ablate import load_study, plan_runs, read_rows, run_study, summarize, summary_markdown
from vanillanet.util.errors import ConfigError
from vanillanet.util.stats import mean_std, t_quantile, t_quantile_own, welch_interval

T975_DF4 = 2.7764451051977987  # Student's t, 97.5 % quantile, 4 degrees of freedom


# ---- summary maths ----------------------------------------------------------------------------------------------
def test_mean_std_known_numbers():
    assert mean_std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx((5.0, math.sqrt(32 / 7)), rel=1e-15)
    mean, std = mean_std([3.5])
    assert mean == 3.5 and math.isnan(std)
    assert all(math.isnan(v) for v in mean_std([]))


@pytest.mark.parametrize("quantile", [t_quantile, t_quantile_own])
def test_t_quantile_closed_forms(quantile):
    for p in (0.6, 0.9, 0.975, 0.995):
        assert quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
        assert quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert quantile(0.975, 4) == pytest.approx(T975_DF4, rel=1e-9)
    assert quantile(0.025, 4) == pytest.approx(-T975_DF4, rel=1e-9)
    assert quantile(0.975, 1e9) == pytest.approx(1.959963984540054, rel=1e-6)
    assert t_quantile_own(0.975, math.inf) == pytest.approx(1.959963984540054, rel=1e-12)
    with pytest.raises(ValueError, match=r"p must lie in \(0, 1\), got 1.0"):
        quantile(1.0, 3)


def test_own_t_quantile_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (0.7, 1.5, 2.3, 3.0, 4.96, 7.5, 30.0, 300.0):
        for p in (0.55, 0.8, 0.975, 0.999):
            assert t_quantile_own(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_welch_interval_known_numbers():
    # equal sizes and variances: df = 2 (n - 1) = 4, se = sqrt(1/3 + 1/3)
    iv = welch_interval([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    half = T975_DF4 * math.sqrt(2 / 3)
    assert (iv.diff, iv.df) == (-1.0, pytest.approx(4.0, rel=1e-12))
    assert (iv.low, iv.high) == (pytest.approx(-1 - half, rel=1e-9), pytest.approx(-1 + half, rel=1e-9))
    assert not iv.excludes_zero
    # unequal: a = [1, 2, 3, 4] (var 5/3), b = [10, 12] (var 2): se^2 = 5/12 + 1, df = se^4 / ((5/12)^2/3 + 1)
    iv = welch_interval([1.0, 2.0, 3.0, 4.0], [10.0, 12.0])
    se2 = 5 / 12 + 1
    df = se2**2 / ((5 / 12) ** 2 / 3 + 1)
    assert iv.df == pytest.approx(df, rel=1e-12) and iv.diff == -8.5
    assert iv.high == pytest.approx(-8.5 + t_quantile_own(0.975, df) * math.sqrt(se2), rel=1e-9)
    assert iv.excludes_zero
    # no spread on either side: a zero-width interval; one value: no interval
    iv = welch_interval([1.0, 1.0], [0.5, 0.5])
    assert (iv.low, iv.high, iv.excludes_zero) == (0.5, 0.5, True)
    assert math.isnan(welch_interval([1.0], [0.5, 0.7]).low)


def _study(tmp_path: Path, **base) -> Path:
    study = {
        "description": "two tiny variations",
        "seeds": [0, 1],
        "base": {"data": "synthetic", "synthetic_size": 32, "img_size": 32, "width_mult": 0.0625, "epochs": 2,
                 "decay_epochs": 1, "warmup_epochs": 0.5, "batch_size": 8, "workers": 0, "mixup": 0.0,
                 "cutmix": 0.0, "model_ema": False, "log_every": 100, **base},
        "variations": {"base": {"group": "tricks", "paper": 76.36, "note": "both tricks"},
                       "relu": {"group": "tricks", "set": {"series_act": False}, "note": "plain ReLU"}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _rows(values: dict[str, list[float]]) -> list[dict]:
    return [dict(variation=name, seed=s, test_top1=v, deploy_top1=v if name != "relu" else None,
                 deploy_agreement=1.0 if name != "relu" else None, params_train=1000, params_deploy=500,
                 macs_train=2e6, macs_deploy=1e6, wall_seconds=10.0, cpu_seconds=9.0)
            for name, vs in values.items() for s, v in enumerate(vs)]


def test_summarize_known_numbers(tmp_path):
    study = load_study(_study(tmp_path))
    rows = _rows({"base": [0.90, 0.91, 0.92], "relu": [0.80, 0.81, 0.82]})
    rows.append(dict(rows[0], test_top1=0.5, variation="gone"))  # rows of variations no longer in the study: ignored
    base, relu = summarize(rows, study)
    assert (base["n"], base["mean"], base["std"]) == (3, pytest.approx(91.0), pytest.approx(1.0))
    assert base["diff"] is None and base["deploy_mean"] == pytest.approx(91.0) and base["agreement_min"] == 1.0
    half = T975_DF4 * math.sqrt(2 / 3)  # both sides: std 1 pp, n 3 -> df 4
    assert relu["diff"] == pytest.approx(-10.0) and relu["df"] == pytest.approx(4.0)
    assert (relu["low"], relu["high"]) == (pytest.approx(-10 - half), pytest.approx(-10 + half))
    assert relu["significant"] is True and relu["deploy_mean"] is None and relu["agreement_min"] is None
    md = summary_markdown([base, relu], study)
    assert "| base | tricks | 3 | 91.00 +- 1.00 | reference | - | 91.00 | 100.00 % |" in md
    assert f"| relu | tricks | 3 | 81.00 +- 1.00 | -10.00 [{-10 - half:+.2f}, {-10 + half:+.2f}] | yes | n/a |" in md
    assert "76.36" in md and "Welch" in md and "`relu`: plain ReLU" in md


def test_study_file_errors(tmp_path):
    path = _study(tmp_path)
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


# ---- the runner end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """The two variations x two seeds, run one after another in this process."""
    threads = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("ablate")
    path = _study(tmp)
    lines: list[str] = []
    result = run_study(load_study(path), tmp / "out", threads=1, log=lines.append)
    torch.set_num_threads(threads)
    return path, tmp / "out", result, lines


def test_runner_writes_rows_and_summary(finished_study):
    path, out, result, lines = finished_study
    assert result == dict(status="completed", ran=4, skipped=0, total=4, exit_code=0)
    rows = read_rows(out / "runs.jsonl")
    assert [(r["variation"], r["seed"]) for r in rows] == [("base", 0), ("base", 1), ("relu", 0), ("relu", 1)]
    for row in rows:
        summary = json.loads((Path(row["output"]) / "summary.json").read_text())
        assert row["test_top1"] == summary["test_top1"] and 0 <= row["test_top1"] <= 1
        assert row["config_hash"] and row["seconds"] > 0 and row["cpu_seconds"] > 0 and row["threads"] == 1
        assert (Path(row["output"]) / "train.log").is_file()
    base, relu = rows[0], rows[2]
    assert base["delta"] == {} and relu["delta"] == {"series_act": False}
    assert base["deploy_agreement"] == 1.0 and base["params_deploy"] < base["params_train"]
    assert relu["params_train"] < base["params_train"] and relu["deploy_top1"] is not None
    assert len({r["config_hash"] for r in rows}) == 4
    md = (out / "summary.md").read_text()
    assert "| base | tricks | 2 |" in md and "| relu | tricks | 2 |" in md
    assert (out / "summary.png").stat().st_size > 1000
    assert sum("started" in line for line in lines) == 4
    assert sum("finished" in line and "ETA" in line for line in lines) == 4


def test_rerun_skips_finished_runs(finished_study, monkeypatch):
    path, out, _, _ = finished_study

    def must_not_train(cfg):
        raise AssertionError(f"{cfg.output} was trained again")

    monkeypatch.setattr(ablate, "_execute", must_not_train)
    lines: list[str] = []
    result = run_study(load_study(path), out, threads=1, log=lines.append)
    assert (result["ran"], result["skipped"]) == (0, 4) and "4 already finished, 0 to run" in lines[0]
    assert len(read_rows(out / "runs.jsonl")) == 4


def test_changed_config_is_refused(finished_study, capsys):
    path, out, _, _ = finished_study
    assert cli.main(["ablate", str(path), "--output", str(out), "--set", "lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "base seed 0 was run with another config" in err and err.count("\n") == 1


def test_a_started_run_resumes_from_its_checkpoint(finished_study, tmp_path):
    """Drop the last row (as if the process died after the run's last checkpoint): the rerun trains only that run,
    resuming from its checkpoint (no step repeated), and writes the same result."""
    path, out, _, _ = finished_study
    rows_file = out / "runs.jsonl"
    lines = rows_file.read_text().splitlines()
    rows_file.write_text("\n".join(lines[:-1]) + "\n")
    log: list[str] = []
    result = run_study(load_study(path), out, threads=1, log=log.append)
    assert (result["ran"], result["skipped"]) == (1, 3)
    again = read_rows(rows_file)[-1]
    assert (again["variation"], again["seed"]) == ("relu", 1)
    assert again["test_top1"] == json.loads(lines[-1])["test_top1"]
    assert "resumed from" in (Path(again["output"]) / "train.log").read_text()


def test_sigterm_stops_the_study_and_the_rerun_resumes(tmp_path, monkeypatch):
    """SIGTERM in the middle of a run: that run checkpoints, the study stops with 143 and no row; the same command
    again resumes the run from its checkpoint and then runs the rest."""
    import vanillanet.train as train_module

    path = _study(tmp_path)
    real_train = train_module.train

    def train_killed_at_step_3(cfg, on_step=None):
        def kill(info):
            if info["step"] == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through the trainer's handler

        return real_train(cfg, on_step=kill)

    monkeypatch.setattr(train_module, "train", train_killed_at_step_3)
    lines: list[str] = []
    result = run_study(load_study(path), tmp_path / "out", threads=1, only=["relu"], log=lines.append)
    assert (result["status"], result["exit_code"], result["ran"]) == ("interrupted", 143, 0)
    assert any("relu seed 0 stopped at step" in line for line in lines) and "rerun the same command" in lines[-1]
    assert not (tmp_path / "out" / "runs.jsonl").exists()
    monkeypatch.setattr(train_module, "train", real_train)
    result = run_study(load_study(path), tmp_path / "out", threads=1, only=["relu"], log=lines.append)
    assert (result["status"], result["ran"]) == ("completed", 2)
    assert "resumed from" in (tmp_path / "out" / "runs" / "relu" / "seed0" / "train.log").read_text()


def test_cli_dry_run_and_errors(finished_study, capsys):
    path, out, _, _ = finished_study
    assert cli.main(["ablate", str(path), "--output", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 4 and all("finished" in line for line in listing)
    assert "series_act=False" in listing[-1]
    assert cli.main(["ablate", str(path), "--output", str(out), "--only", "nope"]) == 2
    assert "unknown variation(s) nope" in capsys.readouterr().err
    assert cli.main(["ablate", str(path), "--output", str(out), "--summary-only"]) == 0
    assert "| relu |" in capsys.readouterr().out


def test_parallel_workers(tmp_path):
    """--jobs 2: two worker processes, one row per run."""
    path = _study(tmp_path, epochs=1, decay_epochs=0)
    lines: list[str] = []
    result = run_study(load_study(path), tmp_path / "out", jobs=2, threads=1, only=["relu"], log=lines.append)
    assert result["status"] == "completed" and result["ran"] == 2
    rows = read_rows(tmp_path / "out" / "runs.jsonl")
    assert sorted(r["seed"] for r in rows) == [0, 1] and all(r["jobs"] == 2 for r in rows)
    assert "2 worker processes" in lines[0]


# ---- refused before any run (issue 17, findings 5 and 6) ---------------------------------------------------------
@pytest.fixture
def nothing_runs(monkeypatch):
    monkeypatch.setattr(ablate, "_execute", lambda cfg: pytest.fail(f"a run started: {cfg.output}"))


def _study_with(tmp_path: Path, **change) -> Path:
    path = _study(tmp_path)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **change}))
    return path


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
    path = _study(tmp_path)
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


def test_study_keys_the_study_owns_and_too_many_runs_are_refused(tmp_path, nothing_runs):
    with pytest.raises(ConfigError, match="variation 'relu' sets 'output', which the study sets for every run"):
        load_study(_study_with(tmp_path, variations={"relu": {"set": {"output": "x"}}}))
    with pytest.raises(ConfigError, match="base sets 'resume', which the study sets for every run"):
        load_study(_study_with(tmp_path, base={"resume": "never"}))
    path = tmp_path / "many.yaml"  # 100,000 seeds: refused at once, not after planning 100,000 configs
    path.write_text(_study(tmp_path).read_text().replace("- 0\n- 1\n", "".join(f"- {s}\n" for s in range(100_000))))
    with pytest.raises(ConfigError, match="100,000 seeds is above the limit of 1,000 per study; list fewer seeds"):
        load_study(path)
    study = load_study(_study(tmp_path))
    with pytest.raises(ConfigError, match=r"2 variations x 5,001 seeds = 10,002 runs, above the limit of 10,000"):
        plan_runs(study, tmp_path / "out", seeds=range(5001))
    with pytest.raises(ConfigError, match="threads must be None .* at least 1, got 0"):
        run_study(study, tmp_path / "out", threads=0)
    with pytest.raises(ConfigError, match="--jobs must be an integer of at least 1, got 0"):
        run_study(study, tmp_path / "out", jobs=0)


@pytest.mark.parametrize(("value", "message"), [
    ("Infinity", "test_top1 is inf, not a fraction in"), ("NaN", "test_top1 is nan, not a fraction in"),
    ("1.5", "test_top1 is 1.5, not a fraction in"), ('"high"', "test_top1 is 'high', not a fraction in"),
])
def test_summary_only_refuses_a_row_that_cannot_be_a_run(tmp_path, capsys, value, message):
    path, out = _study(tmp_path), tmp_path / "out"
    out.mkdir()
    good, bad = (json.dumps(row) for row in _rows({"base": [0.9, 0.5]}))
    (out / "runs.jsonl").write_text(good + "\n" + bad.replace('"test_top1": 0.5', f'"test_top1": {value}') + "\n")
    assert cli.main(["ablate", str(path), "--output", str(out), "--summary-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vanillanet ablate: error: {out / 'runs.jsonl'} line 2: {message} [0, 1]; fix or remove that "
                   "line (a removed run is run again)")
    assert not (out / "summary.md").exists()

"""ablate/runs.py: `vanillanet ablate` end to end on synthetic data (two tiny variations x two seeds): rows written,
a rerun skips finished runs, a changed config is refused, a started run resumes from its checkpoint, SIGTERM stops
the study resumably, worker processes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import ablation_study

from vanillanet import ablate, cli
from vanillanet.ablate import load_study, read_rows, run_study


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """The two variations x two seeds, run one after another in this process."""
    threads = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("ablate")
    path = ablation_study(tmp)
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

    monkeypatch.setattr(ablate.runs, "_execute", must_not_train)
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

    path = ablation_study(tmp_path)
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
    path = ablation_study(tmp_path, epochs=1, decay_epochs=0)
    lines: list[str] = []
    result = run_study(load_study(path), tmp_path / "out", jobs=2, threads=1, only=["relu"], log=lines.append)
    assert result["status"] == "completed" and result["ran"] == 2
    rows = read_rows(tmp_path / "out" / "runs.jsonl")
    assert sorted(r["seed"] for r in rows) == [0, 1] and all(r["jobs"] == 2 for r in rows)
    assert "2 worker processes" in lines[0]



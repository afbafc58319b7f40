"""training/loop.py: ``train_one_epoch`` (micro-batches to steps, one metrics row per step, a signal ends the
epoch after a checkpoint) and ``end_epoch`` (validate, log, checkpoint, keep the best), each given its parts."""

from __future__ import annotations

import signal

import pytest
from conftest import built_run

from vanillanet.training.loop import end_epoch, train_one_epoch
from vanillanet.training.runtime import StopSignal

pytestmark = pytest.mark.usefixtures("one_thread")


def parts_of(run):
    return run.data, run.deep, run.checkpoints, run.report


def test_one_epoch_then_its_end(tmp_path):
    state, run, said = built_run(tmp_path)
    seen = []
    run.report.on_step = seen.append
    stats = train_one_epoch(state, run.parts, *parts_of(run), 0, 0, StopSignal())
    assert state.step == 4 and [s["step"] for s in seen] == [1, 2, 3, 4]
    assert seen[-1]["epoch"] == 1.0 and stats["train_loss"] > 0 and stats["img_per_s"] > 0
    assert state.epoch_loss == (0.0, 0)  # the epoch's sum starts again
    assert {s["act_learn"] for s in seen} == {0.0}  # per-epoch deep training: epoch 0 of 1 decay epoch
    end_epoch(state, run.parts, *parts_of(run), 0, stats)
    rows = run.checkpoints.folder.metrics()
    assert [r["type"] for r in rows] == ["step"] * 4 + ["epoch"]
    assert rows[-1]["epoch"] == 1 and 0 <= rows[-1]["top1"] <= 1 and state.best_epoch == 1
    assert (tmp_path / "best.pth").exists() and (tmp_path / "checkpoint-00000004.pth").exists()
    assert any(line.startswith("epoch 1/2  loss ") for line in said)


def test_a_stop_request_checkpoints_after_the_step_and_ends_the_epoch(tmp_path):
    state, run, _ = built_run(tmp_path)
    stop = StopSignal()
    run.report.on_step = lambda info: stop.request(signal.SIGTERM) if info["step"] == 2 else None
    assert train_one_epoch(state, run.parts, *parts_of(run), 0, 0, stop) is None
    assert state.step == 3  # the request came after step 2: step 3 ran, then the checkpoint
    assert [p.name for _, p in run.checkpoints.folder.checkpoints()] == ["checkpoint-00000003.pth"]


def test_an_epoch_resumes_at_its_start_batch(tmp_path):
    state, run, _ = built_run(tmp_path)
    seen = []
    run.report.on_step = seen.append
    train_one_epoch(state, run.parts, *parts_of(run), 1, 2, StopSignal())
    assert [s["epoch"] for s in seen] == [1.75, 2.0]
    assert [s["act_learn"] for s in seen] == [1.0, 1.0]  # the decay epoch is over: a plain network

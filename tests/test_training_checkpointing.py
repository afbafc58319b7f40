"""training/checkpointing.py: when a checkpoint is written, that an unsound state never is, what a non-finite loss
does (the unverified newest checkpoint set aside, the last good one named) and an exact resume that reports
changed settings. (The whole loop under these faults: test_train_faults.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import built_run

from vanillanet.training.checkpointing import POSITION_KEYS, start_point
from vanillanet.util.devices import DistInfo
from vanillanet.util.errors import CheckpointError, ConfigError, NonFiniteLossError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_checkpoints_every_n_steps_and_on_a_stop(tmp_path):
    state, run, _ = built_run(tmp_path, "checkpoint_every=2")
    cp = run.checkpoints
    for step in (1, 2, 3):
        state.step = step
        assert cp.after_step(state, 0, step, stop=False) is False
    assert [s for s, _ in cp.folder.checkpoints()] == [2]
    state.step = 3
    assert cp.after_step(state, 0, 3, stop=True) is True
    assert [s for s, _ in cp.folder.checkpoints()] == [2, 3] and state.last_checkpoint.name.endswith("03.pth")
    saved = torch.load(state.last_checkpoint, weights_only=True)
    assert saved["class_names"] == run.data.classes and saved["arch"] == run.arch and not saved["epoch_done"]


@pytest.mark.parametrize(("where", "message"), [
    ("model", r"the weights became unusable by step 0 \(.*\); not saved \(last good checkpoint: none\); lower the lr"),
    ("ema", r"the EMA weights became unusable by step 0 .* check model_ema_decay"),
])
def test_an_unsound_state_is_never_saved(tmp_path, where, message):
    state, run, _ = built_run(tmp_path)
    module = state.model if where == "model" else state.ema.module
    with torch.no_grad():
        next(module.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match=message):
        run.checkpoints.save(state, 0, 1)
    assert run.checkpoints.folder.checkpoints() == []


def test_a_nonfinite_loss_sets_the_unverified_checkpoint_aside(tmp_path):
    state, run, _ = built_run(tmp_path)
    cp = run.checkpoints
    state.step = 1
    first = cp.save(state, 0, 1)
    assert cp.verify_step(state, [0.7], stop=False, epoch=0, batch=2) is False
    assert state.good_checkpoint == first  # a finite loss from its weights verified it
    state.step = 2
    second = cp.save(state, 0, 2)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 \(epoch 1, batch 3\); stopped without "
                                                 r"saving; the weights of checkpoint-00000002.pth gave it, so it was "
                                                 r"renamed .*last good checkpoint: .*checkpoint-00000001.pth"):
        cp.verify_step(state, [0.5, math.nan], stop=False, epoch=0, batch=3)
    assert not second.exists() and first.exists() and state.last_checkpoint == first
    assert cp.verify_step(state, [0.5], stop=True, epoch=0, batch=3) is True  # the stop request is passed on


def test_resume_restores_and_reports_changed_settings(tmp_path):
    state, run, _ = built_run(tmp_path)
    state.step = 2
    path = run.checkpoints.save(state, 0, 2)
    run.checkpoints.folder.append_metrics({"type": "step", "step": 3})  # logged after the checkpoint: dropped
    fresh, again, said = built_run(tmp_path, "lr=0.01", batch_size=4, seed=6)
    again.checkpoints.resume(fresh, path, again.data.micro_per_epoch, again.deep)
    assert (fresh.step, fresh.start_epoch, fresh.start_batch) == (2, 0, 2)
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(),
                                                  state.model.state_dict().values()))
    changed = next(line for line in said if line.startswith("resuming with changed settings"))
    assert "lr " in changed and "seed 5 -> 6" in changed and "does not continue exactly" in changed
    assert "seed" in POSITION_KEYS and again.checkpoints.folder.metrics() == []


def test_resume_refuses_another_architecture(tmp_path):
    state, run, _ = built_run(tmp_path / "a")
    path = run.checkpoints.save(state, 0, 1)
    other, again, _ = built_run(tmp_path / "b", model="vanillanet_6")
    with pytest.raises(CheckpointError, match="was trained as .*vanillanet_5.*, not .*vanillanet_6.*resume with the "
                                              "same model settings"):
        again.checkpoints.resume(other, path, again.data.micro_per_epoch, again.deep)


def test_start_point_of_a_fresh_and_a_used_folder(tmp_path):
    state, run, _ = built_run(tmp_path)
    folder = run.checkpoints.folder
    assert start_point(folder, None, DistInfo()) is None
    path = run.checkpoints.save(state, 0, 1)
    assert start_point(folder, "auto", DistInfo()) == str(path)
    with pytest.raises(ConfigError, match="holds checkpoints"):
        start_point(folder, None, DistInfo())

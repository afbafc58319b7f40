"""training/state.py: ``TrainState`` to a checkpoint dict and back (where the loop restarts, the optimizer's moments
from the file and its settings from this run), and RNG states that survive ``torch.load(weights_only=True)``."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from conftest import STEPS_PER_EPOCH, make_state

from vanillanet.training.state import TrainState, get_rng_state, set_rng_state
from vanillanet.util.errors import CheckpointError


def train_steps(state: TrainState, n: int) -> None:
    for _ in range(n):
        loss = state.model(torch.randn(2, 3, 32, 32)).square().mean()
        loss.backward()
        state.optimizer.step()
        state.optimizer.zero_grad()
        state.step += 1
        state.scheduler.step_update(state.step)
        if state.ema is not None:
            state.ema.update(state.model)


def round_trip(ckpt: dict) -> dict:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_checkpoint_round_trip_restores_everything():
    state = make_state()
    train_steps(state, 6)
    state.best_top1, state.best_epoch, state.epoch_loss = 0.25, 1, (3.0, 2)
    state.model.act_learn = 0.5  # deep training half way
    ckpt = round_trip(state.to_checkpoint(1, 2, [get_rng_state()], 12.5, class_names=["a", "b"]))
    assert ckpt["class_names"] == ["a", "b"] and ckpt["act_learn"] == 0.5 and ckpt["model_ema"]

    fresh = make_state(seed=1)
    fresh.restore(ckpt, STEPS_PER_EPOCH)
    assert (fresh.start_epoch, fresh.start_batch, fresh.step) == (1, 2, 6)
    assert (fresh.best_top1, fresh.best_epoch, fresh.seconds, fresh.epoch_loss) == (0.25, 1, 12.5, (3.0, 2))
    for a, b in zip(fresh.model.state_dict().values(), state.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(fresh.eval_model.state_dict().values(), state.ema.module.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh.lr() == pytest.approx(state.lr())  # the schedule is a function of the step


def test_a_finished_epoch_restarts_at_the_next_one():
    state = make_state(ema=False)
    ckpt = round_trip(state.to_checkpoint(0, STEPS_PER_EPOCH, [], 1.0))
    assert "model_ema" not in ckpt and state.eval_model is state.model
    state.restore(ckpt, STEPS_PER_EPOCH)
    assert (state.start_epoch, state.start_batch, state.epoch_loss) == (1, 0, (0.0, 0))
    state.restore({**ckpt, "epoch_done": False}, STEPS_PER_EPOCH)  # evaluated after the resume
    assert (state.start_epoch, state.start_batch) == (0, STEPS_PER_EPOCH)


def test_resume_keeps_this_runs_optimizer_settings():
    old = make_state(lr=1e-3)
    train_steps(old, 2)
    new = make_state(lr=5e-3)
    new.restore(old.to_checkpoint(0, 2, [], 0.0), STEPS_PER_EPOCH)
    assert new.optimizer.param_groups[0]["initial_lr"] == pytest.approx(5e-3)
    moments = [s["exp_avg"] for s in new.optimizer.state.values()]
    assert moments and all(torch.equal(a, b["exp_avg"]) for a, b in zip(moments, old.optimizer.state.values()))


def test_another_optimizer_is_a_one_line_checkpoint_error():
    sgd = make_state(opt="sgd")
    train_steps(sgd, 1)
    lamb = make_state(opt="lamb")
    with pytest.raises(CheckpointError, match="optimizer state of the checkpoint does not fit.*same --opt") as info:
        lamb.restore(sgd.to_checkpoint(0, 1, [], 0.0) | {"optimizer": {"state": {}, "param_groups": []}},
                     STEPS_PER_EPOCH)
    assert "\n" not in str(info.value)


def test_rng_states_survive_a_safe_load_and_replay_every_generator():
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    np.random.standard_normal()  # a cached gaussian in numpy's state too
    saved = round_trip({"rng": get_rng_state()})["rng"]
    first = (torch.rand(3), random.random(), np.random.standard_normal(2))
    set_rng_state(saved)
    again = (torch.rand(3), random.random(), np.random.standard_normal(2))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and np.array_equal(first[2], again[2])


def test_elapsed_counts_the_time_before_a_resume():
    state = make_state(ema=False)
    state.seconds = 100.0
    assert 100.0 <= state.elapsed() < 160.0

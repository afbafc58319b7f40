"""``training.deep_training``: the act_learn schedules: 0 at the start, exactly 1 from decay_epochs on, their
shapes, and one-line errors for unknown schedules and cadences."""

from __future__ import annotations

import pytest

from vanillanet import act_learn_schedule


@pytest.mark.parametrize("mode", ["linear", "cosine"])
def test_schedule_endpoints(mode):
    assert act_learn_schedule(0, 100, mode) == 0.0
    assert act_learn_schedule(50, 100, mode) == pytest.approx(0.5)
    assert act_learn_schedule(100, 100, mode) == 1.0
    assert act_learn_schedule(300, 100, mode) == 1.0
    assert act_learn_schedule(99.999, 100, mode) < 1.0
    values = [act_learn_schedule(s / 7, 10, mode) for s in range(0, 71)]  # per iteration, 7 steps an epoch
    assert values == sorted(values) and values[-1] == 1.0


def test_schedule_shapes_and_errors():
    assert act_learn_schedule(25, 100, "linear") == 0.25
    assert act_learn_schedule(25, 100, "cosine") == pytest.approx((1 - 2**-0.5) / 2)
    assert act_learn_schedule(0, 0) == 1.0
    with pytest.raises(ValueError, match="linear"):
        act_learn_schedule(1, 10, "step")

"""``model.blocks``: the shared act_learn slope reaches every layer, is a leaky ReLU of slope act_learn, and is
validated."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_variant

from vanillanet import ConversionError


def test_act_learn_setter_reaches_every_layer():
    torch.manual_seed(4)
    model = build_variant("vanillanet_6", num_classes=5)
    model.act_learn = 0.25
    assert model.act_learn == 0.25
    slopes = {id(m.slope) for m in model.stages}
    assert slopes == {id(model.slope)}
    assert all(m.slope.value == 0.25 for m in model.stages)
    ema = copy.deepcopy(model)  # a copy has its own slope, shared among its own blocks
    ema.act_learn = 0.75
    assert model.act_learn == 0.25 and all(m.slope.value == 0.75 for m in ema.stages)
    assert "slope" not in "".join(model.state_dict())  # not a state_dict key: original layout kept


def test_slope_is_leaky_relu_with_act_learn():
    torch.manual_seed(5)
    block = build_variant("vanillanet_5").stages[0].eval()
    block.slope.value = 0.3
    x = torch.randn(1, 32, 8, 8)
    expected = block.act(block.pool(block.conv2(torch.nn.functional.leaky_relu(block.conv1(x), 0.3))))
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_act_learn_is_validated():
    model = build_variant("vanillanet_5")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"act_learn must lie in \[0, 1\], got .*; 0 = ReLU, 1 = identity"):
            model.act_learn = bad
    deploy = build_variant("vanillanet_5", deploy=True)
    assert deploy.act_learn == 1.0
    deploy.act_learn = 1.0
    with pytest.raises(ConversionError, match="deploy form"):
        deploy.act_learn = 0.5

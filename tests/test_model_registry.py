"""``model.registry``: the one model factory ``create_model``."""

from __future__ import annotations

import pytest
from conftest import CKPT_WIDTH

from vanillanet import VanillaNet
from vanillanet.model.registry import create_model
from vanillanet.util.errors import ConfigError


def test_create_model_without_checkpoint():
    model = create_model("vanillanet_5", num_classes=3, width_mult=CKPT_WIDTH)
    assert isinstance(model, VanillaNet) and model.num_classes == 3
    for checkpoint in (None, "missing.pth"):  # the name is checked before the file is read
        with pytest.raises(ConfigError, match="unknown model 'vanillanet_99': choose one of vanillanet_5, "):
            create_model("vanillanet_99", checkpoint)

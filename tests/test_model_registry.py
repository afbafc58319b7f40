"""``model.registry``: the one model factory ``create_model``."""

from __future__ import annotations

import pytest
import torch
from conftest import CKPT_WIDTH, build_variant

from vanillanet import VanillaNet
from vanillanet.model.registry import MAX_PARAMS, create_model
from vanillanet.util.errors import ConfigError


def test_create_model_without_checkpoint():
    model = create_model("vanillanet_5", num_classes=3, width_mult=CKPT_WIDTH)
    assert isinstance(model, VanillaNet) and model.num_classes == 3
    for checkpoint in (None, "missing.pth"):  # the name is checked before the file is read
        with pytest.raises(ConfigError, match="unknown model 'vanillanet_99': choose one of vanillanet_5, "):
            create_model("vanillanet_99", checkpoint)


def test_an_implied_model_above_the_limit_is_refused(tmp_path):
    model = build_variant("vanillanet_5", num_classes=10)
    sd = model.state_dict()
    sd["cls2.0.weight"] = torch.zeros(300_000, 1, 1, 1)  # 1.2 MB, but the train-form head is 300k x 300k
    torch.save({"model": sd}, tmp_path / "wide.pth")
    with pytest.raises(ConfigError, match=r"implies a model of 90,0\d\dM parameters \(300000 classes.*--allow-large"):
        create_model(None, tmp_path / "wide.pth")
    with pytest.raises(ConfigError, match="above the 1,000M limit"):
        create_model("vanillanet_5", num_classes=2_000_000)
    with torch.device("meta"):  # the largest variant, full width, is well within the limit
        largest = create_model("vanillanet_13_x1_5")
    assert 0.2 * MAX_PARAMS < sum(p.numel() for p in largest.parameters()) < 0.3 * MAX_PARAMS

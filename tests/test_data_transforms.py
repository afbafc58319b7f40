"""``data.transforms``: the training transforms on every source and the checks of the eval preprocessing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from vanillanet.data.sources import dataset_defaults
from vanillanet.data.transforms import build_transform
from vanillanet.util.errors import ConfigError


@pytest.mark.parametrize("augment", ["timm", "light", "none"])
def test_train_transforms_on_grayscale(augment: str) -> None:
    random.seed(0)
    torch.manual_seed(0)
    d = dataset_defaults("fashion-mnist")
    tf = build_transform(True, 32, in_chans=1, mean=d.mean, std=d.std, augment=augment)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), "L")
    for _ in range(5):
        assert tf(img).shape == (1, 32, 32)


def test_preprocess_settings_are_checked():
    from vanillanet.data.transforms import resolve_preprocess

    with pytest.raises(ConfigError, match=r"img_size 100000 px is above the 4096 px limit .*--allow-large"):
        resolve_preprocess(meta={"img_size": 100000})
    assert resolve_preprocess(meta={"img_size": 5000}, allow_large=True).img_size == 5000
    with pytest.raises(ConfigError, match=r"the normalisation std must be positive, got \[0.5, 0.0, 0.5\]"):
        resolve_preprocess(std=(0.5, 0.0, 0.5))
    with pytest.raises(ConfigError, match="unknown interpolation 'sinc'"):
        resolve_preprocess(interpolation="sinc")

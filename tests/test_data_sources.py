"""``data.sources``: what ``--data`` may name, split and channel checks, grayscale sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_dataset_error

from vanillanet.data.sources import build_dataset
from vanillanet.data.transforms import build_transform
from vanillanet.util.errors import ConfigError


def test_grayscale_channels(folder: Path) -> None:
    rgb = build_dataset("digits", "val", in_chans=3)[0][0]
    arr = np.asarray(rgb)
    assert rgb.mode == "RGB" and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    assert build_dataset(folder, "train", in_chans=1)[0][0].mode == "L"
    tf = build_transform(False, 16, in_chans=3, mean=(0.5,), std=(0.25,), crop_pct=1.0)
    x = build_dataset("digits", "val", tf, in_chans=3)[0][0]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[2])
    tf1 = build_transform(False, 16, in_chans=1, mean=(0.2, 0.4, 0.6), std=(0.5, 0.5, 0.5), crop_pct=1.0)
    assert tf1.transforms[-1].mean.tolist() == pytest.approx([0.4])
    with pytest.raises(ConfigError, match="give 1 or 3"):
        build_transform(False, 16, in_chans=3, mean=(0.2, 0.4), std=(0.5,))


def test_wrong_path(tmp_path: Path) -> None:
    one_line_dataset_error(r"does not exist; pass an ImageFolder root .* fashion-mnist, digits, synthetic",
                           tmp_path / "nope", "train")


def test_bad_split_and_channels(folder: Path) -> None:
    with pytest.raises(ConfigError, match="split must be"):
        build_dataset("digits", "test")
    with pytest.raises(ConfigError, match="in_chans must be 1 or 3"):
        build_dataset(folder, "train", in_chans=4)

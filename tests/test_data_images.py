"""``data.images``: 16-bit and float images keep their range; size limits are checked from the header, before
decoding."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from vanillanet.data.datasets import (
    num_skipped,
)
from vanillanet.data.sources import build_dataset
from vanillanet.util.errors import DataError


def test_sixteen_bit_and_float_images_keep_their_range(tmp_path):
    from vanillanet.data.images import open_image

    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"  # PIL alone would clip this to white in RGB
    got = np.asarray(open_image(tmp_path / "g16.png", "L"))
    assert np.array_equal(got, np.round(gradient / 257).astype(np.uint8))
    rgb = np.asarray(open_image(tmp_path / "g16.png", "RGB"))
    assert rgb.shape == (64, 64, 3) and np.array_equal(rgb[..., 1], got)
    Image.fromarray((gradient / 65535).astype(np.float32)).save(tmp_path / "f.tif")
    assert np.abs(np.asarray(open_image(tmp_path / "f.tif", "L")).astype(int) - got).max() <= 1  # not black
    Image.fromarray(np.full((4, 4), 3.0, dtype=np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(ValueError, match=r"float image with values in \[3, 3\], outside the 0..1 range"):
        open_image(tmp_path / "hdr.tif", "RGB")


def test_image_size_limits_come_before_decoding(tmp_path, caplog):
    from vanillanet.data.images import MAX_ASPECT, check_pixels, open_image

    Image.new("RGB", (2000, 10), (90, 90, 90)).save(tmp_path / "wide.png")
    with pytest.raises(Image.DecompressionBombError, match=r"2000x10 px has an aspect ratio above 100:1"):
        open_image(tmp_path / "wide.png", "RGB")
    assert open_image(tmp_path / "wide.png", "RGB", limit=False).size == (2000, 10)
    with pytest.raises(Image.DecompressionBombError, match="above the 89 Mpx limit"):
        check_pixels(10_000, 10_000)
    check_pixels(MAX_ASPECT * 3, 3)
    # a folder counts such an image as unreadable (skipped and counted), or refuses it with strict
    root = tmp_path / "folder"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(root / split / "a" / "ok.png")
        (root / split / "a" / "wide.png").write_bytes((tmp_path / "wide.png").read_bytes())
    ds = build_dataset(root, "val")
    with caplog.at_level(logging.WARNING):
        assert [ds[i][0].size for i in range(2)] == [(20, 20), (20, 20)] and num_skipped(ds) == 1
    assert "aspect ratio above 100:1" in caplog.text
    assert build_dataset(root, "val", allow_large=True)[1][0].size == (2000, 10)
    with pytest.raises(DataError, match="aspect ratio above 100:1"):
        build_dataset(root, "val", strict=True)[1]


def test_the_input_batch_limit_counts_every_dimension():
    from vanillanet.data.images import MAX_BATCH_BYTES, check_batch_limit
    from vanillanet.util.errors import ConfigError

    check_batch_limit(256, 224)  # a usual large batch: 0.15 GB
    side = int((MAX_BATCH_BYTES / 12) ** 0.5)
    check_batch_limit(1, side)  # exactly at the limit passes
    with pytest.raises(ConfigError, match=r"\(4096 x 3 x 4096 x 4096\) make a 824.6 GB input batch, above the 4.3 GB "
                                          r"limit .*allow_large=True"):
        check_batch_limit(4096, 4096)
    with pytest.raises(ConfigError, match=r"\(65 x 1 x 4096 x 4096\) make a 4.4 GB"):
        check_batch_limit(65, 4096, 1)
    check_batch_limit(4096, 4096, allow_large=True)

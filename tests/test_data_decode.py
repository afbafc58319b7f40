"""data.decode: header probing, libjpeg-turbo decoding (full and DCT-scaled) against PIL, the PIL fallback for what
libjpeg-turbo cannot give (CMYK, PNG, 16-bit), size limits from the header, and unreadable input."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from conftest import photo_jpeg
from PIL import Image

from vanillanet.data import decode as dec
from vanillanet.data.images import _UNREADABLE


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def test_probe_reads_the_size_from_the_header(rng):
    info = dec.probe(photo_jpeg(rng, 96, 72))
    assert (info.width, info.height) == (96, 72) and info.fast == (dec.simplejpeg is not None)
    assert not dec.probe(photo_jpeg(rng, 40, 30, mode="CMYK")).fast  # libjpeg-turbo has no CMYK -> RGB
    assert dec.probe(png(np.zeros((5, 7, 3), np.uint8))) == dec.Probe(7, 5, False)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_full_size_decode_matches_pil(rng, mode):
    data = photo_jpeg(rng, 96, 72, mode=mode)
    out = dec.decode(data, "RGB")
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert out.shape == (72, 96, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref).max() <= 1  # the same libjpeg-turbo, same IDCT and upsampling
    gray = dec.decode(data, "L")
    assert gray.shape == (72, 96, 1)
    diff = np.abs(gray[..., 0].astype(int) - np.asarray(Image.open(io.BytesIO(data)).convert("L")))
    assert diff.mean() < 1 and diff.max() <= 8  # libjpeg's luma (Y) vs PIL's RGB -> L: rounding apart


@pytest.mark.parametrize("fast", [True, False])
def test_reduced_size_decoding_keeps_the_requested_size(rng, monkeypatch, fast):
    if not fast:
        monkeypatch.setattr(dec, "simplejpeg", None)  # PIL's draft mode: the same libjpeg scaling
    data = photo_jpeg(rng, 400, 300)
    full = dec.decode(data, info=dec.Probe(400, 300, fast and dec.simplejpeg is not None))
    cases = {(0, 0): (300, 400), (200, 150): (150, 200), (99, 70): (75, 100), (201, 10): (300, 400), (10, 10): (38, 50)}
    for need, shape in cases.items():
        out = dec.decode(data, min_size=need, info=dec.probe(data))
        assert out.shape[:2] == shape, need
        small = np.asarray(Image.fromarray(full).resize(shape[::-1], Image.BOX), np.float64)
        assert np.abs(out - small).mean() < 4  # the same picture, only fewer pixels


def test_png_and_16_bit_images_go_through_the_reference_loader():
    ramp = np.linspace(0, 65535, 64 * 8).astype(np.uint16).reshape(8, 64)
    out = dec.decode(png(ramp), "RGB")
    assert out.shape == (8, 64, 3) and out[0, 0, 0] == 0 and out[-1, -1, 0] == 255  # scaled, not clipped
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    assert dec.decode(png(rgba), "L").shape == (4, 4, 1)


def test_size_limits_are_checked_before_decoding(rng):
    tall = photo_jpeg(rng, 2, 600)  # aspect 300:1
    with pytest.raises(Image.DecompressionBombError, match="aspect ratio above"):
        dec.decode(tall)
    assert dec.decode(tall, limit=False).shape == (600, 2, 3)


@pytest.mark.parametrize("data", [photo_jpeg(np.random.default_rng(1), 64, 48)[:700], b"\xff\xd8\xff\xe0 not a jpeg",
                                  b"plain text, no image", b""])
def test_unreadable_input_raises_what_the_datasets_count_as_a_skip(data):
    with pytest.raises(_UNREADABLE, match=r"."):
        dec.decode(data)


def test_not_an_image_names_the_bytes():
    with pytest.raises(ValueError, match="not an image file .*no image format recognises them"):
        dec.probe(b"hello world")


def test_read_file_refuses_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not an image file"):
        dec.read_file(fifo)  # refused before the open that would block
    (tmp_path / "a.jpg").write_bytes(b"abc")
    assert dec.read_file(tmp_path / "a.jpg") == b"abc"

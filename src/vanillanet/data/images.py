"""Opening one image safely: the size limits (checked from the header, before decoding) and the conversion of 16-bit and
float images by their true range.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..util.errors import ConfigError
from ..util.safe_open import special_kind

_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


MAX_IMG_SIZE = 4096  # network input size; one 4096 px fp32 RGB image is 0.2 GB before the first layer


MAX_BATCH_BYTES = 4 * 2**30  # one fp32 input batch (batch x channels x size^2 x 4 bytes); activations are ~10x it


MAX_IMAGE_PIXELS = 89_478_485  # PIL's own bomb threshold (a 0.25 GB RGB image)


MAX_ASPECT = 100  # long side / short side


def check_img_size_limit(img_size: int, *, allow_large: bool = False, what: str = "img_size") -> int:
    """``img_size`` if it is at least 1 and, unless ``allow_large``, at most ``MAX_IMG_SIZE``; else ConfigError."""
    if img_size < 1:
        raise ConfigError(f"{what} must be at least 1, got {img_size}")
    if img_size > MAX_IMG_SIZE and not allow_large:
        raise ConfigError(f"{what} {img_size} px is above the {MAX_IMG_SIZE} px limit (one image would take "
                          f"{3 * 4 * img_size**2 / 1e9:.1f} GB before the first layer); pass --allow-large "
                          "(allow_large=True) if you mean it")
    return img_size


def check_batch_limit(batch_size: int, img_size: int, in_chans: int = 3, *, allow_large: bool = False,
                      what: str = "--batch-size and --img-size") -> None:
    """ConfigError when one fp32 input batch of ``batch_size`` x ``in_chans`` x ``img_size``^2 would exceed
    ``MAX_BATCH_BYTES`` (unless ``allow_large``): checked before anything is allocated, on every route that builds an
    input batch (bench, fast_inference, predict, eval)."""
    size = 4 * batch_size * in_chans * img_size**2
    if size > MAX_BATCH_BYTES and not allow_large:
        raise ConfigError(f"{what} ({batch_size} x {in_chans} x {img_size} x {img_size}) make a {size / 1e9:,.1f} GB "
                          f"input batch, above the {MAX_BATCH_BYTES / 1e9:.1f} GB limit (the activations take about "
                          "ten times that); use a smaller batch or image size, or pass --allow-large "
                          "(allow_large=True) if you mean it")


def check_pixels(width: int, height: int) -> None:
    """Image.DecompressionBombError (which every reader treats as an unreadable image) for an image whose size,
    read from its header, is above ``MAX_IMAGE_PIXELS`` or whose aspect ratio is above ``MAX_ASPECT``."""
    if width * height > MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{width}x{height} px is above the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit; "
                                           "pass --allow-large if you mean it")
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        raise Image.DecompressionBombError(f"{width}x{height} px has an aspect ratio above {MAX_ASPECT}:1, which "
                                           "resizing to the network input would blow up to gigabytes; crop it, or "
                                           "pass --allow-large")


def open_bytes(data: bytes) -> Image.Image:
    """An image file held in memory, opened lazily (``Image.open``); a ValueError naming the problem when no image
    format recognises it (PIL's own message names an anonymous buffer)."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ValueError(f"not an image file ({len(data)} bytes starting {data[:8]!r}, no image format "
                         "recognises them)") from None


def open_image(path: str | Path | Image.Image, mode: str, *, limit: bool = True) -> Image.Image:
    """A decoded image in ``mode`` ("L" or "RGB"); size limits checked before decoding (unless ``limit`` is False).
    16-bit images are scaled from 0..65535 and float images from 0..1 (PIL would clip them to white or black);
    float images outside [0, 1] are refused (their range is unknown)."""
    if isinstance(path, Image.Image):
        img = path
    else:
        kind = special_kind(path)
        if kind is not None:  # PIL would block on a FIFO or read a device without end
            raise ValueError(f"{path} is {kind}, not an image file")
        img = Image.open(path)
    with img:
        if limit:
            check_pixels(*img.size)
        return _eight_bit(img).convert(mode)  # convert() forces the full decode inside the caller's try


def _eight_bit(img: Image.Image) -> Image.Image:
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img, dtype=np.float64)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    top = 1.0 if img.mode == "F" else 65535.0
    if lo < 0 or hi > top:
        kind = "float" if img.mode == "F" else "integer"
        raise ValueError(f"{kind} image with values in [{lo:g}, {hi:g}], outside the 0..{top:g} range it is read "
                         "with; save it as an 8- or 16-bit image")
    return Image.fromarray(np.round(values * (255.0 / top)).astype(np.uint8), mode="L")

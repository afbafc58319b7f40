"""Decoding image files fast for training (``--decoder fast``): the size from the header first, then the pixels as a
uint8 array, decoded at a reduced size (DCT scaling) when the caller needs fewer pixels than the file holds.

The backend is the fastest measured here (benchmarks/loader.py's photo-like 500x375 JPEGs of ~100 KB, one core):
simplejpeg (libjpeg-turbo) ~1,040 decodes per CPU-second, torchvision.io.decode_jpeg ~1,020, PIL ~790. simplejpeg
also decodes JPEGs at 1/2, 1/4 or 1/8 of their size inside the IDCT, which torchvision cannot; so it is the backend
when installed (``pip install vanillanet[fast]``), PIL in draft mode (the same libjpeg scaling) otherwise.

What libjpeg-turbo cannot give as RGB or grayscale (CMYK/YCCK JPEGs, PNG, 16-bit and float images, any other
format) goes through PIL with ``images.open_image``'s conversions, so every file a folder accepts decodes the same way
it does with ``--decoder pil``. Size limits are checked from the header before any pixel is decoded; an unreadable
file raises one of ``images._UNREADABLE``, which the datasets count as a skip (or refuse with ``--strict-data``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..util.safe_open import special_kind
from .images import _eight_bit, check_pixels

try:  # the optional fast backend (extra "fast")
    import simplejpeg
except ImportError:  # pragma: no cover - exercised where simplejpeg is absent
    simplejpeg = None

__all__ = ["BACKEND", "Probe", "decode", "probe", "read_file"]

BACKEND = "simplejpeg" if simplejpeg is not None else "pil"

_FAST_COLOURS = ("YCbCr", "Gray", "RGB")  # what libjpeg-turbo converts to RGB and grayscale itself
_MODES = {"RGB": "RGB", "L": "GRAY"}


@dataclass(frozen=True)
class Probe:
    """What the header says: the size in pixels and whether the fast backend decodes the file."""

    width: int
    height: int
    fast: bool


def read_file(path: str | Path) -> bytes:
    """The bytes of an image file (a FIFO, device or socket is refused with a ValueError before any read)."""
    kind = special_kind(path)
    if kind is not None:
        raise ValueError(f"{path} is {kind}, not an image file")
    with open(path, "rb") as f:
        return f.read()


def probe(data: bytes) -> Probe:
    """The size of an encoded image from its header (no pixel decoded); ValueError/OSError for no image."""
    if simplejpeg is not None and data[:2] == b"\xff\xd8":
        try:
            height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
            return Probe(int(width), int(height), colour in _FAST_COLOURS)
        except ValueError:
            pass  # a JPEG libjpeg-turbo cannot read: PIL's turn (it names the problem)
    with _open(data) as img:
        return Probe(img.width, img.height, False)


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ValueError(f"not an image file ({len(data)} bytes starting {data[:8]!r}, no image format recognises "
                         "them)") from None


def decode(data: bytes, mode: str = "RGB", *, min_size: tuple[int, int] = (0, 0), limit: bool = True,
           info: Probe | None = None) -> np.ndarray:
    """The image in ``data`` as a uint8 array (H, W, 3) for mode "RGB" or (H, W, 1) for "L". ``min_size`` (width,
    height; (0, 0): the full size): the smallest size the caller needs; a JPEG is decoded at the smallest libjpeg
    scale (1, 1/2, 1/4 or 1/8) that keeps both sides at least that large (callers rescale their coordinates by the
    returned shape).
    ``limit``: refuse images above ``images.MAX_IMAGE_PIXELS`` / ``MAX_ASPECT`` (checked from the header)."""
    if mode not in _MODES:
        raise ValueError(f"mode must be RGB or L, got {mode!r}")
    info = info or probe(data)
    if limit:
        check_pixels(info.width, info.height)
    factor = _scale_factor(info, min_size)
    if info.fast:
        size = dict(min_width=-(-info.width // factor), min_height=-(-info.height // factor)) if factor > 1 else {}
        out = simplejpeg.decode_jpeg(data, colorspace=_MODES[mode], **size)
        return out if out.ndim == 3 else out[..., None]
    img = _open(data)
    if factor > 1 and img.format == "JPEG":
        img.draft(mode, (info.width // factor, info.height // factor))  # PIL picks the scale by floor division
    with img:
        out = np.asarray(_eight_bit(img).convert(mode))  # open_image's conversion (16-bit, float) on bytes
    return out if out.ndim == 3 else out[..., None]


def _scale_factor(info: Probe, min_size: tuple[int, int]) -> int:
    """The largest of 1, 2, 4, 8 that keeps the decoded image at least ``min_size`` (scales between 1 and 1/2
    decode no faster than the full size with libjpeg-turbo, so they are not used); 1 if a side is not positive."""
    want_w, want_h = int(min_size[0]), int(min_size[1])
    if want_w <= 0 or want_h <= 0:
        return 1
    factor = 1
    while factor < 8 and info.width // (2 * factor) >= want_w and info.height // (2 * factor) >= want_h:
        factor *= 2
    return factor

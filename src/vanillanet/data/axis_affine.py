"""PIL's affine transform computed fast where the map moves pixels along one axis only: timm's RandAugment
translate and shear operations, in ``--decoder fast``'s workers (``fast_geometry``).

timm's ``TranslateX/Y(Rel)`` and ``ShearX/Y`` call ``Image.transform(AFFINE)``, which samples every output pixel
through a per-pixel function call: ~1.85 ms per 224 px RGB image in bicubic (0.5-0.9 ms here), most of
RandAugment's cost in a worker. Their maps move pixels along one axis only (ShearX reads row y at x + f (y + 0.5),
TranslateX at x + p), so every output row (ShearY, TranslateY: column) is its input row shifted by one sub-pixel
amount: a 4-tap (bilinear: 2-tap) filter with one weight set per row, computed here on the whole image at once. The
arithmetic is PIL's (``libImaging/Geometry.c``):

- output pixel (x, y) reads the source at the map of its centre (x + 0.5, y + 0.5); the sample grid is that
  position minus 0.5 (so a shift of 0 copies the image);
- an output pixel whose source centre falls outside the image gets the fill colour; the filter's taps beyond the
  edge read the edge pixel;
- bicubic is the cubic of PIL's transforms (a = -1, evaluated in PIL's nested form; PIL's resize uses a = -0.5),
  bilinear the 2-tap interpolation; the value is clamped to [0, 255] and truncated, not rounded.

The result equals PIL's to the bit except where the exact value lies within float rounding of an integer (PIL
computes in double, this in float32): tests/test_data_axis_affine.py compares both over random maps. Other modes,
nearest sampling and fills that are not one number per band go to PIL itself.

``fast_geometry``'s RandAugment also takes the image as an (H, W, C) uint8 array and keeps it one as long as only
these operations run: PIL holds RGB as 4 bytes a pixel, so every trip between an array and a PIL image is a
repacking copy (~0.05 ms each way at 224 px), and with two operations drawn, each run with probability 0.5, 40 % of
the samples draw none of PIL's own operations (rotate, the colour and look-up-table ones).
"""

from __future__ import annotations

import copy
import functools
import random
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["ArrayRandAugment", "as_array", "as_image", "fast_geometry", "shift_lines",
           "timm_resample", "transform_along_axis"]

_BILINEAR, _BICUBIC = int(Image.Resampling.BILINEAR), int(Image.Resampling.BICUBIC)
_TAPS = {_BILINEAR: 2, _BICUBIC: 4}


def shift_lines(pixels: np.ndarray, axis: int, coef: float, offset: float, resample: int,
                fill: tuple[int, ...]) -> np.ndarray:
    """PIL's affine transform of an (H, W, C) uint8 array along one axis: ``axis`` 1 (rows) is
    ``transform(AFFINE, (1, coef, offset, 0, 1, 0))``, row y read at x + coef (y + 0.5) + offset; ``axis`` 0
    (columns) is ``(1, 0, 0, coef, 1, offset)``. ``resample``: bilinear or bicubic (PIL's codes); ``fill``: C
    values for pixels read from outside. See the module docstring."""
    lines = pixels if axis == 1 else pixels.transpose(1, 0, 2)  # (lines, length, C) views
    n, length, c = lines.shape
    taps = _TAPS[resample]
    shift = coef * (np.arange(n) + 0.5)  # per line, as PIL: ((x + 0.5) + coef (y + 0.5)) + offset
    start = ((0.5 + shift) + offset) - 0.5  # the sample position of x = 0
    whole = np.floor(start)
    frac = torch.from_numpy((start - whole).astype(np.float32))
    first = np.clip(whole, -length - taps, length).astype(np.int64) - (taps // 2 - 1)  # first tap, x = 0
    width = length + taps - 1
    window = np.empty((n, width, c) if axis == 1 else (width, n, c), np.uint8)  # the image's own layout
    _fill_windows(window if axis == 1 else window.transpose(1, 0, 2), lines, first)
    # 2-D views with contiguous rows, so that every operation below runs vectorised: tap k is a column block
    # (rows) or a row block (columns) of the window, d one weight per row or per column and channel
    a = torch.from_numpy(window).float()
    if axis == 1:
        a, d = a.view(n, width * c), frac[:, None]
        tap = [a[:, k * c:(k + length) * c] for k in range(taps)]
    else:
        a, d = a.view(width, n * c), frac.repeat_interleave(c)[None, :]
        tap = [a[k:k + length] for k in range(taps)]
    if taps == 2:
        v = tap[1] - tap[0]
        v.mul_(d).add_(tap[0])
    else:  # PIL's nested form: v2 + d (p2 + d (p3 + d p4)), the p's integer-valued (exact in float32)
        v1, v2, v3, v4 = tap
        p = v2 - v1
        p.sub_(v3).add_(v4).mul_(d)  # d p4
        v = v1 - v2
        v.mul_(2).add_(v3).sub_(v4).add_(p).mul_(d)  # d (p3 + d p4)
        v.add_(v3).sub_(v1).mul_(d).add_(v2)
    out = v.clamp_(0, 255).to(torch.uint8).view(pixels.shape)  # PIL truncates
    lo, hi = (_first_at_least(bound, shift, offset, length) for bound in (0, length))  # columns read inside
    fill_t = torch.tensor(fill, dtype=torch.uint8)
    lines_out = out if axis == 1 else out.transpose(0, 1)  # (lines, length, C)
    if coef == 0:  # a translation: the same positions in every line
        lines_out[:, :lo[0]], lines_out[:, hi[0]:] = fill_t, fill_t
    else:
        x = torch.arange(length)
        lines_out[(x < torch.from_numpy(lo)[:, None]) | (x >= torch.from_numpy(hi)[:, None])] = fill_t
    return out.numpy()


def _fill_windows(out: np.ndarray, lines: np.ndarray, first: np.ndarray) -> None:
    """``out`` (lines, width, C) := line i's pixels first[i] .. first[i] + width - 1, clamped to the line (edge
    pixels repeated), copied once per run of lines with the same first pixel (a shear has a few dozen runs)."""
    n, length, _ = lines.shape
    width = out.shape[1]
    bounds = np.flatnonzero(np.diff(first)) + 1
    for lo, hi in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [n]))):
        f = int(first[lo])
        left, right = min(max(-f, 0), width), min(max(f + width - length, 0), width)  # before / after the line
        src, mid = lines[lo:hi], width - left - right
        out[lo:hi, :left] = src[:, :1]
        out[lo:hi, left:left + mid] = src[:, max(f, 0):max(f, 0) + mid]
        out[lo:hi, width - right:] = src[:, length - 1:]


def _first_at_least(bound: float, shift: np.ndarray, offset: float, w: int) -> np.ndarray:
    """Per line, the first position x in 0..w whose source centre ((x + 0.5) + shift) + offset (PIL's arithmetic,
    monotone in x) is >= ``bound`` (w: none is): an estimate corrected by one step either way."""
    def centre(x: np.ndarray) -> np.ndarray:
        return ((x + 0.5) + shift) + offset

    x = np.clip(np.ceil(bound - 0.5 - shift - offset), 0, w)
    x = np.where((x > 0) & (centre(x - 1) >= bound), x - 1, x)
    return np.where((x < w) & (centre(x) < bound), x + 1, x).astype(np.int64)


def transform_along_axis(img: Image.Image, axis: int, coef: float, offset: float, resample: int,
                         fillcolor: Any = None) -> Image.Image:
    """``img.transform(img.size, AFFINE, data, resample=resample, fillcolor=fillcolor)`` for the one-axis maps:
    ``axis`` 1 (x): data (1, coef, offset, 0, 1, 0); ``axis`` 0 (y): (1, 0, 0, coef, 1, offset). Computed by
    ``shift_lines`` for RGB and L images sampled bilinear or bicubic, by PIL otherwise."""
    return as_image(_along_axis(img, axis, coef, offset, resample, fillcolor))


def _along_axis(img: Image.Image | np.ndarray, axis: int, coef: float, offset: float, resample: int,
                fillcolor: Any) -> Image.Image | np.ndarray:
    """``transform_along_axis`` of a PIL image or an (H, W, C) uint8 array: an array where ``shift_lines``
    computes it, PIL's result otherwise."""
    mode = img.mode if isinstance(img, Image.Image) else _ARRAY_MODES.get(img.shape[2])
    fill = _fill(mode, fillcolor)
    if resample not in _TAPS or fill is None or 0 in _size(img):
        data = (1, coef, offset, 0, 1, 0) if axis == 1 else (1, 0, 0, coef, 1, offset)
        img = as_image(img)
        return img.transform(img.size, Image.Transform.AFFINE, data, resample=resample, fillcolor=fillcolor)
    return shift_lines(as_array(img), axis, coef, offset, resample, fill)


_BANDS = {"RGB": 3, "L": 1}  # the PIL modes this module computes, by their bands
_ARRAY_MODES = {bands: mode for mode, bands in _BANDS.items()}  # an (H, W, C) array's PIL mode


def _size(img: Image.Image | np.ndarray) -> tuple[int, int]:
    """(width, height) of a PIL image or an (H, W, C) array."""
    return img.size if isinstance(img, Image.Image) else (img.shape[1], img.shape[0])


def as_image(img: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image of an (H, W, C) uint8 array (C 3: RGB, 1: L); a PIL image unchanged."""
    if isinstance(img, Image.Image):
        return img
    return Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)


def as_array(img: Image.Image | np.ndarray) -> np.ndarray:
    """The (H, W, C) uint8 array of a PIL image (RGB or L; a read-only copy); an array unchanged."""
    if isinstance(img, np.ndarray):
        return img
    pixels = np.asarray(img)
    return pixels if pixels.ndim == 3 else pixels[..., None]


def _fill(mode: str, fillcolor: Any) -> tuple[int, ...] | None:
    """The fill as one uint8 per band, or None where this module leaves the image to PIL."""
    bands = _BANDS.get(mode)
    if bands is None:
        return None
    if fillcolor is None:
        return (0,) * bands
    values = (fillcolor,) if isinstance(fillcolor, (int, np.integer)) else tuple(fillcolor)
    if len(values) == 1:
        values = values * bands
    if len(values) != bands or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values):
        return None
    return tuple(int(v) for v in values)


# ---- timm's operations ------------------------------------------------------------------------------------------
def timm_resample(kwargs: dict[str, Any]) -> int:
    """timm's ``_interpolation`` for a geometric operation's ``kwargs``: its resample, drawn with ``random.choice``
    when it is a list (the same call, so the same draw)."""
    resample = kwargs.get("resample", _BICUBIC)
    return int(random.choice(resample) if isinstance(resample, (list, tuple)) else resample)


def _one_axis_op(img: Image.Image | np.ndarray, level: float, *, axis: int, shear: bool, relative: bool,
                 **kwargs: Any) -> Image.Image | np.ndarray:
    """timm's shear_x/y, translate_x/y_abs and translate_x/y_rel (``level``: factor, pixels or fraction of the
    size) of a PIL image or an array, computed by ``_along_axis``; a module-level function so that the transform
    pickles."""
    if shear:
        coef, offset = level, 0.0
    else:
        coef, offset = 0.0, level * (_size(img)[0 if axis == 1 else 1] if relative else 1)
    return _along_axis(img, axis, coef, offset, timm_resample(kwargs), kwargs.get("fillcolor"))


def _fast(axis: int, shear: bool = False, relative: bool = False) -> functools.partial:
    return functools.partial(_one_axis_op, axis=axis, shear=shear, relative=relative)


_FAST_OPS = {"ShearX": _fast(1, shear=True), "ShearY": _fast(0, shear=True), "TranslateX": _fast(1),
             "TranslateY": _fast(0), "TranslateXRel": _fast(1, relative=True), "TranslateYRel": _fast(0, relative=True)}


def _on_image(img: Image.Image | np.ndarray, *args: Any, aug_fn: Any, **kwargs: Any) -> Image.Image:
    """timm's operation ``aug_fn`` (rotate, the colour and look-up-table ones) on the PIL image of ``img``."""
    return aug_fn(as_image(img), *args, **kwargs)


class ArrayRandAugment:
    """A copy of timm's ``RandAugment`` whose translate and shear operations run through ``_along_axis`` and whose
    other operations take arrays too (``_on_image``): a PIL image in gives a PIL image out, an (H, W, C) uint8
    array gives an array (the input itself when no operation ran). The random calls are timm's, in its order."""

    takes_arrays = True

    def __init__(self, randaugment: Any):
        self.randaugment = copy.deepcopy(randaugment)
        for op in self.randaugment.ops:
            fast = _FAST_OPS.get(op.name)
            op.aug_fn = fast if fast is not None else functools.partial(_on_image, aug_fn=op.aug_fn)

    @property
    def ops(self) -> list[Any]:
        return self.randaugment.ops

    def __call__(self, img: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
        out = self.randaugment(img)
        return as_image(out) if isinstance(img, Image.Image) else as_array(out)

    def __repr__(self) -> str:
        return f"ArrayRandAugment({self.randaugment!r})"


def fast_geometry(transform: Any) -> Any:
    """timm's training ``transform`` (a RandAugment, or a Compose holding one) with each RandAugment replaced by an
    ``ArrayRandAugment`` of it; other transforms are returned unchanged. The result has ``takes_arrays`` True when
    it is a RandAugment alone (or a Compose of one): it then takes and returns (H, W, C) uint8 arrays as well."""
    from timm.data.auto_augment import RandAugment

    steps = getattr(transform, "transforms", [transform])
    if not any(isinstance(s, RandAugment) for s in steps):
        return transform
    if isinstance(transform, RandAugment):
        return ArrayRandAugment(transform)
    transform = copy.copy(transform)
    transform.transforms = [ArrayRandAugment(s) if isinstance(s, RandAugment) else s for s in steps]
    transform.takes_arrays = len(steps) == 1
    return transform

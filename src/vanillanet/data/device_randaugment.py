"""timm's RandAugment with the draws in the workers and the pixels on the training device (``--aa-on-device``).

The workers run timm's own ``RandAugment.__call__`` over copies of its ``AugmentOp`` s whose image function only
records what it was asked to do (``record_ops``): the choice of operations, their probability, the magnitude
noise (``mstd``), the level-to-argument mapping and a random interpolation are all timm's code and random calls,
in timm's order. Each sample then carries a tiny table of (operation, argument, interpolation) rows, and
``apply_ops`` applies the table to the uint8 batch on the device, operation by operation over the samples that
drew it, reproducing PIL's arithmetic: the look-up-table operations (posterize, solarize, solarize-add, invert,
auto-contrast, equalize) exactly, the ``ImageEnhance`` blends (colour, contrast, brightness, sharpness) with PIL's
grayscale weights, smoothing kernel and truncation, and the geometric ones (rotate, shear, translate) as PIL's
inverse affine maps with its pixel-centre convention, fill colour and nearest/bilinear/bicubic sampling
(``grid_sample``'s bicubic kernel, a = -0.75, where PIL's transforms use a = -1; ``axis_affine`` has PIL's
exact arithmetic for the workers).

What it saves: RandAugment costs ~0.85 ms per 224 px sample in a worker (its geometric operations dominate); on
the GPU it is a few kernels per operation over the whole batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .axis_affine import timm_resample

__all__ = ["OPS", "apply_ops", "record_ops"]

# the operations timm's RandAugment may draw; a row's first value is the index here (-1: nothing applied)
OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "PosterizeIncreasing", "PosterizeOriginal",
       "Solarize", "SolarizeIncreasing", "SolarizeAdd", "Color", "ColorIncreasing", "Contrast", "ContrastIncreasing",
       "Brightness", "BrightnessIncreasing", "Sharpness", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateX",
       "TranslateY", "TranslateXRel", "TranslateYRel")
_GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's codes


class _Recorder:
    """Stands in for an ``AugmentOp``'s image function: appends (op index, argument, interpolation) to ``rows``."""

    def __init__(self, name: str, rows: list[tuple[float, float, float]]):
        self.index, self.geometric, self.rows = OPS.index(name), name in _GEOMETRIC, rows

    def __call__(self, img: Any, *args: Any, **kwargs: Any) -> Any:
        # only the geometric operations sample (timm's _interpolation draws a random interpolation there); the
        # others record 0, whatever their kwargs hold (a list of interpolations when the recipe's is random)
        resample = timm_resample(kwargs) if self.geometric else 0
        self.rows.append((float(self.index), float(args[0]) if args else 0.0, float(int(resample))))
        return img


def record_ops(randaugment: Any) -> Callable[[], torch.Tensor]:
    """A function that draws one sample's operations with timm's ``randaugment`` (a timm ``RandAugment``) and
    returns them as a float tensor (num_layers, 3): rows (op index, argument, PIL interpolation), -1 rows padding
    the operations skipped by their probability."""
    rows: list[tuple[float, float, float]] = []
    ops = []
    for op in randaugment.ops:
        if op.name not in OPS:
            raise ValueError(f"RandAugment operation {op.name} has no device implementation; run RandAugment in the "
                             "workers (drop --aa-on-device)")
        twin = copy.copy(op)
        twin.aug_fn = _Recorder(op.name, rows)
        ops.append(twin)
    twin_ra = type(randaugment)(ops, randaugment.num_layers, randaugment.choice_weights)
    layers = randaugment.num_layers

    def draw() -> torch.Tensor:
        rows.clear()
        twin_ra(None)
        table = torch.full((layers, 3), -1.0)
        if rows:
            table[: len(rows)] = torch.tensor(rows)
        return table

    return draw


# ---------------------------------------------------------------------------------------------- the operations
def _blend(degenerate: torch.Tensor, img: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend on 8-bit data: trunc(deg + f (img - deg)), clipped."""
    f = factor.view(-1, 1, 1, 1)
    return (degenerate + f * (img - degenerate)).trunc().clamp(0, 255)


def _gray(img: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 32768) >> 16, as float (N, 1, H, W)."""
    if img.shape[1] == 1:
        return img
    r, g, b = img[:, 0:1].long(), img[:, 1:2].long(), img[:, 2:3].long()
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).float()


def _smooth(img: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH (3x3 [1 1 1; 1 5 1; 1 1 1] / 13, rounded half up), the border rows and columns
    kept as they are."""
    c = img.shape[1]
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=img.device).div_(13).expand(c, 1, 3, 3)
    inner = (F.conv2d(img, kernel, groups=c) + 0.5).floor().clamp(0, 255)
    out = img.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


def _equalize(img: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per channel: lut[i] = (step // 2 + sum(h[:i])) // step, step = (N - h[last]) // 255;
    identity when at most one level is used or step is 0."""
    n, c, h, w = img.shape
    flat = img.long().reshape(n * c, h * w)  # any layout (the loader's is channels-last)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=img.device).scatter_add_(1, flat, torch.ones_like(flat))
    levels = torch.arange(256, device=img.device)
    last = torch.where(hist > 0, levels, -1).max(1).values
    step = (h * w - hist.gather(1, last.clamp_min(0)[:, None])[:, 0]) // 255
    used = (hist > 0).sum(1)
    before = torch.cumsum(hist, 1) - hist
    lut = (step[:, None] // 2 + before) // step.clamp_min(1)[:, None]
    lut = torch.where(((used > 1) & (step > 0))[:, None], lut.clamp(0, 255), levels)
    return lut.gather(1, flat).view(n, c, h, w).float()


def _autocontrast(img: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.autocontrast (cutoff 0) per channel: lut[i] = int(i * scale - lo * scale) with
    scale = 255 / (hi - lo) in double precision as PIL computes it; identity when hi <= lo."""
    n, c, h, w = img.shape
    lo = img.amin((2, 3)).double().view(n * c, 1)
    hi = img.amax((2, 3)).double().view(n * c, 1)
    levels = torch.arange(256, dtype=torch.float64, device=img.device)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp_min(1)  # a true division (255.0 / t is 255 * (1 / t))
    lut = (levels * scale + (-lo * scale)).trunc().clamp(0, 255)
    lut = torch.where(hi > lo, lut, levels).float()
    return lut.gather(1, img.long().reshape(n * c, h * w)).view(n, c, h, w)


def _affine(img: torch.Tensor, matrix: torch.Tensor, resample: int, fill: torch.Tensor) -> torch.Tensor:
    """PIL's Image.transform(AFFINE, (a, b, c, d, e, f)) for each sample: the output pixel (x, y) samples the input
    at (a (x+.5) + b (y+.5) + c, d (x+.5) + e (y+.5) + f), outside [0, W) x [0, H) the fill colour."""
    n, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=img.device) + 0.5, torch.arange(w, device=img.device) + 0.5,
                            indexing="ij")
    m = matrix.view(n, 1, 1, 6)
    xin = m[..., 0] * xs + m[..., 1] * ys + m[..., 2]
    yin = m[..., 3] * xs + m[..., 4] * ys + m[..., 5]
    grid = torch.stack((2 * xin / w - 1, 2 * yin / h - 1), -1)
    mode = _RESAMPLE.get(resample, "bicubic")
    out = F.grid_sample(img, grid, mode=mode, padding_mode="border", align_corners=False)
    inside = ((xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)).unsqueeze(1)
    return torch.where(inside, out.round().clamp(0, 255), fill.view(1, -1, 1, 1))


def _matrices(name: str, arg: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """(n, 6) inverse affine maps of the geometric operations, as timm's functions pass them to PIL."""
    one, zero = torch.ones_like(arg), torch.zeros_like(arg)
    if name == "Rotate":  # PIL's Image.rotate about (w/2, h/2)
        a = -arg * math.pi / 180
        cos, sin = torch.cos(a), torch.sin(a)
        cx, cy = w / 2.0, h / 2.0
        return torch.stack((cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy), 1)
    if name == "ShearX":
        return torch.stack((one, arg, zero, zero, one, zero), 1)
    if name == "ShearY":
        return torch.stack((one, zero, zero, arg, one, zero), 1)
    dx = {"TranslateX": arg, "TranslateXRel": arg * w}.get(name, zero)
    dy = {"TranslateY": arg, "TranslateYRel": arg * h}.get(name, zero)
    return torch.stack((one, zero, dx, zero, one, dy), 1)


def _apply_one(name: str, img: torch.Tensor, arg: torch.Tensor, resample: int, fill: torch.Tensor) -> torch.Tensor:
    """One operation on float images (n, C, H, W) holding 0..255 integers, per-sample arguments ``arg``."""
    if name in _GEOMETRIC:
        return _affine(img, _matrices(name, arg, img.shape[3], img.shape[2]), resample, fill)
    a = arg.view(-1, 1, 1, 1)
    if name == "Invert":
        return 255 - img
    if name == "AutoContrast":
        return _autocontrast(img)
    if name == "Equalize":
        return _equalize(img)
    if name.startswith("Posterize"):
        shift = (8 - a).clamp(0, 8)
        return torch.where(a >= 8, img, torch.floor(img / 2**shift) * 2**shift)
    if name.startswith("Solarize") and name != "SolarizeAdd":
        return torch.where(img < a, img, 255 - img)
    if name == "SolarizeAdd":
        return torch.where(img < 128, (img + a).clamp(0, 255), img)
    if name.startswith("Color"):
        return _blend(_gray(img).expand_as(img), img, arg)
    if name.startswith("Contrast"):
        mean = (_gray(img).mean((1, 2, 3), keepdim=True) + 0.5).floor()
        return _blend(mean.expand_as(img), img, arg)
    if name.startswith("Brightness"):
        return _blend(torch.zeros_like(img), img, arg)
    if name.startswith("Sharpness"):
        return _blend(_smooth(img), img, arg)
    raise ValueError(f"no device implementation of RandAugment's {name}")


def apply_ops(images: torch.Tensor, tables: torch.Tensor, fill: tuple[float, ...]) -> torch.Tensor:
    """The operations ``tables`` (N, layers, 3) from ``record_ops`` applied to uint8 ``images`` (N, C, H, W) on
    their device, layer by layer, each operation once over the samples that drew it; uint8 out."""
    if tables.numel() == 0:
        return images
    x = images.float()
    tables = tables.to(x.device)
    fill_t = torch.tensor(fill, dtype=torch.float32, device=x.device)
    for layer in range(tables.shape[1]):
        rows = tables[:, layer]
        for op_id, resample in torch.unique(rows[:, [0, 2]], dim=0).tolist():
            if op_id < 0:
                continue
            idx = ((rows[:, 0] == op_id) & (rows[:, 2] == resample)).nonzero()[:, 0]
            x[idx] = _apply_one(OPS[int(op_id)], x[idx], rows[idx, 1], int(resample), fill_t)
    return x.to(torch.uint8)

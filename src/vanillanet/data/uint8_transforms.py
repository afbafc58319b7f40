"""The training and evaluation transforms of ``--decoder fast``: encoded image in, uint8 tensor (C, H, W) out.

``FastTrainTransform`` is timm's training transform up to the tensor (``create_transform(is_training=True,
use_prefetcher=True)``, what timm's own prefetching loader runs in its workers), reordered for speed but drawn
from the same distributions with the same random calls:

1. RandomResizedCrop: the box is drawn by timm's ``RandomResizedCropAndInterpolation.get_params`` from the size in
   the header, *before* decoding, so that a JPEG whose box is at least twice the output size is decoded at 1/2, 1/4
   or 1/8 of its size (libjpeg's DCT scaling); the box is then cut and resized (antialiased, the recipe's
   interpolation) on the uint8 tensor.
2. Horizontal flip with torchvision's draw (``torch.rand(1) < p``).
3. timm's secondary transforms as timm builds them (RandAugment ``rand-m7-mstd0.5-inc1``, or colour jitter) on the
   224 px crop: the same ops, magnitudes and fill, and the same random calls. RandAugment's translate and shear
   operations are computed by ``axis_affine`` (PIL's arithmetic, 0.5-0.9 ms a call where PIL's per-pixel
   transform takes ~1.85 ms: ~0.2 ms less per sample) on the crop as an array, which becomes a PIL image only for
   the operations that need one. With ``aa_on_device`` RandAugment's draws are made here by timm's code and its
   pixels are left to the device (``device_randaugment``); the sample is then (crop, table of operations).

Normalisation and RandomErasing are not here: they run on the training device over the whole batch
(``device_augment.DeviceAugment``), as Mixup/CutMix do, so batches cross the process boundary as uint8 (a quarter of
the float bytes). ``FastEvalTransform`` is the evaluation transform (short side to img_size / crop_pct, centre crop).

Both take what a dataset holds: encoded bytes (``decodes = True``: folders and shards hand over the file's bytes),
a PIL image or a uint8 array (in-memory sets). Their images are (C, H, W) views of HWC memory, and their ``collate``
(which ``loaders.build_loader`` uses) stacks them as such: a batch is an (N, C, H, W) view of (N, H, W, C) memory,
a plain copy where stacking as NCHW would transpose every pixel in the worker (1.7 against 0.45 ms a batch of 32
here); the device lays it out as the model wants (``device_augment.DeviceAugment.place``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torch.utils.data import default_collate
from torchvision.transforms import InterpolationMode

from .axis_affine import as_array, as_image, fast_geometry
from .decode import Probe, decode, probe
from .device_randaugment import record_ops

__all__ = ["FastEvalTransform", "FastTrainTransform", "collate_uint8", "crop_box", "device_draws", "resize_crop",
           "timm_secondary"]


def crop_box(width: int, height: int, scale: Sequence[float], ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (top, left, height, width) for an image of this size: timm's draw, python ``random``."""
    stand_in = torch.empty(0, height, width)  # no pixels: timm reads the size only
    return RandomResizedCropAndInterpolation.get_params(stand_in, tuple(scale), tuple(ratio))


def _as_pixels(sample: Any, mode: str, need: tuple[int, int], limit: bool,
               box_for: Callable[[Probe], tuple[int, int, int, int]]) -> tuple[np.ndarray, tuple[float, ...]]:
    """(uint8 HWC array, box in its coordinates) of a sample: encoded bytes are probed, the box drawn on the
    header's size, then decoded at the smallest DCT scale that keeps the box at least ``need`` (w, h) pixels."""
    if isinstance(sample, (bytes, bytearray, memoryview)):
        data = bytes(sample)
        info = probe(data)
        top, left, h, w = box_for(info)
        min_size = (math.ceil(need[0] * info.width / w), math.ceil(need[1] * info.height / h))
        pixels = decode(data, mode, min_size=min_size, limit=limit, info=info)
        sy, sx = pixels.shape[0] / info.height, pixels.shape[1] / info.width
        return pixels, (top * sy, left * sx, h * sy, w * sx)
    if isinstance(sample, Image.Image):
        sample = np.asarray(sample.convert(mode))
    pixels = np.asarray(sample, dtype=np.uint8)
    pixels = pixels if pixels.ndim == 3 else pixels[..., None]
    return pixels, box_for(Probe(pixels.shape[1], pixels.shape[0], False))


def resize_crop(pixels: np.ndarray, box: Sequence[float], size: tuple[int, int],
                interpolation: InterpolationMode) -> torch.Tensor:
    """The box (top, left, height, width; fractional after DCT scaling) of an HWC uint8 array, resized
    (antialiased) to ``size`` (h, w): a CHW uint8 tensor laid out channels-last (HWC in memory), the layout in
    which torch's uint8 resampling is fastest (~2.5x the planar layout here) and PIL reads without a copy."""
    top, left, h, w = (int(round(v)) for v in box)
    h, w = max(1, min(h, pixels.shape[0] - top)), max(1, min(w, pixels.shape[1] - left))
    hwc = torch.from_numpy(np.require(pixels, requirements="W"))[top: top + h, left: left + w]  # (a view)
    if (h, w) == tuple(size):
        return hwc.contiguous().permute(2, 0, 1)
    x = hwc.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)
    mode = _TORCH_MODES.get(interpolation, "bicubic")
    out = torch.nn.functional.interpolate(x, size=tuple(size), mode=mode, antialias=mode != "nearest")
    return out[0]


_TORCH_MODES = {InterpolationMode.BICUBIC: "bicubic", InterpolationMode.BILINEAR: "bilinear",
                InterpolationMode.NEAREST: "nearest"}  # lanczos, hamming, box: bicubic (torch has no others)


def timm_secondary(img_size: int, *, mean: Sequence[float], interpolation: str, auto_augment: str | None,
                   color_jitter: float) -> Callable | None:
    """timm's secondary training transforms (RandAugment or colour jitter) exactly as ``create_transform`` builds
    them for these settings, or None when there are none (a colour jitter of 0 is none: timm would add an identity
    ColorJitter)."""
    _, secondary, _ = create_transform(img_size, is_training=True, auto_augment=auto_augment or None,
                                       color_jitter=color_jitter or None, interpolation=interpolation,
                                       mean=tuple(mean), separate=True,
                                       use_prefetcher=True)
    return secondary if secondary.transforms else None


def device_draws(secondary: Callable | None) -> Callable[[], torch.Tensor] | None:
    """For ``aa_on_device``: the draw function of the RandAugment in timm's ``secondary`` transforms
    (``device_randaugment.record_ops``), or None when they hold no RandAugment (nothing to move)."""
    from timm.data.auto_augment import RandAugment

    steps = getattr(secondary, "transforms", [secondary] if secondary is not None else [])
    if len(steps) != 1 or not isinstance(steps[0], RandAugment):
        return None
    return record_ops(steps[0])


def collate_uint8(samples: list[tuple[Any, int]]) -> list[Any]:
    """torch's ``default_collate`` of (image, label) samples whose images (or (image, table) pairs, with
    ``aa_on_device``) are the transforms' uint8 tensors, stacked in their own HWC memory: the batch is the
    (N, C, H, W) view of an (N, H, W, C) tensor (see the module docstring). In a worker the stack is written to
    shared memory, as torch's is."""
    def hwc(image: Any) -> Any:
        return image.permute(1, 2, 0) if isinstance(image, torch.Tensor) else (hwc(image[0]), *image[1:])

    def nchw(batch: Any) -> Any:
        return batch.permute(0, 3, 1, 2) if isinstance(batch, torch.Tensor) else [nchw(batch[0]), *batch[1:]]

    images, labels = default_collate([(hwc(image), label) for image, label in samples])
    return [nchw(images), labels]


class FastTrainTransform:
    """Encoded image -> augmented uint8 tensor (C, img_size, img_size); see the module docstring."""

    decodes = True
    collate = staticmethod(collate_uint8)

    def __init__(self, img_size: int, *, in_chans: int = 3, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5, interpolation: str = "bicubic",
                 secondary: Callable | None = None, allow_large: bool = False, aa_on_device: bool = False):
        self.size = (img_size, img_size)
        self.mode = "L" if in_chans == 1 else "RGB"
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        self.interpolation = InterpolationMode(interpolation)
        self.limit = not allow_large
        self.draw_ops = device_draws(secondary) if aa_on_device else None
        self.secondary = fast_geometry(secondary) if self.draw_ops is None else None

    def _box(self, info: Probe) -> tuple[int, int, int, int]:
        return crop_box(info.width, info.height, self.scale, self.ratio)

    def __call__(self, sample: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The uint8 crop; with ``aa_on_device`` (crop, RandAugment's draws) for the device to apply."""
        pixels, box = _as_pixels(sample, self.mode, self.size[::-1], self.limit, self._box)
        out = resize_crop(pixels, box, self.size, self.interpolation)
        if self.hflip > 0 and torch.rand(1) < self.hflip:
            out = out.flip(-1)
        if self.draw_ops is not None:
            return out, self.draw_ops()
        if self.secondary is not None:
            hwc = out.permute(1, 2, 0).contiguous().numpy()
            if getattr(self.secondary, "takes_arrays", False):  # RandAugment (axis_affine.ArrayRandAugment)
                result = self.secondary(hwc)
            else:
                result = as_array(self.secondary(as_image(hwc)))
            if result is not hwc:  # an operation ran
                out = torch.from_numpy(np.require(result, requirements="W")).permute(2, 0, 1)
        return out

    def __repr__(self) -> str:
        return (f"FastTrainTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, "
                f"interpolation={self.interpolation.value}, secondary={self.secondary})")


class FastEvalTransform:
    """Encoded image -> uint8 tensor: the short side resized to floor(img_size / crop_pct), then the centre
    img_size crop (timm's evaluation transform), decoded at a reduced size where the file is large enough."""

    decodes = True
    collate = staticmethod(collate_uint8)

    def __init__(self, img_size: int, *, in_chans: int = 3, crop_pct: float = 0.875, interpolation: str = "bicubic",
                 allow_large: bool = False):
        self.img_size, self.scale_size = img_size, math.floor(img_size / crop_pct)
        self.mode = "L" if in_chans == 1 else "RGB"
        self.interpolation = InterpolationMode(interpolation)
        self.limit = not allow_large

    def _box(self, info: Probe) -> tuple[int, int, int, int]:
        short = min(info.width, info.height)
        side = short * self.img_size / self.scale_size  # the centre crop, in the source's pixels
        h, w = min(info.height, side), min(info.width, side)
        return (info.height - h) / 2, (info.width - w) / 2, h, w

    def __call__(self, sample: Any) -> torch.Tensor:
        pixels, box = _as_pixels(sample, self.mode, (self.img_size, self.img_size), self.limit, self._box)
        return resize_crop(pixels, box, (self.img_size, self.img_size), self.interpolation)

    def __repr__(self) -> str:
        return f"FastEvalTransform(img_size={self.img_size}, scale_size={self.scale_size})"

"""GPU decoding (``--decoder gpu``, CUDA only): the workers read each file's bytes and draw its crop and flip from
the header (timm's RandomResizedCrop draw, as ``--decoder fast`` does); batches cross the process boundary as
encoded bytes plus boxes (``EncodedBatch``); on the training GPU the whole batch is decoded at once and each
sample's box is cut, resized (antialiased) and flipped there (``EncodedBatch.decode``), after which
``device_augment.DeviceAugment`` normalises and erases as for the fast path.

Decoders: NVIDIA DALI when installed (``pip install vanillanet[dali]``; ``fn.decoders.image_slice`` decodes only
each sample's box, then ``fn.resize``), else nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")`` over the
list of the batch's files. Files nvJPEG cannot take (PNG, CMYK JPEGs, 16-bit images) are decoded and cropped on the
CPU in the worker and travel as pixels. Every random draw is made in the workers from the loader's per-batch seed,
so resuming is exact without DALI's own checkpointing.

RandAugment: its draws are made in the workers by timm's code and its operations applied on the GPU after the crop
(``device_randaugment``), as ``--decoder fast --aa-on-device`` does.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..util.errors import ConfigError
from .decode import probe
from .device_randaugment import apply_ops
from .uint8_transforms import FastTrainTransform, crop_box, device_draws

_log = logging.getLogger(__name__)

__all__ = ["EncodedBatch", "GpuCropSample", "check_gpu_settings", "collate_encoded", "dali_available"]


def dali_available() -> bool:
    """Whether NVIDIA DALI can be imported (the optional extra ``vanillanet[dali]``)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def check_gpu_settings(device: torch.device, augment: str) -> None:
    """ConfigError unless ``--decoder gpu`` can run: a CUDA device and the timm augmentation."""
    if device.type != "cuda":
        raise ConfigError(f"--decoder gpu decodes on the training GPU, but this run trains on {device.type}; use "
                          "--decoder fast on the CPU")
    if augment != "timm":
        raise ConfigError(f"--decoder gpu implements the timm augmentation (crop, flip, erasing), not {augment!r}; "
                          "use --augment timm, or --decoder pil")


@dataclass
class EncodedSample:
    """One sample as the worker sends it: the file's bytes, its box (top, left, height, width in the file's
    pixels) and flip; or, for a file nvJPEG cannot read, the already cropped uint8 pixels (C, H, W)."""

    data: torch.Tensor | None = None
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    flip: bool = False
    pixels: torch.Tensor | None = None
    ops: torch.Tensor | None = None  # RandAugment's draws (device_randaugment), applied after the crop


class GpuCropSample:
    """The workers' half of ``--decoder gpu`` (a decoding transform: ``decodes = True``): bytes -> ``EncodedSample``
    with timm's crop draw and torchvision's flip draw, in that order (the fast path's order)."""

    decodes = True

    def __init__(self, img_size: int, *, in_chans: int = 3, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5, interpolation: str = "bicubic",
                 allow_large: bool = False, secondary: Any = None):
        self.img_size, self.in_chans = img_size, in_chans
        self.scale, self.ratio, self.hflip, self.allow_large = tuple(scale), tuple(ratio), hflip, allow_large
        self.cpu = FastTrainTransform(img_size, in_chans=in_chans, scale=scale, ratio=ratio, hflip=hflip,
                                      interpolation=interpolation, allow_large=allow_large)
        self.draw_ops = device_draws(secondary)
        if secondary is not None and self.draw_ops is None:
            raise ConfigError("--decoder gpu applies RandAugment on the GPU but not colour jitter; pass --aa with "
                              "a rand- policy, or --color-jitter 0, or use --decoder fast")

    def __call__(self, sample: Any) -> EncodedSample:
        out = self._crop(sample)
        if self.draw_ops is not None:
            out.ops = self.draw_ops()
        return out

    def _crop(self, sample: Any) -> EncodedSample:
        if isinstance(sample, (bytes, bytearray, memoryview)):
            info = probe(bytes(sample))
            if info.fast:  # a JPEG libjpeg-turbo (and so nvJPEG) reads as YCbCr or grayscale
                if not self.allow_large:
                    from .images import check_pixels

                    check_pixels(info.width, info.height)
                box = crop_box(info.width, info.height, self.scale, self.ratio)
                flip = bool(self.hflip > 0 and torch.rand(1) < self.hflip)
                data = torch.frombuffer(bytearray(sample), dtype=torch.uint8)
                return EncodedSample(data=data, box=box, flip=flip)
        return EncodedSample(pixels=self.cpu(sample))


@dataclass
class EncodedBatch:
    """A batch of ``EncodedSample`` s: files to decode on the GPU (``data``, ``boxes`` (N, 4), ``flips``) and the
    positions and pixels of the samples decoded on the CPU."""

    size: tuple[int, int]
    channels: int
    interpolation: str = "bicubic"
    data: list[torch.Tensor] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.int64))
    flips: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    cpu_positions: list[int] = field(default_factory=list)
    cpu_pixels: list[torch.Tensor] = field(default_factory=list)
    ops: torch.Tensor | None = None  # (N, layers, 3) RandAugment tables in sample order, or None

    def __len__(self) -> int:
        return len(self.positions) + len(self.cpu_positions)

    def pin_memory(self) -> EncodedBatch:
        """Page-locked copies of the bytes and pixels (what DataLoader's ``pin_memory`` calls)."""
        self.data = [d.pin_memory() for d in self.data]
        self.cpu_pixels = [p.pin_memory() for p in self.cpu_pixels]
        return self

    def _decode_files(self, device: torch.device) -> torch.Tensor:
        """The files' crops (n, C, H, W): DALI when installed (and working), else torchvision's nvJPEG."""
        dali = _dali_decoder(device, self.size, self.channels, self.interpolation)
        crops = dali(self.data, self.boxes.tolist(), self.flips.tolist(), device) if dali is not None else None
        if crops is not None:
            return crops
        decoded = _decode_many(self.data, self.channels, device)
        return torch.stack([_crop_resize(img, box, self.size, self.interpolation, bool(flip))
                            for img, box, flip in zip(decoded, self.boxes.tolist(), self.flips.tolist())])

    def decode(self, device: torch.device | str, fill: Sequence[float] = (124, 116, 104)) -> torch.Tensor:
        """The batch as uint8 (N, C, H, W) on ``device``: decoded (DALI or nvJPEG), cropped, resized, flipped, and
        RandAugment's drawn operations applied (``fill``: its fill colour, timm's img_mean)."""
        device = torch.device(device)
        out = torch.empty(len(self), self.channels, *self.size, dtype=torch.uint8, device=device)
        if self.data:
            out[torch.tensor(self.positions, device=device)] = self._decode_files(device)
        for pos, pixels in zip(self.cpu_positions, self.cpu_pixels):
            out[pos] = pixels.to(device, non_blocking=True)
        return apply_ops(out, self.ops, tuple(fill)) if self.ops is not None else out


def collate_encoded(samples: list[tuple[EncodedSample, int]], size: tuple[int, int], channels: int,
                    interpolation: str = "bicubic") -> tuple[EncodedBatch, torch.Tensor]:
    """``collate_fn`` of the gpu path: (EncodedBatch, labels)."""
    batch = EncodedBatch(size=size, channels=channels, interpolation=interpolation)
    boxes, flips = [], []
    for i, (s, _) in enumerate(samples):
        if s.pixels is not None:
            batch.cpu_positions.append(i)
            batch.cpu_pixels.append(s.pixels)
        else:
            batch.positions.append(i)
            batch.data.append(s.data)
            boxes.append(s.box)
            flips.append(s.flip)
    if boxes:
        batch.boxes = torch.tensor(boxes, dtype=torch.int64)
        batch.flips = torch.tensor(flips, dtype=torch.bool)
    if samples and samples[0][0].ops is not None:
        batch.ops = torch.stack([s.ops for s, _ in samples])
    return batch, torch.tensor([label for _, label in samples], dtype=torch.int64)


def _decode_many(data: list[torch.Tensor], channels: int, device: torch.device) -> list[torch.Tensor]:
    """Full-size decode of the batch's JPEGs on the GPU: one batched nvJPEG call (torchvision)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec; the call is the same nvJPEG path
        warnings.simplefilter("ignore")
        return decode_jpeg(data, mode=mode, device=device)


def _crop_resize(img: torch.Tensor, box: Sequence[int], size: tuple[int, int], interpolation: str,
                 flip: bool) -> torch.Tensor:
    """One decoded image's box, resized (antialiased; float on the device) to ``size`` as uint8, flipped."""
    top, left, h, w = (int(v) for v in box)
    crop = img[:, top: top + h, left: left + w].unsqueeze(0).float()
    mode = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
    out = torch.nn.functional.interpolate(crop, size=size, mode=mode, antialias=True)[0]
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out.flip(-1) if flip else out


# ------------------------------------------------------------------------------------------------------- DALI
_DALI: dict[tuple, Any] = {}


def _dali_decoder(device: torch.device, size: tuple[int, int], channels: int, interpolation: str) -> Any:
    """The DALI decoder for these settings (built once per process), or None without DALI, or after DALI failed
    once in this process (logged; the torchvision path takes over)."""
    if not dali_available() or _DALI.get("failed"):
        return None
    key = (device.index or 0, size, channels, interpolation)
    if key not in _DALI:
        _DALI[key] = _DaliSliceDecoder(device.index or 0, size, channels, interpolation)
    return _DALI[key]


class _DaliSliceDecoder:
    """``fn.decoders.image_slice`` (nvJPEG decoding only each sample's box) -> ``fn.resize`` (antialiased) ->
    ``fn.flip``, fed per batch through ``external_source``; every random draw comes from the workers."""

    MAX_BATCH = 1024

    def __init__(self, device_id: int, size: tuple[int, int], channels: int, interpolation: str):
        from nvidia.dali import fn, pipeline_def, types

        kind = types.GRAY if channels == 1 else types.RGB
        interp = types.INTERP_CUBIC if interpolation == "bicubic" else types.INTERP_LINEAR

        @pipeline_def(batch_size=self.MAX_BATCH, num_threads=4, device_id=device_id, prefetch_queue_depth=1,
                      exec_async=False, exec_pipelined=False)
        def pipe():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
            anchor = fn.external_source(name="anchor", dtype=types.FLOAT)
            shape = fn.external_source(name="shape", dtype=types.FLOAT)
            flip = fn.external_source(name="flip", dtype=types.INT32)
            imgs = fn.decoders.image_slice(jpegs, anchor, shape, device="mixed", output_type=kind, axis_names="WH",
                                           normalized_anchor=False, normalized_shape=False,
                                           jpeg_fancy_upsampling=True)  # libjpeg-turbo's upsampling, as on the CPU
            imgs = fn.resize(imgs, resize_x=size[1], resize_y=size[0], interp_type=interp, antialias=True)
            return fn.transpose(fn.flip(imgs, horizontal=flip), perm=[2, 0, 1])

        self.pipe = pipe()
        self.pipe.build()

    def __call__(self, data: list[torch.Tensor], boxes: list[list[int]], flips: list[bool],
                 device: torch.device) -> torch.Tensor | None:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        try:
            self.pipe.feed_input("jpegs", [d.numpy() for d in data])
            self.pipe.feed_input("anchor", [np.array([b[1], b[0]], np.float32) for b in boxes])
            self.pipe.feed_input("shape", [np.array([b[3], b[2]], np.float32) for b in boxes])
            self.pipe.feed_input("flip", [np.array(int(f), np.int32) for f in flips])
            (images,) = self.pipe.run()
            dense = images.as_tensor()
            out = torch.empty(dense.shape(), dtype=torch.uint8, device=device)
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
            return out
        except Exception as err:  # noqa: BLE001 - an optional backend: log it once and fall back
            _DALI["failed"] = True
            _log.warning("DALI decoding failed (%s); decoding with torchvision's nvJPEG from now on",
                         str(err).splitlines()[0] if str(err) else type(err).__name__)
            return None

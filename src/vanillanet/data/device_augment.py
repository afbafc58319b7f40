"""The part of the training transform that runs on the training device over the whole batch (``--decoder fast`` and
``gpu``): uint8 images are converted to float and normalised, then timm's RandomErasing erases boxes per sample,
as timm's prefetching loader does; Mixup/CutMix follows in ``training.step.to_device``.

The draws are timm's (``RandomErasing`` on the device: python ``random`` for the boxes, the device's torch
generator for the pixels), so the distributions are those of the CPU transform; they use the main process's global
RNGs, which every checkpoint holds, so a resumed run draws the same boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.data.random_erasing import RandomErasing

from .device_randaugment import apply_ops

__all__ = ["DeviceAugment"]


class DeviceAugment:
    """Normalise uint8 batches (N, C, H, W) on ``device`` (``normalize``), and erase at random (``erase``, training
    only): ``reprob`` > 0 turns on timm's RandomErasing with ``remode`` and ``recount`` boxes."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu", *,
                 reprob: float = 0.0, remode: str = "pixel", recount: int = 1):
        self.device = torch.device(device)
        self.fill = tuple(min(255, round(255 * m)) for m in mean)  # timm's RandAugment fill (its img_mean)
        self.mean = torch.tensor([255.0 * m for m in mean], device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor([255.0 * s for s in std], device=self.device).view(1, -1, 1, 1)
        self.random_erasing = (RandomErasing(reprob, mode=remode, max_count=recount, device=str(self.device))
                               if reprob > 0 else None)

    def place(self, x: Any, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """A loader batch on the device in ``memory_format``, normalised: a tensor is moved; (images, RandAugment
        tables) are moved and the tables applied (``device_randaugment``); an encoded batch (``--decoder gpu``'s
        ``gpu_decode.EncodedBatch``) is decoded there (and its tables applied). The layout is set on the uint8
        images (``uint8_transforms.collate_uint8`` sends them channels-last in memory)."""
        if isinstance(x, (list, tuple)):  # (uint8 images, RandAugment tables): --aa-on-device
            images, tables = x
            x = apply_ops(images.to(self.device, non_blocking=True), tables.to(self.device), self.fill)
        elif isinstance(x, torch.Tensor):
            x = x.to(self.device, non_blocking=True)
        else:
            x = x.decode(self.device, self.fill)
        return self.normalize(x.contiguous(memory_format=memory_format))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) on the device -> float32 ``(x - 255 mean) / (255 std)``; float input unchanged (the
        reference path normalises in its workers)."""
        if x.dtype != torch.uint8:
            return x
        return x.float().sub_(self.mean).div_(self.std)

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """timm's RandomErasing on each sample of a normalised batch (in place; returned for chaining)."""
        return self.random_erasing(x) if self.random_erasing is not None else x

    def __call__(self, x: torch.Tensor, training: bool = True) -> torch.Tensor:
        x = self.normalize(x)
        return self.erase(x) if training else x

    def __repr__(self) -> str:
        return f"DeviceAugment(device={self.device}, random_erasing={self.random_erasing})"

"""Batches of an in-memory image set made whole, without a DataLoader: the same tensors, faster.

An in-memory set (``ArrayDataset``: Fashion-MNIST, digits, synthetic) under a transform whose only random step is
the horizontal flip (the main job's ``augment: light`` with ``padding: 0``, and every evaluation transform) needs no
per-image work each epoch: the deterministic PIL steps (resize, centre crop, a crop to the image's own size) run once
per image at start-up and are kept as uint8; a batch is then one gather, one flip of the drawn rows and one
uint8 -> float normalisation over the batch. The flip is drawn exactly as the DataLoader path draws it (torch's
generator seeded with the batch's seed, one ``torch.rand(1) < p`` per image in order) and ToTensor/Normalize are
the same element-wise operations, so every batch is bit-identical to ``build_loader``'s over the PIL transform
(``tests/test_data_memory_batches.py``); order, resume and ranks follow the same ``EpochBatchSampler``.
``memory_batches`` returns None for anything else (the caller keeps the DataLoader).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from .datasets import ArrayDataset
from .loaders import EpochBatchSampler

__all__ = ["MemoryBatches", "memory_batches"]

_FIXED = (T.Resize, T.CenterCrop)


def _split(transform: Any) -> tuple[list[Any], float, tuple[float, ...], tuple[float, ...]] | None:
    """(fixed PIL steps, flip probability, mean, std) of a transform this module reproduces, else None."""
    steps = list(getattr(transform, "transforms", []))
    if type(transform) is not T.Compose or len(steps) < 2 or type(steps[-1]) is not T.Normalize:
        return None
    *head, to_tensor, norm = steps
    if type(to_tensor).__name__ not in ("ToTensor", "MaybeToTensor") or norm.inplace:
        return None
    flip = 0.0
    if head and type(head[-1]) is T.RandomHorizontalFlip:
        flip = float(head.pop().p)
    fixed = []
    for step in head:
        if type(step) is T.RandomCrop and step.padding in (None, 0) and not step.pad_if_needed:
            fixed.append(step)  # draws nothing when the crop is the image's own size (checked on the images)
        elif type(step) in _FIXED:
            fixed.append(step)
        else:
            return None
    mean, std = (tuple(float(v) for v in torch.as_tensor(x).flatten()) for x in (norm.mean, norm.std))
    return fixed, flip, mean, std


def _prepare(dataset: ArrayDataset, fixed: list[Any]) -> torch.Tensor | None:
    """The images after the fixed steps, uint8 [N, C, H, W]; None when a random crop would really crop."""
    mode = "L" if dataset.in_chans == 1 else "RGB"
    out = None
    for i, array in enumerate(dataset.images):
        img = Image.fromarray(array).convert(mode)
        for step in fixed:
            if type(step) is T.RandomCrop and tuple(step.size) != (img.height, img.width):
                return None
            img = step(img)
        pixels = np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, -1)
        if out is None:
            out = torch.empty((len(dataset), pixels.shape[2], img.height, img.width), dtype=torch.uint8)
        out[i] = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    return out


class MemoryBatches:
    """An iterable of (images float32 [B, C, H, W], targets int64 [B]) batches over prepared uint8 images, driven
    by ``batch_sampler`` (an ``EpochBatchSampler``) as ``build_loader``'s DataLoader is."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_sampler: EpochBatchSampler, flip: float,
                 mean: tuple[float, ...], std: tuple[float, ...], dataset: Dataset):
        self.images, self.targets, self.batch_sampler, self.flip = images, targets, batch_sampler, flip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.dataset = dataset
        self._iterator = None  # (the shutdown of DataLoader workers looks for it)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for items in self.batch_sampler:
            index = torch.tensor([i for i, _ in items])
            x = self.images[index]
            if self.flip > 0:
                gen = torch.Generator().manual_seed(items[0][1])
                rows = torch.tensor([bool(torch.rand(1, generator=gen) < self.flip) for _ in items])
                x = torch.where(rows.view(-1, 1, 1, 1), x.flip(-1), x)
            yield x.float().div(255).sub(self.mean).div(self.std), self.targets[index]


def memory_batches(dataset: Dataset, loader: Any) -> MemoryBatches | None:
    """``loader`` (from ``build_loader`` over ``dataset``) as ``MemoryBatches`` when the batches can be made in
    memory bit-identically, else None."""
    parts = _split(getattr(dataset, "transform", None)) if type(dataset) is ArrayDataset else None
    if parts is None:
        return None
    fixed, flip, mean, std = parts
    images = _prepare(dataset, fixed)
    if images is None or len(mean) not in (1, images.shape[1]):
        return None
    targets = torch.tensor(dataset.targets, dtype=torch.int64)
    return MemoryBatches(images, targets, loader.batch_sampler, flip, mean, std, dataset)

"""training.step.to_device with the fast decoders' device augmentation: uint8 loader batches arrive normalised,
erased and then mixed; float batches of the reference path pass as before."""

from __future__ import annotations

import random

import torch
from timm.data import Mixup

from vanillanet.data.device_augment import DeviceAugment
from vanillanet.training.step import BatchPrep, to_device

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_uint8_batches_are_normalised_erased_then_mixed():
    random.seed(0)
    torch.manual_seed(0)
    x = torch.full((8, 3, 16, 16), 200, dtype=torch.uint8)
    y = torch.arange(8) % 4
    plain = to_device(x, y, BatchPrep(torch.device("cpu"), augment=DeviceAugment(MEAN, STD)))
    expected = (200 / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert plain.images.dtype == torch.float32 and torch.allclose(plain.images, expected.expand(8, 3, 16, 16))
    erased = to_device(x, y, BatchPrep(torch.device("cpu"), augment=DeviceAugment(MEAN, STD, reprob=1.0)))
    assert all(not torch.allclose(erased.images[i], plain.images[i]) for i in range(8))  # every sample erased
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=4, label_smoothing=0.0)
    mixed = to_device(x, y, BatchPrep(torch.device("cpu"), True, mixup, DeviceAugment(MEAN, STD)))
    assert mixed.targets.shape == (8, 4) and mixed.images.is_contiguous(memory_format=torch.channels_last)


def test_reference_batches_pass_unchanged():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    for augment in (None, DeviceAugment(MEAN, STD)):
        batch = to_device(x, y, BatchPrep(torch.device("cpu"), augment=augment))
        assert torch.equal(batch.images, x) and torch.equal(batch.targets, y)

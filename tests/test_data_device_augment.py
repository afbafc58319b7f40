"""data.device_augment: normalisation of uint8 batches equals the CPU transform's, RandomErasing on the batch draws
timm's boxes (probability, area range), float batches pass through, one-channel batches stay one channel."""

from __future__ import annotations

import random

import pytest
import torch
from torchvision import transforms as T

from vanillanet.data.device_augment import DeviceAugment

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_normalize_equals_to_tensor_and_normalize():
    x = torch.randint(0, 256, (4, 3, 16, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = T.Normalize(MEAN, STD)(x.float() / 255)
    out = DeviceAugment(MEAN, STD).normalize(x)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-5)
    assert DeviceAugment(MEAN, STD).normalize(ref) is ref  # the reference path's float batches: untouched
    gray = DeviceAugment((0.5,), (0.25,))(x[:, :1], training=False)
    assert gray.shape == (4, 1, 16, 12) and torch.allclose(gray, (x[:, :1].float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_erasing_draws_timms_boxes_over_the_batch():
    random.seed(0)
    torch.manual_seed(0)
    aug = DeviceAugment(MEAN, STD, reprob=0.25, remode="pixel")
    x = torch.full((2000, 3, 20, 20), 128, dtype=torch.uint8)
    base = aug.normalize(x.clone())
    out = aug(x)
    changed = (out != base).any(1)  # per pixel
    erased = changed.flatten(1).any(1)
    assert 0.21 < erased.float().mean() < 0.29  # probability 0.25
    area = changed.flatten(1).float().mean(1)[erased]
    assert area.min() >= 0.015 and area.max() <= 1 / 3 + 0.05  # timm's area range 0.02 .. 1/3 of the image
    noise = out[~(out == base)]
    assert abs(float(noise.mean())) < 0.1 and 0.9 < float(noise.std()) < 1.1  # per-pixel N(0, 1) (pixel mode)


def test_no_erasing_without_probability_or_outside_training():
    x = torch.full((8, 3, 8, 8), 10, dtype=torch.uint8)
    assert torch.equal(DeviceAugment(MEAN, STD)(x), DeviceAugment(MEAN, STD).normalize(x))
    assert torch.equal(DeviceAugment(MEAN, STD, reprob=1.0)(x, training=False), DeviceAugment(MEAN, STD).normalize(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_matches_cpu():
    x = torch.randint(0, 256, (4, 3, 16, 12), dtype=torch.uint8)
    out = DeviceAugment(MEAN, STD, "cuda").normalize(x.cuda())
    assert torch.allclose(out.cpu(), DeviceAugment(MEAN, STD).normalize(x), atol=1e-5)


def test_place_moves_tensors_and_decodes_encoded_batches():
    from conftest import photo_jpeg

    from vanillanet.data.gpu_decode import GpuCropSample, collate_encoded

    aug = DeviceAugment(MEAN, STD)
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(aug.place(x)[:, 0], torch.full((2, 4, 4), (1 - 0.485) / 0.229))
    rng = __import__("numpy").random.default_rng(0)
    samples = [(GpuCropSample(16)(photo_jpeg(rng, 40, 30)), i) for i in range(3)]
    batch, _ = collate_encoded(samples, (16, 16), 3)
    out = aug.place(batch)
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.float32 and -3 < float(out.mean()) < 3

"""In-memory batches are bit-identical to the DataLoader over the PIL transform (training with the flip, evaluation),
follow the sampler's resume, and step aside for transforms they cannot reproduce."""

from __future__ import annotations

import numpy as np
import torch

from vanillanet.data.datasets import ArrayDataset
from vanillanet.data.loaders import build_loader, set_epoch
from vanillanet.data.memory_batches import MemoryBatches, memory_batches
from vanillanet.data.transforms import build_transform


def _dataset(transform, in_chans=1, n=40):
    rng = np.random.default_rng(0)
    shape = (n, 28, 28) if in_chans == 1 else (n, 24, 24, 3)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    return ArrayDataset(images, rng.integers(0, 3, n).tolist(), ["a", "b", "c"], in_chans=in_chans,
                        transform=transform)


def _train_tf(in_chans=1, padding=0, hflip=0.5):
    return build_transform(True, 32, in_chans=in_chans, mean=(0.3,) * in_chans, std=(0.35,) * in_chans,
                           augment="light", padding=padding, hflip=hflip, reprob=0.0)


def _pairs(ds, batch, training, epoch=0, start=0):
    ref = build_loader(ds, batch, is_training=training, seed=3)
    fast = memory_batches(ds, build_loader(ds, batch, is_training=training, seed=3))
    assert isinstance(fast, MemoryBatches)
    for loader in (ref, fast):
        set_epoch(loader, epoch, start)
    return list(ref), list(fast)


def test_training_batches_are_bit_identical_flips_included():
    for in_chans in (1, 3):
        ref, fast = _pairs(_dataset(_train_tf(in_chans), in_chans), 8, True, epoch=2)
        assert len(ref) == len(fast) == 5
        for (x0, y0), (x1, y1) in zip(ref, fast):
            assert x1.dtype == torch.float32 and torch.equal(x0, x1) and torch.equal(y0, y1)
    unflipped = _pairs(_dataset(_train_tf(hflip=0.0)), 8, True, epoch=2)[1]
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(fast, unflipped))  # the flip did flip some images


def test_eval_batches_and_resume_match():
    ds = _dataset(build_transform(False, 32, in_chans=1, mean=(0.3,), std=(0.35,), crop_pct=0.875))
    ref, fast = _pairs(ds, 16, False)
    assert [len(y) for _, y in fast] == [16, 16, 8]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ref, fast))
    ref, fast = _pairs(_dataset(_train_tf()), 8, True, epoch=1, start=3)  # resumed after 3 batches
    assert len(fast) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(ref, fast))


def test_other_transforms_keep_the_dataloader():
    loader = build_loader(_dataset(_train_tf(padding=4)), 8, is_training=True)
    assert memory_batches(loader.dataset.dataset, loader) is None  # a padded random crop draws per image
    erasing = build_transform(True, 32, in_chans=1, mean=(0.3,), std=(0.35,), augment="light", padding=0, reprob=0.5)
    assert memory_batches(_dataset(erasing), loader) is None
    wide = ArrayDataset(np.zeros((4, 20, 24, 3), np.uint8), [0] * 4, ["a"], transform=_train_tf(3))
    assert memory_batches(wide, loader) is None  # resized to 32x38: the random crop would really crop
    assert memory_batches(torch.utils.data.TensorDataset(torch.zeros(4, 1, 8, 8)), loader) is None

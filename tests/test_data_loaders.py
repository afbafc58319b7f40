"""``data.loaders``: order and augmentation depend only on (seed, epoch, batch); resume, workers and ranks give
the same batches; the global RNG is left alone."""

from __future__ import annotations

import random

import torch

from vanillanet.data.loaders import EpochBatchSampler, build_loader, set_epoch
from vanillanet.data.sources import build_dataset
from vanillanet.data.transforms import build_transform


def _epoch(loader, epoch: int, start_batch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    set_epoch(loader, epoch, start_batch)
    return list(loader)


def _aug_dataset():
    tf = build_transform(True, 16, in_chans=1, mean=(0.5,), std=(0.25,), augment="light", reprob=0.5)
    return build_dataset("synthetic", "train", tf, in_chans=1, size=40, img_size=16)


def test_loader_depends_only_on_seed_and_epoch() -> None:
    ds = _aug_dataset()
    a = _epoch(build_loader(ds, 8, is_training=True, seed=3), 2)
    torch.manual_seed(123)  # the global RNG state must not matter
    random.seed(5)
    b = _epoch(build_loader(ds, 8, is_training=True, seed=3), 2)
    assert len(a) == 5 and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    c = _epoch(build_loader(ds, 8, is_training=True, seed=3), 3)
    assert not torch.equal(a[0][1], c[0][1])
    d = _epoch(build_loader(ds, 8, is_training=True, seed=4), 2)
    assert not torch.equal(a[0][1], d[0][1])


def test_loader_resume_and_workers_give_the_same_batches() -> None:
    ds = _aug_dataset()
    full = _epoch(build_loader(ds, 8, is_training=True, seed=1), 1)
    resumed = _epoch(build_loader(ds, 8, is_training=True, seed=1), 1, start_batch=3)
    assert len(resumed) == 2
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(full[3:], resumed))
    workers = _epoch(build_loader(ds, 8, is_training=True, seed=1, num_workers=2), 1)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(full, workers))


def test_loader_leaves_global_rng_alone() -> None:
    ds = _aug_dataset()
    torch.manual_seed(0)
    random.seed(0)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(0)
    random.seed(0)
    _epoch(build_loader(ds, 8, is_training=True), 0)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_eval_loader_order_and_completeness() -> None:
    ds = build_dataset("synthetic", "val", build_transform(False, 16, crop_pct=1.0), size=40, img_size=16)
    batches = _epoch(build_loader(ds, 4, is_training=False), 0)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == ds.targets


def test_sampler_split_across_ranks() -> None:
    def indices(rank: int, shuffle: bool) -> list[int]:
        s = EpochBatchSampler(11, 2, shuffle=shuffle, drop_last=False, seed=0, num_replicas=2, rank=rank)
        s.set_epoch(4)
        return [i for batch in s for i, _ in batch]

    train = [indices(r, True) for r in (0, 1)]
    assert len(train[0]) == len(train[1]) == 6 and set(train[0] + train[1]) == set(range(11))  # padded by one
    val = [indices(r, False) for r in (0, 1)]
    assert sorted(val[0] + val[1]) == list(range(11))  # no padding, no duplicates

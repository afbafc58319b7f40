"""Loaders whose batch order and augmentation depend only on (seed, epoch, batch index): resuming after k batches yields
the same batches as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..util.errors import ConfigError


class EpochBatchSampler(Sampler):
    """Batches whose content depends only on ``(seed, epoch)``: a seeded permutation (training) or the natural
    order (eval), split across ranks as ``indices[rank::num_replicas]``. Training pads the permutation so that every
    rank gets the same number of batches (DistributedSampler's rule); eval does not pad, so no sample counts twice
    (ranks then differ by at most one sample: sum correct/total over ranks with all_reduce).

    ``order(seed, epoch)``, when given, replaces the uniform permutation with the dataset's own seeded permutation
    (shards shuffle by windows of shards, for read locality); padding and the split over ranks stay the same.

    Each item is ``(index, batch_seed)``; ``build_loader``'s dataset view seeds the augmentation RNGs from it once
    per batch, so augmentation, like order, is independent of the worker count and of where a run was resumed.
    """

    def __init__(self, length: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, order: Callable[[int, int], list[int]] | None = None):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.length, self.batch_size, self.shuffle, self.drop_last = length, batch_size, shuffle, drop_last
        self.seed, self.num_replicas, self.rank, self.order = seed, num_replicas, rank, order
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _rank_indices(self) -> list[int]:
        if self.shuffle:
            if self.order is not None:
                order = list(self.order(self.seed, self.epoch))
            else:
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                order = torch.randperm(self.length, generator=g).tolist()
            total = -(-self.length // self.num_replicas) * self.num_replicas
            order += order[: total - len(order)]
        else:
            order = list(range(self.length))
        return order[self.rank :: self.num_replicas]

    def batches_per_epoch(self) -> int:
        n = len(self._rank_indices()) if not self.shuffle else -(-self.length // self.num_replicas)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = self._rank_indices()
        for b in range(self.start_batch, self.batches_per_epoch()):
            batch_seed = int(np.random.SeedSequence([self.seed, self.epoch, self.rank, b]).generate_state(1)[0])
            yield [(i, batch_seed) for i in indices[b * self.batch_size : (b + 1) * self.batch_size]]


class _SeededBatches(Dataset):
    """View of a dataset that takes ``(index, batch_seed)`` items and seeds python/numpy/torch-CPU RNGs once per
    batch before the transforms run; in the main process the previous RNG states are restored afterwards. A dataset
    with ``__getitems__`` (shards: one concurrent read per batch) gets the batch's indices at once."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> list[Any]:
        with _seeded_rngs(items[0][1], restore=get_worker_info() is None):
            many = getattr(self.dataset, "__getitems__", None)
            return many([i for i, _ in items]) if many is not None else [self.dataset[i] for i, _ in items]


@contextlib.contextmanager
def _seeded_rngs(seed: int, restore: bool) -> Iterator[None]:
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if restore else None
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    is_training: bool,
    num_workers: int = 0,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool | None = None,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` driven by an ``EpochBatchSampler`` (shuffled, padded and, by default,
    dropping the last partial batch when training; in order and complete for eval). ``distributed`` splits the data
    by the process group's rank. Call ``set_epoch(loader, epoch, start_batch)`` before each epoch. The dataset's
    ``epoch_order`` (if any) gives the shuffled order; ``collate_fn`` (else the dataset transform's ``collate``, if
    any) replaces torch's default collation (``--decoder gpu``'s encoded batches)."""
    num_replicas, rank = 1, 0
    if distributed:
        num_replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=is_training,
                                drop_last=is_training if drop_last is None else drop_last, seed=seed,
                                num_replicas=num_replicas, rank=rank, order=getattr(dataset, "epoch_order", None))
    collate = collate_fn or getattr(getattr(dataset, "transform", None), "collate", None)
    return DataLoader(_SeededBatches(dataset), batch_sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))  # keeps the global RNG untouched


def set_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Select the epoch (order and augmentation) and the first batch to yield (``k`` to resume after ``k``
    finished batches) of a loader made by ``build_loader``."""
    loader.batch_sampler.set_epoch(epoch, start_batch)

"""Datasets: in-memory arrays, image folders that skip unreadable files, Fashion-MNIST, digits, synthetic sets and
seeded subsets.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from ..util.errors import ConfigError, DataError, first_line
from .decode import read_file
from .images import _UNREADABLE, open_image

_log = logging.getLogger(__name__)


SPLITS = ("train", "val")


FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)  # where Debian's dataset-fashion-mnist installs


FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class ArrayDataset(Dataset):
    """In-memory uint8 images (N,H,W grayscale or N,H,W,3 RGB) with integer labels; items are PIL images so that
    the same transforms serve folders and arrays."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: Sequence[str], *, in_chans: int = 3,
                 transform: Callable | None = None):
        if in_chans not in (1, 3):
            raise ConfigError(f"in_chans must be 1 or 3, got {in_chans}; use 1 for grayscale or 3 for RGB input")
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.in_chans = in_chans
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])
        img = img.convert("L" if self.in_chans == 1 else "RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


class SafeImageFolder(ImageFolder):
    """torchvision's ImageFolder that survives unreadable files: it logs each one, marks it in a shared-memory mask
    (so counts made in DataLoader workers reach the main process) and returns the next readable sample; with
    ``strict=True`` the first unreadable file raises ``DataError`` instead."""

    def __init__(self, root: str | Path, transform: Callable | None = None, *, in_chans: int = 3,
                 strict: bool = False, allow_large: bool = False):
        mode = {1: "L", 3: "RGB"}.get(in_chans)
        if mode is None:
            raise ConfigError(f"in_chans must be 1 or 3, got {in_chans}; use 1 for grayscale or 3 for RGB input")
        # a transform that decodes (``decodes = True``, --decoder fast) receives the file's bytes
        self.decodes = bool(getattr(transform, "decodes", False))
        try:
            super().__init__(str(root), transform=transform,
                             loader=read_file if self.decodes else lambda p: open_image(p, mode, limit=not allow_large))
        except FileNotFoundError as err:  # no class folders, or class folders without images
            raise DataError(f"{root}: {first_line(err, 500)}; put the images in one subfolder per class") from None
        self.strict = strict
        self.bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    @property
    def num_skipped(self) -> int:
        return int(self.bad.sum())

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        for step in range(n):
            i = (index + step) % n
            if self.bad[i]:
                continue
            path, target = self.samples[i]
            try:
                img = self.loader(path)
                if self.decodes:  # decoding is the transform's, so its errors are the file's
                    return self.transform(img), target
            except _UNREADABLE as err:
                if self.strict:
                    raise DataError(f"cannot read image {path} ({first_line(err, 500)}); fix or delete it, or train "
                                    "without --strict-data to skip unreadable images") from None
                self.bad[i] = True
                _log.warning("skipping unreadable image %s (%s); %d skipped so far", path, first_line(err, 500),
                             self.num_skipped)
                continue
            if self.transform is not None:
                img = self.transform(img)
            return img, target
        raise DataError(f"no readable image in {self.root}; check the files (every one failed to decode)")


def num_skipped(obj: Any) -> int:
    """Unreadable images skipped so far by a dataset, a wrapped dataset or a DataLoader (0 for in-memory sets)."""
    while obj is not None:
        if isinstance(getattr(type(obj), "num_skipped", None), property):  # SafeImageFolder, ShardDataset
            return obj.num_skipped
        obj = getattr(obj, "dataset", None)
    return 0




def _short(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "") if names else "none"


def _is_idx_folder(data: str) -> bool:
    p = Path(data)
    return p.is_dir() and any((p / (_FMNIST_FILES["train"][0] + ext)).is_file() for ext in (".gz", ""))


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,28,28], labels int64 [N]) of Fashion-MNIST's ``train`` or ``val`` (= t10k test) split,
    parsed from the IDX files (``.gz`` or not) in ``root`` or, by default, where Debian's package puts them."""
    folders = [Path(root)] if root is not None else list(FASHION_MNIST_DIRS)
    img_name, lbl_name = _FMNIST_FILES[split]
    for folder in folders:
        paths = [_find_idx(folder, name) for name in (img_name, lbl_name)]
        if all(paths):
            images, labels = _read_idx(paths[0]), _read_idx(paths[1])
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"Fashion-MNIST files in {folder} do not match (images {images.shape}, labels "
                                f"{labels.shape}); reinstall them: apt-get install --reinstall dataset-fashion-mnist")
            return images, labels.astype(np.int64)
    where = ", ".join(str(f) for f in folders)
    raise DataError(f"Fashion-MNIST files ({img_name}.gz, {lbl_name}.gz) not found in {where}; run apt-get install "
                    "dataset-fashion-mnist or pass the folder that holds them as --data")


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions, big-endian int32 sizes,
    then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path} ({first_line(err, 500)}); re-download or re-install the file") from None
    ndim = raw[3] if len(raw) >= 4 else 0
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or ndim == 0:
        raise DataError(f"{path} is not a uint8 IDX file; pass the folder with the original Fashion-MNIST files")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{path} is truncated ({len(raw) - header} bytes of data for shape {shape}); re-download it")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (values 0-16, scaled to 0-255) with a fixed stratified 80/20 train/val split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)
    x_tr, x_va, y_tr, y_va = train_test_split(images, d.target, test_size=0.2, random_state=0, stratify=d.target)
    return (x_tr, y_tr) if split == "train" else (x_va, y_va)


def synthetic_arrays(n: int, num_classes: int, img_size: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable, deterministic RGB set: each class is a fixed low-frequency colour pattern (a 4x4 grid scaled up,
    the same for every split), each sample that pattern plus noise and a brightness shift; labels cycle through
    the classes."""
    patterns = np.random.default_rng(12345).uniform(0, 255, size=(num_classes, 4, 4, 3))
    reps = -(-img_size // 4)
    patterns = patterns.repeat(reps, 1).repeat(reps, 2)[:, :img_size, :img_size]
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    noise = rng.normal(0, 40, size=(n, img_size, img_size, 3)) + rng.normal(0, 20, size=(n, 1, 1, 1))
    return np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8), labels.astype(np.int64)


class _Subset(Dataset):
    """The items at ``indices`` of a dataset, keeping its ``classes``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.classes = list(dataset.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


def take_subset(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """A fixed random subset of ``n`` items (drawn with ``seed``, independent of the run's seed, so every run of a
    study trains on the same images), in the dataset's order. For shorter experiments."""
    if not 0 < n <= len(dataset):
        raise ConfigError(f"train_subset must lie in 1..{len(dataset)} (the training set's size), got {n}")
    picked = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n])
    return _Subset(dataset, picked.tolist())


def spread_subset(dataset: Dataset, n: int | None) -> Dataset:
    """``n`` items spread evenly over ``dataset`` in its order (every class of a class-sorted set is represented);
    the whole dataset for ``n`` None or at least its size. For calibrating on, or checking with, part of a split."""
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ConfigError(f"the number of images must be at least 1, got {n}")
    return _Subset(dataset, np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist())


def mean_std(dataset: Dataset, max_samples: int = 10_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (in [0, 1]) of a dataset's raw images, e.g. to normalise a grayscale folder;
    in-memory sets use all images, others the first ``max_samples``."""
    if isinstance(dataset, ArrayDataset):
        x = dataset.images.astype(np.float64) / 255
        if x.ndim == 3:
            x = x[..., None]
        if dataset.in_chans == 1 and x.shape[-1] == 3:
            x = x @ np.array([0.299, 0.587, 0.114])[:, None]
        elif dataset.in_chans == 3 and x.shape[-1] == 1:
            x = x.repeat(3, -1)
        flat = x.reshape(-1, x.shape[-1])
        return tuple(flat.mean(0).tolist()), tuple(flat.std(0).tolist())
    total = total_sq = None
    count = 0
    transform, dataset.transform = getattr(dataset, "transform", None), T.ToTensor()
    try:
        for i in range(min(len(dataset), max_samples)):
            x = dataset[i][0].flatten(1).double()
            total = x.sum(1) if total is None else total + x.sum(1)
            total_sq = (x * x).sum(1) if total_sq is None else total_sq + (x * x).sum(1)
            count += x.shape[1]
    finally:
        dataset.transform = transform
    if not count:
        raise DataError("cannot compute mean/std of an empty dataset; check the dataset folder")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())

"""Datasets, preprocessing and loaders for training, evaluation and prediction.

- **Sources** are records in one table, ``SOURCES``: a name, preprocessing defaults (``DataDefaults``), the options
  the source takes (e.g. Fashion-MNIST's ``root``, a folder's ``strict``, the synthetic set's ``size``) and a
  ``load(split, transform, ...)`` function. ``--data`` names a source or a path: an ImageFolder root holding
  ``train/`` and ``val/``, or a folder holding Fashion-MNIST's four IDX files. Adding a dataset kind is one record.
  ``build_dataset(data, split, transform, *, in_chans, img_size, num_classes, **options)`` returns a Dataset with
  ``.classes``; without a transform an item is ``(PIL image, label)`` (mode ``L`` for ``in_chans == 1``, ``RGB``
  for 3). Unreadable images in a folder are skipped (the next good one is returned) with a warning and counted
  (``num_skipped``); with the folder option ``strict=True`` they raise ``DataError``.
- **Preprocessing**: ``Preprocess`` (img_size, crop_pct, mean, std, interpolation) is the evaluation transform used
  identically by train, eval and predict, and ``resolve_preprocess`` layers its settings (model config < source
  defaults < checkpoint metadata < explicit values). ``build_transform(True, ...)`` is the training transform:
  ``augment="timm"`` is the paper's recipe through ``timm.data.create_transform``, ``"light"`` resize + random crop
  with padding + flip (+ erasing), ``"none"`` the eval transform.
- **Loaders**: ``build_loader(dataset, batch_size, *, is_training, ...)`` whose batch order AND augmentation depend
  only on ``(seed, epoch, batch index)``: call ``set_epoch(loader, epoch, start_batch)`` before each epoch; resuming
  after ``k`` finished batches yields batches ``k, k+1, ...`` identical to an uninterrupted run, whatever
  ``num_workers`` is, without touching the global RNG streams.
- **Limits** (each lifted by ``--allow-large`` where a command offers it): an input size above ``MAX_IMG_SIZE`` px,
  and images above ``MAX_IMAGE_PIXELS`` or with an aspect ratio above ``MAX_ASPECT`` (checked from the header,
  before decoding: resizing a 600000x1 image's short side to 256 px would take gigabytes) are refused.
  ``open_image`` also converts 16-bit and float images by their true range instead of clipping them to white or
  black.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from .config import coerce, value_type
from .errors import ConfigError, DataError, first_line

__all__ = [
    "MAX_ASPECT",
    "MAX_IMAGE_PIXELS",
    "MAX_IMG_SIZE",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIRS",
    "DATA_HELP",
    "SOURCES",
    "ArrayDataset",
    "DataDefaults",
    "DataSource",
    "EpochBatchSampler",
    "Preprocess",
    "SafeImageFolder",
    "build_dataset",
    "build_loader",
    "build_transform",
    "check_img_size",
    "check_pixels",
    "dataset_defaults",
    "find_source",
    "load_fashion_mnist",
    "mean_std",
    "num_skipped",
    "open_image",
    "resolve_preprocess",
    "set_epoch",
    "spread_subset",
    "take_subset",
]

_log = logging.getLogger(__name__)

SPLITS = ("train", "val")
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)  # where Debian's dataset-fashion-mnist installs
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
MAX_IMG_SIZE = 4096  # network input size; one 4096 px fp32 RGB image is 0.2 GB before the first layer
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own bomb threshold (a 0.25 GB RGB image)
MAX_ASPECT = 100  # long side / short side


def check_img_size(img_size: int, *, allow_large: bool = False, what: str = "img_size") -> int:
    """``img_size`` if it is at least 1 and, unless ``allow_large``, at most ``MAX_IMG_SIZE``; else ConfigError."""
    if img_size < 1:
        raise ConfigError(f"{what} must be at least 1, got {img_size}")
    if img_size > MAX_IMG_SIZE and not allow_large:
        raise ConfigError(f"{what} {img_size} px is above the {MAX_IMG_SIZE} px limit (one image would take "
                          f"{3 * 4 * img_size**2 / 1e9:.1f} GB before the first layer); pass --allow-large if you "
                          "mean it")
    return img_size


def check_pixels(width: int, height: int) -> None:
    """Image.DecompressionBombError (which every reader treats as an unreadable image) for an image whose size,
    read from its header, is above ``MAX_IMAGE_PIXELS`` or whose aspect ratio is above ``MAX_ASPECT``."""
    if width * height > MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{width}x{height} px is above the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit; "
                                           "pass --allow-large if you mean it")
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        raise Image.DecompressionBombError(f"{width}x{height} px has an aspect ratio above {MAX_ASPECT}:1, which "
                                           "resizing to the network input would blow up to gigabytes; crop it, or "
                                           "pass --allow-large")


def open_image(path: str | Path, mode: str, *, limit: bool = True) -> Image.Image:
    """A decoded image in ``mode`` ("L" or "RGB"); size limits checked before decoding (unless ``limit`` is False).
    16-bit images are scaled from 0..65535 and float images from 0..1 (PIL would clip them to white or black);
    float images outside [0, 1] are refused (their range is unknown)."""
    with Image.open(path) as img:
        if limit:
            check_pixels(*img.size)
        return _eight_bit(img).convert(mode)  # convert() forces the full decode inside the caller's try


def _eight_bit(img: Image.Image) -> Image.Image:
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img, dtype=np.float64)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    top = 1.0 if img.mode == "F" else 65535.0
    if lo < 0 or hi > top:
        kind = "float" if img.mode == "F" else "integer"
        raise ValueError(f"{kind} image with values in [{lo:g}, {hi:g}], outside the 0..{top:g} range it is read "
                         "with; save it as an 8- or 16-bit image")
    return Image.fromarray(np.round(values * (255.0 / top)).astype(np.uint8), mode="L")


@dataclass(frozen=True)
class DataDefaults:
    """Preprocessing that suits a source: network input size, normalisation and eval crop fraction."""

    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float


# --------------------------------------------------------------------------------------------------- datasets


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
        try:
            super().__init__(str(root), transform=transform,
                             loader=lambda p: open_image(p, mode, limit=not allow_large))
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
        if isinstance(obj, SafeImageFolder):
            return obj.num_skipped
        obj = getattr(obj, "dataset", None)
    return 0


def _image_folder(base: Path, split: str, transform: Callable | None, *, in_chans: int,
                  strict: bool = False, allow_large: bool = False) -> SafeImageFolder:
    if not base.is_dir():
        raise DataError(f"dataset folder {base} does not exist; pass an ImageFolder root (with train/ and val/) or "
                        f"one of {', '.join(n for n in SOURCES if n != 'folder')}")
    split_dirs = {s: base / s for s in SPLITS}
    missing = [s for s, d in split_dirs.items() if not d.is_dir()]
    if missing:
        raise DataError(f"{base} has no {' or '.join(m + '/' for m in missing)} subfolder; an ImageFolder root needs "
                        "train/ and val/, each with one subfolder per class")
    classes = {s: {p.name for p in d.iterdir() if p.is_dir()} for s, d in split_dirs.items()}
    if classes["train"] != classes["val"]:
        only_t = sorted(classes["train"] - classes["val"])
        only_v = sorted(classes["val"] - classes["train"])
        raise DataError(f"{base}: train/ and val/ have different classes (only in train: {_short(only_t)}; only in "
                        f"val: {_short(only_v)}); give both the same class subfolders")
    return SafeImageFolder(split_dirs[split], transform, in_chans=in_chans, strict=strict, allow_large=allow_large)


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


# ---------------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class SourceOption:
    """An option of one data source; ``config_key`` is the flat training-config key (and flag) that also sets it."""

    default: Any
    help: str
    config_key: str | None = None


@dataclass(frozen=True)
class DataSource:
    """A kind of dataset: ``load(data, split, transform, *, in_chans, img_size, num_classes, **options)`` returns a
    Dataset with ``.classes``; ``claims(data)`` says whether a ``--data`` path is of this kind."""

    name: str
    summary: str
    defaults: DataDefaults
    load: Callable[..., Dataset]
    options: Mapping[str, SourceOption] = field(default_factory=dict)
    claims: Callable[[str], bool] = lambda data: False


def _load_fashion_mnist(data: str, split: str, transform: Callable | None, *, in_chans: int, root: str | None = None,
                        **_: Any) -> Dataset:
    images, labels = load_fashion_mnist(split, root if data == "fashion-mnist" else data)
    return ArrayDataset(images, labels, FASHION_MNIST_CLASSES, in_chans=in_chans, transform=transform)


def _load_digits(data: str, split: str, transform: Callable | None, *, in_chans: int, **_: Any) -> Dataset:
    images, labels = _digits(split)
    return ArrayDataset(images, labels, [str(d) for d in range(10)], in_chans=in_chans, transform=transform)


def _load_synthetic(data: str, split: str, transform: Callable | None, *, in_chans: int, img_size: int | None = None,
                    num_classes: int | None = None, size: int = 512, **_: Any) -> Dataset:
    num_classes, img_size = num_classes or 10, img_size or 32
    n = size if split == "train" else max(num_classes, size // 4)
    images, labels = synthetic_arrays(n, num_classes, img_size, seed=0 if split == "train" else 1)
    classes = [f"class_{c}" for c in range(num_classes)]
    return ArrayDataset(images, labels, classes, in_chans=in_chans, transform=transform)


def _load_folder(data: str, split: str, transform: Callable | None, *, in_chans: int, strict: bool = False,
                 allow_large: bool = False, **_: Any) -> Dataset:
    return _image_folder(Path(data), split, transform, in_chans=in_chans, strict=strict, allow_large=allow_large)


_SMALL_GRAY = "the small grayscale sets are upscaled to 32 px (the stem's stride 4 and three stride-2 blocks need 32)"
# The source table: a new dataset kind is one record. Named sources first; "folder" takes any other path.
SOURCES: dict[str, DataSource] = {s.name: s for s in (
    DataSource("fashion-mnist", "Fashion-MNIST from its IDX files (Debian's dataset-fashion-mnist, or a folder "
               "holding the four files); val = the 10k test set; " + _SMALL_GRAY,
               DataDefaults(32, (0.2860,), (0.3530,), 1.0), _load_fashion_mnist,
               {"root": SourceOption(None, "folder with Fashion-MNIST's IDX files (default: the Debian package's)",
                                     "data_root")},
               claims=lambda data: _is_idx_folder(data)),
    DataSource("digits", "scikit-learn's 8x8 digits, fixed stratified 80/20 split; " + _SMALL_GRAY,
               DataDefaults(32, (0.3053,), (0.3760,), 1.0), _load_digits),
    DataSource("synthetic", "deterministic, learnable coloured patterns for tests and smoke runs",
               DataDefaults(32, (0.5,), (0.25,), 1.0), _load_synthetic,
               {"size": SourceOption(512, "training images of the synthetic set (val gets a quarter)",
                                     "synthetic_size")}),
    DataSource("folder", "an ImageFolder root with train/ and val/, one subfolder per class (ImageNet layout)",
               DataDefaults(224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875), _load_folder,
               {"strict": SourceOption(False, "an unreadable image is an error instead of a counted skip",
                                       "strict_data"),
                "allow_large": SourceOption(False, "accept images above the size limits (data.MAX_IMAGE_PIXELS, "
                                            "data.MAX_ASPECT)")}),
)}


DATA_HELP = ("the dataset: an ImageFolder root (train/ and val/, one subfolder per class), a folder of Fashion-MNIST "
             f"IDX files, or one of {', '.join(n for n in SOURCES if n != 'folder')}")


def add_loading_arguments(parser: Any) -> None:
    """The options of a command that reads a dataset (eval, quantize): loader processes and the size limits."""
    parser.add_argument("--workers", type=value_type(int, ge=0), default=min(4, os.cpu_count() or 1),
                        help="data-loading processes (default: 4, or the number of CPUs if fewer)")
    parser.add_argument("--allow-large", action="store_true",
                        help="lift the size limits (input size 4096 px; images 89 Mpx, aspect ratio 100:1; models 1e9 "
                        "parameters)")


def find_source(data: str | Path) -> DataSource:
    """The source ``--data`` names: a source name, else the first source claiming the path, else a folder."""
    data = str(data)
    if data in SOURCES and data != "folder":
        return SOURCES[data]
    return next((s for s in SOURCES.values() if s.claims(data)), SOURCES["folder"])


def dataset_defaults(data: str | Path) -> DataDefaults:
    """Preprocessing defaults suited to ``data``'s source."""
    return find_source(data).defaults


def source_options(source: DataSource, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that apply to ``source``: plain names must be its options (else a ConfigError naming the valid
    ones); names qualified with a source (``synthetic.size``) apply only to that source and are ignored otherwise."""
    values = {k: o.default for k, o in source.options.items()}
    for key, value in options.items():
        owner, _, name = key.rpartition(".")
        if owner and owner != source.name:
            continue
        if name not in source.options:
            valid = ", ".join(source.options) or "none"
            raise ConfigError(f"data source {source.name} has no option {name!r} (its options: {valid})")
        default = source.options[name].default
        values[name] = value if value is None or default is None else coerce(name, value, type(default))
    return values


def build_dataset(data: str | Path, split: str, transform: Callable | None = None, *, in_chans: int = 3,
                  img_size: int | None = None, num_classes: int | None = None, **options: Any) -> Dataset:
    """One split of ``data``; see the module docstring. ``options`` are the source's (see ``source_options``);
    ``img_size`` and ``num_classes`` shape generated data and are ignored by real sources."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    source = find_source(data)
    return source.load(str(data), split, transform, in_chans=in_chans, img_size=img_size, num_classes=num_classes,
                       **source_options(source, options))


# -------------------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Preprocess:
    """Settings of the evaluation transform (bicubic resize of the short side to img_size / crop_pct, centre
    crop, normalise), shared by train, eval and predict."""

    img_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    interpolation: str = "bicubic"

    def transform(self, in_chans: int = 3) -> Callable:
        return build_transform(False, self.img_size, in_chans=in_chans, mean=self.mean, std=self.std,
                               crop_pct=self.crop_pct, interpolation=self.interpolation)

    def as_meta(self) -> dict[str, Any]:
        """The settings as checkpoint metadata (what ``resolve_preprocess`` reads back)."""
        return {"img_size": self.img_size, "crop_pct": self.crop_pct, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}


_PRE_KEYS = ("img_size", "crop_pct", "mean", "std", "interpolation")


def resolve_preprocess(*, model_cfg: Mapping[str, Any] | None = None, data: str | Path | None = None,
                       meta: Mapping[str, Any] | None = None, allow_large: bool = False,
                       **explicit: Any) -> Preprocess:
    """The eval transform's settings, in increasing priority: a timm model config (``pretrained_cfg``), the data
    source's defaults, what a checkpoint records, explicit values (None = not given). The result is checked: the
    input size against ``MAX_IMG_SIZE`` (unless ``allow_large``), a positive std, a known interpolation."""
    values: dict[str, Any] = {}
    if model_cfg:
        values.update(img_size=int(model_cfg.get("input_size", (3, 224, 224))[-1]),
                      crop_pct=model_cfg.get("crop_pct"), mean=model_cfg.get("mean"), std=model_cfg.get("std"),
                      interpolation=model_cfg.get("interpolation") or None)
    if data is not None:
        d = dataset_defaults(data)
        values.update(img_size=d.img_size, crop_pct=d.crop_pct, mean=d.mean, std=d.std)
    for layer in (meta or {}, explicit):
        values.update({k: layer[k] for k in _PRE_KEYS if layer.get(k) is not None})
    crop_pct = values.get("crop_pct")
    if crop_pct is not None and not 0 < float(crop_pct) <= 1:
        raise ConfigError(f"crop_pct (--crop-pct) must be in (0, 1], got {crop_pct}")
    values = {k: v for k, v in values.items() if v is not None}
    for key in ("mean", "std"):
        if key in values:
            values[key] = tuple(float(v) for v in values[key])
    if "img_size" in values:
        values["img_size"] = check_img_size(int(values["img_size"]), allow_large=allow_large)
    if any(v <= 0 for v in values.get("std", ())):
        raise ConfigError(f"the normalisation std must be positive, got {list(values['std'])} (from the checkpoint "
                          "or the settings): fix the std setting")
    if "interpolation" in values:
        try:
            T.InterpolationMode(values["interpolation"])
        except ValueError:
            raise ConfigError(f"unknown interpolation {values['interpolation']!r}; use bicubic, bilinear, "
                              "nearest, lanczos, hamming or box") from None
    return Preprocess(**values)


# ------------------------------------------------------------------------------------------------- transforms


def _fit_channels(values: Sequence[float], in_chans: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return (sum(values) / len(values),)
    raise ConfigError(f"{what} has {len(values)} values but in_chans is {in_chans}; give 1 or {in_chans} values")


def build_transform(
    is_training: bool,
    img_size: int = 224,
    *,
    in_chans: int = 3,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    augment: str = "timm",
    auto_augment: str | None = "rand-m7-mstd0.5-inc1",
    reprob: float = 0.25,
    remode: str = "pixel",
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    color_jitter: float = 0.4,
    padding: int | None = None,
) -> Callable:
    """A PIL image -> normalised tensor transform; see the module docstring. ``mean``/``std`` with one value are
    repeated for RGB, with three are averaged for grayscale. ``padding`` (light mode) defaults to img_size // 8."""
    mean = _fit_channels(mean, in_chans, "mean")
    std = _fit_channels(std, in_chans, "std")
    if augment not in ("timm", "light", "none"):
        raise ConfigError(f"augment must be timm, light or none, got {augment!r}")
    if not is_training or augment == "none":
        return create_transform(img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                                mean=mean, std=std)
    if augment == "timm":
        return create_transform(img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
                                color_jitter=color_jitter, auto_augment=auto_augment or None,
                                interpolation=interpolation, mean=mean, std=std, re_prob=reprob, re_mode=remode)
    mode = T.InterpolationMode(interpolation)
    steps: list[Callable] = [
        T.Resize(img_size, interpolation=mode),
        T.RandomCrop(img_size, padding=img_size // 8 if padding is None else padding),
        T.RandomHorizontalFlip(hflip),
        T.ToTensor(),
        T.Normalize(mean, std),
    ]
    if reprob > 0:
        steps.append(RandomErasing(reprob, mode=remode, device="cpu"))
    return T.Compose(steps)


# ---------------------------------------------------------------------------------------------------- loaders


class EpochBatchSampler(Sampler):
    """Batches whose content depends only on ``(seed, epoch)``: a seeded permutation (training) or the natural
    order (eval), split across ranks as ``indices[rank::num_replicas]``. Training pads the permutation so that every
    rank gets the same number of batches (DistributedSampler's rule); eval does not pad, so no sample counts twice
    (ranks then differ by at most one sample: sum correct/total over ranks with all_reduce).

    Each item is ``(index, batch_seed)``; ``build_loader``'s dataset view seeds the augmentation RNGs from it once
    per batch, so augmentation, like order, is independent of the worker count and of where a run was resumed.
    """

    def __init__(self, length: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.length, self.batch_size, self.shuffle, self.drop_last = length, batch_size, shuffle, drop_last
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _rank_indices(self) -> list[int]:
        if self.shuffle:
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
    batch before the transforms run; in the main process the previous RNG states are restored afterwards."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> list[Any]:
        with _seeded_rngs(items[0][1], restore=get_worker_info() is None):
            return [self.dataset[i] for i, _ in items]


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
) -> DataLoader:
    """A DataLoader over ``dataset`` driven by an ``EpochBatchSampler`` (shuffled, padded and, by default,
    dropping the last partial batch when training; in order and complete for eval). ``distributed`` splits the data
    by the process group's rank. Call ``set_epoch(loader, epoch, start_batch)`` before each epoch."""
    num_replicas, rank = 1, 0
    if distributed:
        num_replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=is_training,
                                drop_last=is_training if drop_last is None else drop_last, seed=seed,
                                num_replicas=num_replicas, rank=rank)
    return DataLoader(_SeededBatches(dataset), batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))  # keeps the global RNG untouched


def set_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Select the epoch (order and augmentation) and the first batch to yield (``k`` to resume after ``k``
    finished batches) of a loader made by ``build_loader``."""
    loader.batch_sampler.set_epoch(epoch, start_batch)

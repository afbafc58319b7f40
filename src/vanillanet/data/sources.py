"""The data sources as records (``SOURCES``): what ``--data`` may name and how each is loaded."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from ..util.errors import ConfigError, DataError
from ..util.validation import coerce
from .datasets import (
    FASHION_MNIST_CLASSES,
    SPLITS,
    ArrayDataset,
    SafeImageFolder,
    _digits,
    _is_idx_folder,
    _short,
    load_fashion_mnist,
    synthetic_arrays,
)
from .shard_format import is_shard_location
from .shards import ShardDataset


@dataclass(frozen=True)
class DataDefaults:
    """Preprocessing that suits a source: network input size, normalisation and eval crop fraction."""

    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float


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


def _load_shards(data: str, split: str, transform: Callable | None, *, in_chans: int, strict: bool = False,
                 allow_large: bool = False, **_: Any) -> Dataset:
    return ShardDataset(data, split, transform, in_chans=in_chans, strict=strict, allow_large=allow_large)


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
    DataSource("shards", "WebDataset shards written by `vanillanet shards`: their folder, its manifest.json, or an "
               "s3://, gs://, http(s):// or file:// URL of either",
               DataDefaults(224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875), _load_shards,
               {"strict": SourceOption(False, "an unreadable image is an error instead of a counted skip",
                                       "strict_data"),
                "allow_large": SourceOption(False, "accept images above the size limits (data.MAX_IMAGE_PIXELS, "
                                            "data.MAX_ASPECT)")},
               claims=is_shard_location),
    DataSource("folder", "an ImageFolder root with train/ and val/, one subfolder per class (ImageNet layout)",
               DataDefaults(224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875), _load_folder,
               {"strict": SourceOption(False, "an unreadable image is an error instead of a counted skip",
                                       "strict_data"),
                "allow_large": SourceOption(False, "accept images above the size limits (data.MAX_IMAGE_PIXELS, "
                                            "data.MAX_ASPECT)")}),
)}


DATA_HELP = ("the dataset: an ImageFolder root (train/ and val/, one subfolder per class), shards written by "
             "`vanillanet shards` (folder, manifest or s3:// gs:// http(s):// URL), a folder of Fashion-MNIST "
             f"IDX files, or one of {', '.join(n for n in SOURCES if n not in ('folder', 'shards'))}")


def find_source(data: str | Path) -> DataSource:
    """The source ``--data`` names: a source name, else the first source claiming the path, else a folder."""
    data = str(data)
    if data in SOURCES and data not in ("folder", "shards"):
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

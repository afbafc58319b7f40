"""Datasets, transforms and loaders: every source, grayscale handling, unreadable images, bad-input messages and
loader determinism (order and augmentation depend only on seed, epoch and batch index)."""

from __future__ import annotations

import gzip
import logging
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vanillanet.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIRS,
    load_fashion_mnist,
    mean_std,
    num_skipped,
)
from vanillanet.data.loaders import EpochBatchSampler, build_loader, set_epoch
from vanillanet.data.sources import build_dataset, dataset_defaults
from vanillanet.data.transforms import build_transform
from vanillanet.util.errors import ConfigError, DataError


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    """A miniature Fashion-MNIST: 20 train and 10 test 28x28 images in the four original IDX .gz files."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def _save(path: Path, color: int = 128, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (color, color // 2, 255 - color)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An ImageFolder root: train/{cat,dog} with 3 images each, val/{cat,dog} with 1 each."""
    for split, n in (("train", 3), ("val", 1)):
        for c, name in enumerate(("cat", "dog")):
            for i in range(n):
                _save(tmp_path / split / name / f"{i}.png", 40 + 100 * c + i)
    return tmp_path


# ------------------------------------------------------------------------------------------------------ sources


def test_fashion_mnist_from_idx_folder(idx_dir: Path) -> None:
    for ds in (build_dataset(idx_dir, "train", in_chans=1), build_dataset("fashion-mnist", "train", root=idx_dir)):
        assert len(ds) == 20 and ds.classes == FASHION_MNIST_CLASSES
    val = build_dataset(idx_dir, "val", in_chans=1)
    img, label = val[3]
    assert len(val) == 10 and img.mode == "L" and img.size == (28, 28) and label == 3
    x, _ = load_fashion_mnist("val", idx_dir)
    assert np.array_equal(np.asarray(img), x[3])


def test_fashion_mnist_uncompressed_files(idx_dir: Path) -> None:
    for f in idx_dir.glob("*.gz"):
        f.with_suffix("").write_bytes(gzip.decompress(f.read_bytes()))
        f.unlink()
    assert len(build_dataset(idx_dir, "val")) == 10


@pytest.mark.skipif(not any((d / "t10k-labels-idx1-ubyte.gz").is_file() for d in FASHION_MNIST_DIRS),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package() -> None:
    ds = build_dataset("fashion-mnist", "val", in_chans=1)
    assert len(ds) == 10_000 and sorted(set(ds.targets)) == list(range(10))
    assert np.bincount(ds.targets).tolist() == [1000] * 10


def test_digits_and_upscaling() -> None:
    train, val = build_dataset("digits", "train", in_chans=1), build_dataset("digits", "val", in_chans=1)
    assert (len(train), len(val)) == (1437, 360) and train.classes == [str(d) for d in range(10)]
    assert train[0][0].size == (8, 8)
    d = dataset_defaults("digits")
    tf = build_transform(False, d.img_size, in_chans=1, mean=d.mean, std=d.std, crop_pct=d.crop_pct)
    assert build_dataset("digits", "val", tf, in_chans=1)[0][0].shape == (1, 32, 32)


def test_synthetic_is_deterministic_and_learnable() -> None:
    a, b = (build_dataset("synthetic", "train", size=60) for _ in range(2))
    assert np.array_equal(a.images, b.images) and a.images.shape == (60, 32, 32, 3) and len(a.classes) == 10
    val = build_dataset("synthetic", "val", size=60, num_classes=3, img_size=16)
    assert len(val) == 15 and val[0][0].size == (16, 16)
    # nearest class mean on raw pixels separates the classes: the set is learnable
    train = build_dataset("synthetic", "train", size=90, num_classes=3, img_size=16)
    x, y = train.images.reshape(90, -1).astype(float), np.array(train.targets)
    centroids = np.stack([x[y == c].mean(0) for c in range(3)])
    xv = val.images.reshape(len(val), -1).astype(float)
    pred = ((xv[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == np.array(val.targets)).mean() == 1.0


# -------------------------------------------------------------------------------------------------- grayscale


def test_grayscale_channels(folder: Path) -> None:
    rgb = build_dataset("digits", "val", in_chans=3)[0][0]
    arr = np.asarray(rgb)
    assert rgb.mode == "RGB" and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    assert build_dataset(folder, "train", in_chans=1)[0][0].mode == "L"
    tf = build_transform(False, 16, in_chans=3, mean=(0.5,), std=(0.25,), crop_pct=1.0)
    x = build_dataset("digits", "val", tf, in_chans=3)[0][0]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[2])
    tf1 = build_transform(False, 16, in_chans=1, mean=(0.2, 0.4, 0.6), std=(0.5, 0.5, 0.5), crop_pct=1.0)
    assert tf1.transforms[-1].mean.tolist() == pytest.approx([0.4])
    with pytest.raises(ConfigError, match="give 1 or 3"):
        build_transform(False, 16, in_chans=3, mean=(0.2, 0.4), std=(0.5,))


@pytest.mark.parametrize("augment", ["timm", "light", "none"])
def test_train_transforms_on_grayscale(augment: str) -> None:
    random.seed(0)
    torch.manual_seed(0)
    d = dataset_defaults("fashion-mnist")
    tf = build_transform(True, 32, in_chans=1, mean=d.mean, std=d.std, augment=augment)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), "L")
    for _ in range(5):
        assert tf(img).shape == (1, 32, 32)


def test_mean_std() -> None:
    ds = build_dataset("digits", "train", in_chans=1)
    mean, std = mean_std(ds)
    ref = ds.images.astype(np.float64) / 255
    assert mean[0] == pytest.approx(ref.mean()) and std[0] == pytest.approx(ref.std())
    assert mean[0] == pytest.approx(dataset_defaults("digits").mean[0], abs=2e-3)


def test_mean_std_image_folder(folder: Path) -> None:
    mean, std = mean_std(build_dataset(folder, "val"))
    # val holds one image per class: colours (40, 20, 215) and (140, 70, 115)
    assert mean == pytest.approx((90 / 255, 45 / 255, 165 / 255)) and std[0] == pytest.approx(50 / 255)


# ------------------------------------------------------------------------------------------- unreadable images


def test_corrupt_image_skipped_and_counted(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = folder / "train" / "cat" / "1.png"
    bad.write_bytes(b"not an image at all")
    ds = build_dataset(folder, "train")
    with caplog.at_level(logging.WARNING, logger="vanillanet.data"):
        img, label = ds[1]  # 1.png is unreadable: the next sample (cat/2.png) comes back
    assert label == 0 and np.asarray(img)[0, 0, 0] == 42
    assert num_skipped(ds) == 1 and "1.png" in caplog.text
    ds[1]
    assert num_skipped(ds) == 1  # counted once per file
    ds.transform = build_transform(False, 8, crop_pct=1.0)
    loader = build_loader(ds, 2, is_training=True, drop_last=False)
    set_epoch(loader, 0)
    assert sum(len(y) for _, y in loader) == 6  # the epoch still yields a full set of samples
    assert num_skipped(loader) == 1


def test_corrupt_image_count_reaches_main_process_from_workers(folder: Path) -> None:
    (folder / "train" / "dog" / "0.png").write_bytes(b"\x89PNG truncated")
    ds = build_dataset(folder, "train", build_transform(False, 8, crop_pct=1.0))
    loader = build_loader(ds, 3, is_training=False, num_workers=1)
    set_epoch(loader, 0)
    assert sum(len(y) for _, y in loader) == 6
    assert num_skipped(loader) == 1


def test_corrupt_image_strict(folder: Path) -> None:
    (folder / "val" / "dog" / "0.png").write_bytes(b"")
    ds = build_dataset(folder, "val", strict=True)
    with pytest.raises(DataError, match=r"cannot read image .*0\.png.*--strict-data"):
        ds[1]


# ------------------------------------------------------------------------------------------------- bad inputs


def _one_line_error(match: str, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        build_dataset(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_wrong_path(tmp_path: Path) -> None:
    _one_line_error(r"does not exist; pass an ImageFolder root .* fashion-mnist, digits, synthetic",
                    tmp_path / "nope", "train")


def test_missing_split_folder(folder: Path) -> None:
    for p in (folder / "val").rglob("*.png"):
        p.unlink()
    for d in sorted((folder / "val").rglob("*"), reverse=True):
        d.rmdir()
    (folder / "val").rmdir()
    _one_line_error(r"has no val/ subfolder; an ImageFolder root needs train/ and val/", folder, "train")


def test_different_class_sets(folder: Path) -> None:
    _save(folder / "val" / "bird" / "0.png")
    _one_line_error(r"different classes \(only in train: none; only in val: bird\); give both the same", folder, "val")


def test_empty_class_folder(folder: Path) -> None:
    for split in ("train", "val"):
        (folder / split / "fox").mkdir()
    _one_line_error(r"Found no valid file for the classes fox.*one subfolder per class", folder, "train")


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    _one_line_error(r"Couldn't find any class folder.*one subfolder per class", tmp_path, "train")


def test_fashion_mnist_not_found(tmp_path: Path) -> None:
    _one_line_error(r"not found in .*apt-get install dataset-fashion-mnist or pass the folder",
                    "fashion-mnist", "train", root=tmp_path)


def test_fashion_mnist_truncated(idx_dir: Path) -> None:
    f = idx_dir / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-5]))
    _one_line_error("truncated", idx_dir, "val")


def test_bad_split_and_channels(folder: Path) -> None:
    with pytest.raises(ConfigError, match="split must be"):
        build_dataset("digits", "test")
    with pytest.raises(ConfigError, match="in_chans must be 1 or 3"):
        build_dataset(folder, "train", in_chans=4)


# ---------------------------------------------------------------------------------------------------- loaders


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


# ---- high bit depth and size limits (checked from the header, before decoding) --------------------------------
def test_sixteen_bit_and_float_images_keep_their_range(tmp_path):
    from vanillanet.data.images import open_image

    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"  # PIL alone would clip this to white in RGB
    got = np.asarray(open_image(tmp_path / "g16.png", "L"))
    assert np.array_equal(got, np.round(gradient / 257).astype(np.uint8))
    rgb = np.asarray(open_image(tmp_path / "g16.png", "RGB"))
    assert rgb.shape == (64, 64, 3) and np.array_equal(rgb[..., 1], got)
    Image.fromarray((gradient / 65535).astype(np.float32)).save(tmp_path / "f.tif")
    assert np.abs(np.asarray(open_image(tmp_path / "f.tif", "L")).astype(int) - got).max() <= 1  # not black
    Image.fromarray(np.full((4, 4), 3.0, dtype=np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(ValueError, match=r"float image with values in \[3, 3\], outside the 0..1 range"):
        open_image(tmp_path / "hdr.tif", "RGB")


def test_image_size_limits_come_before_decoding(tmp_path, caplog):
    from vanillanet.data.images import MAX_ASPECT, check_pixels, open_image

    Image.new("RGB", (2000, 10), (90, 90, 90)).save(tmp_path / "wide.png")
    with pytest.raises(Image.DecompressionBombError, match=r"2000x10 px has an aspect ratio above 100:1"):
        open_image(tmp_path / "wide.png", "RGB")
    assert open_image(tmp_path / "wide.png", "RGB", limit=False).size == (2000, 10)
    with pytest.raises(Image.DecompressionBombError, match="above the 89 Mpx limit"):
        check_pixels(10_000, 10_000)
    check_pixels(MAX_ASPECT * 3, 3)
    # a folder counts such an image as unreadable (skipped and counted), or refuses it with strict
    root = tmp_path / "folder"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(root / split / "a" / "ok.png")
        (root / split / "a" / "wide.png").write_bytes((tmp_path / "wide.png").read_bytes())
    ds = build_dataset(root, "val")
    with caplog.at_level(logging.WARNING):
        assert [ds[i][0].size for i in range(2)] == [(20, 20), (20, 20)] and num_skipped(ds) == 1
    assert "aspect ratio above 100:1" in caplog.text
    assert build_dataset(root, "val", allow_large=True)[1][0].size == (2000, 10)
    with pytest.raises(DataError, match="aspect ratio above 100:1"):
        build_dataset(root, "val", strict=True)[1]


def test_preprocess_settings_are_checked():
    from vanillanet.data.transforms import resolve_preprocess

    with pytest.raises(ConfigError, match=r"img_size 100000 px is above the 4096 px limit .*--allow-large"):
        resolve_preprocess(meta={"img_size": 100000})
    assert resolve_preprocess(meta={"img_size": 5000}, allow_large=True).img_size == 5000
    with pytest.raises(ConfigError, match=r"the normalisation std must be positive, got \[0.5, 0.0, 0.5\]"):
        resolve_preprocess(std=(0.5, 0.0, 0.5))
    with pytest.raises(ConfigError, match="unknown interpolation 'sinc'"):
        resolve_preprocess(interpolation="sinc")

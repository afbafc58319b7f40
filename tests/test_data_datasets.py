"""``data.datasets``: Fashion-MNIST (IDX folders, uncompressed files, the Debian package), digits, synthetic sets,
image folders that skip and count unreadable files, mean/std, and one-line messages for bad folders."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_dataset_error, save_image

from vanillanet.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIRS,
    load_fashion_mnist,
    mean_std,
    num_skipped,
)
from vanillanet.data.loaders import build_loader, set_epoch
from vanillanet.data.sources import build_dataset, dataset_defaults
from vanillanet.data.transforms import build_transform
from vanillanet.util.errors import DataError


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


def test_missing_split_folder(folder: Path) -> None:
    for p in (folder / "val").rglob("*.png"):
        p.unlink()
    for d in sorted((folder / "val").rglob("*"), reverse=True):
        d.rmdir()
    (folder / "val").rmdir()
    one_line_dataset_error(r"has no val/ subfolder; an ImageFolder root needs train/ and val/", folder, "train")


def test_different_class_sets(folder: Path) -> None:
    save_image(folder / "val" / "bird" / "0.png")
    one_line_dataset_error(r"different classes \(only in train: none; only in val: bird\); give both the same",
                           folder, "val")


def test_empty_class_folder(folder: Path) -> None:
    for split in ("train", "val"):
        (folder / split / "fox").mkdir()
    one_line_dataset_error(r"Found no valid file for the classes fox.*one subfolder per class", folder, "train")


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    one_line_dataset_error(r"Couldn't find any class folder.*one subfolder per class", tmp_path, "train")


def test_fashion_mnist_not_found(tmp_path: Path) -> None:
    one_line_dataset_error(r"not found in .*apt-get install dataset-fashion-mnist or pass the folder",
                           "fashion-mnist", "train", root=tmp_path)


def test_fashion_mnist_truncated(idx_dir: Path) -> None:
    f = idx_dir / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-5]))
    one_line_dataset_error("truncated", idx_dir, "val")


@pytest.mark.parametrize("fast", [False, True], ids=["pil", "fast-decoder"])
def test_training_folders_read_high_bit_depth_images_by_their_range(tmp_path: Path, fast: bool) -> None:
    """Issue 17, finding 9: a 16-bit PNG and a float TIFF of the same picture train as the 8-bit one does (not
    all-white or all-black); a float image outside [0, 1] is an unreadable file (strict: one DataError)."""
    from PIL import Image

    from vanillanet.data.datasets import SafeImageFolder
    from vanillanet.data.transforms import build_fast_transform

    gray = np.linspace(0, 255, 32 * 32).reshape(32, 32).astype(np.uint8)
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
    Image.fromarray(gray).save(tmp_path / "train" / "a" / "g8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "train" / "a" / "g16.png")
    Image.fromarray((gray / 255).astype(np.float32)).save(tmp_path / "train" / "b" / "f.tif")
    if fast:  # uint8 tensors, normalised later on the device
        tf = build_fast_transform(False, 32, in_chans=1, crop_pct=1.0)
    else:
        tf = build_transform(False, 32, in_chans=1, mean=(0.0,), std=(1.0,), crop_pct=1.0)
    ds = SafeImageFolder(tmp_path / "train", tf, in_chans=1, strict=True)
    g8, g16, f32 = (ds[i][0].float() / (255 if fast else 1) for i in range(3))
    assert 0.45 < float(g8.mean()) < 0.55 and float(g8.std()) > 0.2  # the gradient, not a flat image
    assert (g16 - g8).abs().max() <= 1 / 255 + 1e-6 and (f32 - g8).abs().max() <= 1 / 255 + 1e-6
    Image.fromarray(np.full((32, 32), 3.0, dtype=np.float32)).save(tmp_path / "train" / "b" / "hdr.tif")
    ds = SafeImageFolder(tmp_path / "train", tf, in_chans=1, strict=True)
    with pytest.raises(DataError, match=r"hdr.tif.*float image with values in \[3, 3\], outside the 0..1 range"):
        ds[3]

"""data.device_randaugment: the draws are timm's (the same random calls, so the same tables as timm's RandAugment
would apply), and each operation on the device gives PIL's pixels: exactly for the look-up-table operations, within
one level for the ImageEnhance blends, within the resampling kernels' difference for the geometric ones."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import photo_jpeg
from PIL import Image
from timm.data.auto_augment import NAME_TO_OP

from vanillanet.data.device_randaugment import OPS, apply_ops, record_ops
from vanillanet.data.uint8_transforms import timm_secondary

FILL = (124, 116, 104)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(4):
        img = Image.open(__import__("io").BytesIO(photo_jpeg(rng, 64, 48))).convert("RGB")
        out.append(np.asarray(img))
    out[3] = (out[3] // 3 + 60).astype(np.uint8)  # a low-contrast one (autocontrast, equalize stretch it)
    return out


def _device(arrs, name, arg, resample=3):
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
    table = torch.tensor([[[OPS.index(name), arg, resample]]] * len(arrs), dtype=torch.float32)
    return apply_ops(x, table, FILL).permute(0, 2, 3, 1).numpy().astype(int)


def _pil(arr, name, arg, resample=3):
    fn = NAME_TO_OP[name]
    args = () if name in ("AutoContrast", "Equalize", "Invert") else (arg,)
    kwargs = dict(fillcolor=FILL, resample=resample)
    return np.asarray(fn(Image.fromarray(arr), *args, **kwargs)).astype(int)


@pytest.mark.parametrize("name, args", [("AutoContrast", [0]), ("Equalize", [0]), ("Invert", [0]),
                                        ("PosterizeIncreasing", [1, 2, 4, 8]), ("SolarizeIncreasing", [0, 100, 256]),
                                        ("SolarizeAdd", [0, 77, 110])])
def test_lookup_table_operations_are_exact(images, name, args):
    for arg in args:
        dev = _device(images, name, arg)
        for i, arr in enumerate(images):
            assert np.array_equal(dev[i], _pil(arr, name, arg)), (name, arg, i)


@pytest.mark.parametrize("name", ["ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                                  "SharpnessIncreasing"])
def test_enhance_blends_match_pil_within_one_level(images, name):
    for arg in (0.1, 0.7, 1.0, 1.6):
        dev = _device(images, name, arg)
        for i, arr in enumerate(images):
            diff = np.abs(dev[i] - _pil(arr, name, arg))
            assert diff.max() <= 1 and diff.mean() < 0.05, (name, arg, i, diff.max())


@pytest.mark.parametrize("name, arg", [("Rotate", 21.0), ("Rotate", -9.5), ("ShearX", 0.21), ("ShearY", -0.17),
                                       ("TranslateXRel", 0.31), ("TranslateYRel", -0.2)])
@pytest.mark.parametrize("resample", [0, 2, 3])
def test_geometric_operations_match_pil(images, name, arg, resample):
    dev = _device(images, name, arg, resample)
    for i, arr in enumerate(images):
        ref = _pil(arr, name, arg, resample)
        filled_dev = (dev[i] == FILL).all(-1)
        filled_ref = (ref == FILL).all(-1)
        assert (filled_dev != filled_ref).mean() < 0.03  # the same region is filled (edges may differ by a pixel)
        both = ~filled_dev & ~filled_ref
        diff = np.abs(dev[i] - ref)[both]
        limit = {0: 0.5, 2: 1.5, 3: 3.0}[resample]  # nearest ~exact; bicubic: a = -0.75 vs PIL's -0.5
        assert diff.mean() < limit, (name, arg, resample, diff.mean())


def test_the_draws_are_timms():
    ra = timm_secondary(32, mean=(0.485, 0.456, 0.406), interpolation="bicubic",
                        auto_augment="rand-m7-mstd0.5-inc1", color_jitter=0.4).transforms[0]
    draw = record_ops(ra)
    seen = []
    for seed in range(200):
        random.seed(seed)
        np.random.seed(seed)
        table = draw()
        after = (random.random(), np.random.random())
        random.seed(seed)
        np.random.seed(seed)
        ra(Image.new("RGB", (32, 32), (90, 120, 30)))  # timm's own call, same seed: the same random calls
        assert after == (random.random(), np.random.random())
        assert table.shape == (2, 3)
        seen += [OPS[int(i)] for i in table[:, 0].tolist() if i >= 0]
    assert 0.4 < len(seen) / 400 < 0.6  # each layer applies with probability 0.5
    assert {op.name for op in ra.ops} == set(seen)  # every one of the 15 operations drawn


def test_random_interpolation_is_drawn_by_the_geometric_operations_only(images):
    """A recipe whose interpolation is random (timm: a list for every operation) draws one for the geometric
    operations with timm's call; the others record 0 (the tables used to fail on the list)."""
    from timm.data.auto_augment import rand_augment_transform

    ra = rand_augment_transform("rand-m7-mstd0.5-inc1", dict(img_mean=FILL))
    assert isinstance(ra.ops[0].kwargs["resample"], (list, tuple))
    for op in ra.ops:
        op.prob = 1.0
    draw, sampled = record_ops(ra), set()
    for seed in range(100):
        random.seed(seed)
        np.random.seed(seed)
        table = draw()
        after = (random.random(), np.random.random())
        random.seed(seed)
        np.random.seed(seed)
        ra(Image.fromarray(images[0]))
        assert after == (random.random(), np.random.random())
        for op_id, _, resample in table.tolist():
            geometric = OPS[int(op_id)] in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
            assert resample in ((2, 3) if geometric else (0,))
            sampled |= {resample} if geometric else set()
    assert sampled == {2, 3}
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    assert apply_ops(x, torch.stack([draw() for _ in range(len(images))]), FILL).shape == x.shape


def test_tables_apply_per_sample_and_skip_empty_rows(images):
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    tables = torch.full((4, 2, 3), -1.0)
    tables[1, 0] = torch.tensor([OPS.index("Invert"), 0, 3])
    tables[2, 1] = torch.tensor([OPS.index("Rotate"), 30, 2])
    out = apply_ops(x, tables, FILL)
    assert torch.equal(out[0], x[0]) and torch.equal(out[3], x[3]) and torch.equal(out[1], 255 - x[1])
    assert not torch.equal(out[2], x[2]) and out.dtype == torch.uint8

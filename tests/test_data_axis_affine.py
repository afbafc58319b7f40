"""data.axis_affine: PIL's one-axis affine transforms (timm's translate and shear) computed per line, compared
with PIL itself pixel by pixel over random maps, modes, sizes and fills; and timm's RandAugment with them gives
timm's own images on the same seed (the random calls are unchanged)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import photo_jpeg
from PIL import Image
from timm.data.auto_augment import rand_augment_transform

from vanillanet.data import axis_affine as aa

BILINEAR, BICUBIC, NEAREST = (int(Image.Resampling.BILINEAR), int(Image.Resampling.BICUBIC),
                              int(Image.Resampling.NEAREST))


def pil(img: Image.Image, axis: int, coef: float, offset: float, resample: int, fill) -> np.ndarray:
    data = (1, coef, offset, 0, 1, 0) if axis == 1 else (1, 0, 0, coef, 1, offset)
    return np.asarray(img.transform(img.size, Image.Transform.AFFINE, data, resample=resample, fillcolor=fill))


def photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    import io

    return Image.open(io.BytesIO(photo_jpeg(rng, w, h))).convert("RGB")


def assert_like_pil(img, axis, coef, offset, resample, fill, what, counts=None) -> None:
    """At most one level off, and (when ``counts`` is not given) on at most 1e-4 of the values; otherwise the
    values and the differing ones are added to ``counts`` for the caller's total. PIL computes in double, this
    in float32: a value within float32 rounding of an integer (133.9999964) may truncate the other way."""
    ref = pil(img, axis, coef, offset, resample, fill).astype(int)
    got = np.asarray(aa.transform_along_axis(img, axis, coef, offset, resample, fill)).astype(int)
    assert got.shape == ref.shape, what
    diff = np.abs(got - ref)
    assert diff.max() <= 1, (what, diff.max())
    if counts is None:
        assert (diff > 0).mean() < 1e-4, (what, (diff > 0).mean())
    else:
        counts[0], counts[1] = counts[0] + diff.size, counts[1] + int((diff > 0).sum())


def test_random_shears_and_translations_equal_pils():
    rng = np.random.default_rng(0)
    counts = [0, 0]  # values compared, values one level off
    for trial in range(120):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        img = photo(rng, max(w, 8), max(h, 8)).resize((w, h)) if trial % 3 else Image.fromarray(
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if trial % 5 == 0:
            img = img.convert("L")
        shear = trial % 2 == 0
        coef = float(rng.uniform(-0.6, 0.6)) if shear else 0.0
        offset = 0.0 if shear else float(rng.uniform(-1.2, 1.2) * max(w, h))
        fill = (124, 116, 104) if img.mode == "RGB" else 7
        for axis in (0, 1):
            for resample in (BILINEAR, BICUBIC):
                assert_like_pil(img, axis, coef, offset, resample, fill, (trial, axis, resample), counts)
    assert counts[0] > 200_000 and counts[1] / counts[0] < 1e-4, counts


@pytest.mark.parametrize("offset", [0.0, 0.5, -0.5, 1.0, 3.25, -2.75, 1e6, -1e6])
def test_edge_cases_equal_pils(offset):
    """A zero shift copies the image, half-pixel and whole-pixel shifts land on PIL's tap boundaries, and maps
    far off the image give the fill everywhere."""
    img = photo(np.random.default_rng(1), 40, 30)
    counts = [0, 0]
    for axis in (0, 1):
        for resample in (BILINEAR, BICUBIC):
            assert_like_pil(img, axis, 0.0, offset, resample, (1, 2, 3), (axis, resample), counts)
            assert_like_pil(img, axis, offset / 1e3, 0.0, resample, None, (axis, resample, "shear"), counts)
    # tiny shears (coef 1e-3) put many values within float32 rounding of an integer: still rare
    assert counts[1] / counts[0] < 1e-3, counts
    if offset == 0.0:
        assert np.array_equal(np.asarray(aa.transform_along_axis(img, 1, 0.0, 0.0, BICUBIC)), np.asarray(img))


def test_what_it_does_not_compute_goes_to_pil():
    """Nearest sampling, other modes and fills that are not one value per band are PIL's own result."""
    rng = np.random.default_rng(2)
    rgb = photo(rng, 32, 24)
    cases = [(rgb, NEAREST, (1, 2, 3)), (rgb.convert("RGBA"), BICUBIC, (1, 2, 3, 4)),
             (rgb.convert("I;16"), BICUBIC, None), (rgb.convert("L"), BILINEAR, 300)]
    for img, resample, fill in cases:
        for axis in (0, 1):
            got = aa.transform_along_axis(img, axis, 0.3, 2.5, resample, fill)
            assert got.mode == img.mode
            assert np.array_equal(np.asarray(got), pil(img, axis, 0.3, 2.5, resample, fill))
    with pytest.raises(TypeError, match="color must be int"):  # PIL's own error for a grayscale image
        aa.transform_along_axis(rgb.convert("L"), 1, 0.3, 2.5, BICUBIC, (1, 2, 3))


@pytest.mark.parametrize("interpolation", ["bicubic", "random"])
def test_randaugment_with_fast_geometry_gives_timms_images(interpolation):
    """The recipe's RandAugment with every operation forced to run: timm's images on the same seed, and the same
    random state afterwards (the draws, incl. timm's random interpolation, are made in the same order)."""
    hparams = dict(translate_const=100, img_mean=(124, 116, 104))
    if interpolation == "bicubic":
        hparams["interpolation"] = Image.Resampling.BICUBIC
    ref = rand_augment_transform("rand-m7-mstd0.5-inc1", hparams)
    for op in ref.ops:
        op.prob = 1.0
    ours = aa.fast_geometry(ref)
    assert ours is not ref and [o.aug_fn for o in ours.ops] != [o.aug_fn for o in ref.ops]
    rng = np.random.default_rng(3)
    compared = 0
    for seed in range(40):
        img = photo(rng, 224, 224)
        random.seed(seed), np.random.seed(seed)  # timm draws the operations with numpy, the rest with random
        expected, state = np.asarray(ref(img)).astype(int), random.getstate()
        for given in (img, np.asarray(img)):  # a PIL image gives a PIL image, an array an array
            random.seed(seed), np.random.seed(seed)
            out = ours(given)
            assert isinstance(out, type(given)) and random.getstate() == state, seed
            diff = np.abs(np.asarray(out).astype(int) - expected)
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-4, (seed, diff.max())
            compared += 1
    assert compared == 80


def test_array_randaugment_stays_an_array_until_a_pil_operation_and_pickles():
    """Operations drawn with probability 0: the input array itself comes back (no copy); rotations only: an array of
    timm's result on the same seed; grayscale (H, W, 1) arrays work; the transform pickles (DataLoader workers) and
    the copy draws the same."""
    import pickle

    def recipe(rotate_only, fill=(124, 116, 104)):
        ra = rand_augment_transform("rand-m9-mstd0.5-inc1", dict(img_mean=fill))
        for op in ra.ops:
            op.prob = 1.0
        if rotate_only:
            ra.num_layers, ra.choice_weights = 1, [float(o.name == "Rotate") for o in ra.ops]
        return ra

    arr = np.asarray(photo(np.random.default_rng(5), 64, 48))
    ra = aa.fast_geometry(recipe(False))
    for op in ra.ops:
        op.prob = 0.0
    assert ra(arr) is arr
    ref, ours = recipe(True), aa.fast_geometry(recipe(True))
    for seed in range(3):
        random.seed(seed), np.random.seed(seed)
        expected = np.asarray(ref(Image.fromarray(arr)))
        random.seed(seed), np.random.seed(seed)
        out = ours(arr)
        assert isinstance(out, np.ndarray) and np.array_equal(out, expected) and not np.array_equal(out, arr)
    gray = np.asarray(Image.fromarray(arr).convert("L"))[..., None]
    random.seed(0), np.random.seed(0)
    expected = np.asarray(recipe(True, (124,))(Image.fromarray(gray[..., 0])))
    random.seed(0), np.random.seed(0)
    assert np.array_equal(aa.fast_geometry(recipe(True, (124,)))(gray), expected[..., None])
    ra = aa.fast_geometry(recipe(False))
    twin = pickle.loads(pickle.dumps(ra))
    random.seed(1), np.random.seed(1)
    first = ra(arr)
    random.seed(1), np.random.seed(1)
    assert np.array_equal(twin(arr), first)


def test_fast_geometry_leaves_other_transforms_alone():
    from torchvision.transforms import ColorJitter, Compose

    jitter = Compose([ColorJitter(0.4, 0.4, 0.4)])
    assert aa.fast_geometry(jitter) is jitter
    assert aa.fast_geometry(None) is None
    ra = rand_augment_transform("rand-m9-mstd0.5", dict(img_mean=(1, 2, 3)))
    wrapped = aa.fast_geometry(Compose([ra]))
    names = {o.name: o.aug_fn for o in wrapped.transforms[0].ops}
    assert names["ShearX"] is aa._FAST_OPS["ShearX"] and names["Rotate"] is not aa._FAST_OPS.get("Rotate")
    assert ra.ops[0].aug_fn is not aa._FAST_OPS.get(ra.ops[0].name)  # the original is untouched
    assert wrapped.takes_arrays and aa.fast_geometry(ra).takes_arrays
    mixed = aa.fast_geometry(Compose([ra, ColorJitter(0.4)]))  # a step that needs PIL images: PIL in and out
    assert not mixed.takes_arrays and isinstance(mixed.transforms[1], ColorJitter)


def test_it_is_faster_than_pils_transform(one_thread):
    """The reason for the module: shear and translate of a 224 px RGB image in bicubic take about a third to a half
    of PIL's time here (0.5-0.9 ms against ~1.85 ms); asserted with a wide margin, interleaved rounds."""
    import torch

    from vanillanet.util.timing import time_interleaved

    img = photo(np.random.default_rng(4), 224, 224)
    fill = (124, 116, 104)
    fns = [lambda _: img.transform(img.size, Image.Transform.AFFINE, (1, 0.21, 0, 0, 1, 0), resample=BICUBIC,
                                   fillcolor=fill),
           lambda _: aa.transform_along_axis(img, 1, 0.21, 0.0, BICUBIC, fill),
           lambda _: aa.transform_along_axis(img, 0, 0.0, 70.5, BICUBIC, fill)]
    ms, _ = time_interleaved(fns, [None] * 3, torch.device("cpu"), repeats=5, round_s=0.05)
    pil_ms, shear_ms, translate_ms = (sorted(m)[2] for m in ms)
    assert shear_ms < 0.9 * pil_ms and translate_ms < 0.9 * pil_ms, (pil_ms, shear_ms, translate_ms)

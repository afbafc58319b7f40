"""data.uint8_transforms: timm's crop draw from the header, DCT-scaled decoding where the box allows, the uint8
output from bytes / PIL / arrays, and the statistics test of issue 16: the fast path (uint8 in the workers, normalise
and RandomErasing on the device) and the PIL reference give the same batch mean/std and the same crop-scale and
aspect histograms on the same seed."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import photo_jpeg
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation

from vanillanet.data import decode as dec
from vanillanet.data import uint8_transforms as u8
from vanillanet.data.device_augment import DeviceAugment
from vanillanet.data.loaders import build_loader, set_epoch
from vanillanet.data.sources import build_dataset
from vanillanet.data.transforms import build_fast_transform, build_transform


def test_crop_box_is_timms_draw_on_the_size_alone():
    img = Image.new("RGB", (500, 375))
    for seed in range(50):
        random.seed(seed)
        ref = RandomResizedCropAndInterpolation.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
        random.seed(seed)
        assert u8.crop_box(500, 375, (0.08, 1.0), (3 / 4, 4 / 3)) == ref


@pytest.mark.parametrize("scale, factor", [((1.0, 1.0), 2), ((0.5, 0.5), 1), ((0.999, 1.0), 2)])
def test_large_boxes_are_decoded_at_a_reduced_size(monkeypatch, scale, factor):
    seen = []
    real = dec.decode

    def spy(data, mode="RGB", **kw):
        out = real(data, mode, **kw)
        seen.append(out.shape[:2])
        return out

    monkeypatch.setattr(u8, "decode", spy)
    data = photo_jpeg(np.random.default_rng(0), 160, 120)
    out = u8.FastTrainTransform(56, scale=scale, ratio=(4 / 3, 4 / 3), hflip=0)(data)
    assert out.shape == (3, 56, 56) and out.dtype == torch.uint8
    assert seen == [(120 // factor, 160 // factor)]
    full = np.asarray(Image.open(__import__("io").BytesIO(data)).convert("RGB").resize((56, 56), Image.BICUBIC))
    if scale == (1.0, 1.0):  # the whole image: the reduced decode still looks like PIL's full-size resize
        assert np.abs(out.permute(1, 2, 0).numpy().astype(float) - full).mean() < 4


def test_inputs_of_every_kind_and_grayscale():
    rng = np.random.default_rng(1)
    data = photo_jpeg(rng, 80, 60)
    pil = Image.open(__import__("io").BytesIO(data)).convert("RGB")
    tf = u8.FastTrainTransform(32)
    for sample in (data, pil, np.asarray(pil)):
        out = tf(sample)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    gray = u8.FastTrainTransform(32, in_chans=1)
    assert gray(data).shape == (1, 32, 32) and gray(pil.convert("L")).shape == (1, 32, 32)
    ev = u8.FastEvalTransform(32, crop_pct=0.875)
    assert ev(data).shape == (3, 32, 32)
    ref = build_transform(False, 32, mean=(0, 0, 0), std=(1, 1, 1))(pil)  # timm's eval transform in [0, 1]
    assert (ev(data).float() / 255 - ref).abs().mean() < 0.03


@pytest.mark.parametrize("in_chans", [3, 1])
def test_batches_are_stacked_in_the_images_own_memory(jpeg_folder, in_chans):
    """``collate_uint8`` gives the values torch's stack gives, as an (N, C, H, W) view of channels-last memory
    (a copy, not a transposition), in the main process and from a worker, for plain and --aa-on-device samples;
    the device then lays the batch out as asked, with the values of the contiguous batch."""
    settings = dict(in_chans=in_chans, mean=(0.5,) * in_chans, auto_augment="rand-m9-mstd0.5-inc1", hflip=0.5)
    for aa_on_device in (False, True):
        tf = build_fast_transform(True, 32, aa_on_device=aa_on_device, **settings)
        assert tf.collate is u8.collate_uint8
        ds = build_dataset(str(jpeg_folder), "train", tf)
        samples = [ds[i] for i in range(6)]
        images, labels = u8.collate_uint8(samples)
        pixels = images[0] if aa_on_device else images
        single = [s[0][0] if aa_on_device else s[0] for s in samples]
        assert pixels.shape == (6, in_chans, 32, 32) and torch.equal(pixels, torch.stack(single))
        assert pixels.permute(0, 2, 3, 1).is_contiguous() and labels.tolist() == [s[1] for s in samples]
        if aa_on_device:
            assert torch.equal(images[1], torch.stack([s[0][1] for s in samples]))
        aug = DeviceAugment((0.5,) * in_chans, (0.25,) * in_chans)
        for layout in (torch.contiguous_format, torch.channels_last):
            placed = aug.place(images, layout)
            assert placed.is_contiguous(memory_format=layout)
            assert torch.equal(placed, aug.place([t.contiguous() for t in images] if aa_on_device
                                                 else pixels.contiguous()))
    ds = build_dataset(str(jpeg_folder), "val", build_fast_transform(False, 32, in_chans=in_chans))
    expected = torch.stack([ds[i][0] for i in range(4)])
    for workers in (0, 1):
        first = next(iter(build_loader(ds, 4, is_training=False, num_workers=workers)))[0]
        assert first.permute(0, 2, 3, 1).is_contiguous() and torch.equal(first, expected)


def test_eval_transform_is_deterministic_and_centred():
    data = photo_jpeg(np.random.default_rng(2), 120, 60)
    ev = u8.FastEvalTransform(48, crop_pct=1.0)
    assert torch.equal(ev(data), ev(data))


def test_light_augmentation_is_refused_with_the_fix():
    with pytest.raises(Exception, match="--decoder fast implements the timm and none augmentations"):
        build_fast_transform(True, 32, augment="light")


# ---- the same statistics on the same seed -----------------------------------------------------------------------
def _record_crops(monkeypatch) -> list[list[tuple[float, float]]]:
    """Every RandomResizedCrop box timm draws (both paths draw through it) as (area fraction, aspect w/h), appended
    to the last list of the returned list of lists."""
    real = RandomResizedCropAndInterpolation.get_params
    sink: list[list[tuple[float, float]]] = [[]]

    def spy(img, scale, ratio):
        box = real(img, scale, ratio)
        w, h = img.size if isinstance(img, Image.Image) else (img.shape[-1], img.shape[-2])
        sink[-1].append((box[2] * box[3] / (w * h), box[3] / box[2]))
        return box

    monkeypatch.setattr(RandomResizedCropAndInterpolation, "get_params", staticmethod(spy))
    return sink


def _batches(root, transform, augment, epochs=4):
    ds = build_dataset(str(root), "train", transform)
    loader = build_loader(ds, 16, is_training=True, seed=7)
    out = []
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        random.seed(epoch)
        torch.manual_seed(epoch)
        for x, _ in loader:
            out.append(augment(x) if augment is not None else x)
    return torch.cat(out)


def _both_paths(root, monkeypatch, reprob, epochs=4, aa_on_device=False):
    """(reference batches, fast batches, reference crops, fast crops) on the same seeds."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    settings = dict(in_chans=3, mean=mean, interpolation="bicubic", auto_augment="rand-m7-mstd0.5-inc1", hflip=0.5)
    crops = _record_crops(monkeypatch)
    ref = _batches(root, build_transform(True, 32, std=std, reprob=reprob, **settings), None, epochs)
    crops.append([])
    aug = DeviceAugment(mean, std, "cpu", reprob=reprob)
    fast = _batches(root, build_fast_transform(True, 32, aa_on_device=aa_on_device, **settings),
                    lambda x: aug.erase(aug.place(x)), epochs)  # what training.step.to_device does
    assert ref.shape == fast.shape and fast.dtype == ref.dtype == torch.float32
    assert len(crops[0]) == len(crops[1]) == ref.shape[0]
    return ref, fast, np.array(crops[0]), np.array(crops[1])


@pytest.mark.parametrize("aa_on_device", [False, True])
def test_same_draws_give_the_same_images(jpeg_folder, monkeypatch, aa_on_device):
    """Without RandomErasing both paths make the same random calls per sample (crop, flip, RandAugment, whether its
    pixels are done in the worker or on the device): the same boxes, and images that differ only by the
    resampling (PIL's bicubic vs torch's, DCT scaling)."""
    ref, fast, ref_crops, fast_crops = _both_paths(jpeg_folder, monkeypatch, reprob=0.0, epochs=2,
                                                   aa_on_device=aa_on_device)
    assert np.array_equal(ref_crops, fast_crops)
    per_sample = (ref - fast).abs().mean((1, 2, 3))
    assert per_sample.median() < 0.1 and (ref.mean((0, 2, 3)) - fast.mean((0, 2, 3))).abs().max() < 0.02
    assert ((ref.std((0, 2, 3)) - fast.std((0, 2, 3))).abs() / ref.std((0, 2, 3))).max() < 0.03


def test_fast_and_pil_paths_give_the_same_statistics(jpeg_folder, monkeypatch):
    """The full recipe (RandAugment + RandomErasing, the erasing on the device for the fast path): the batch
    mean/std per channel and the crop scale / aspect histograms agree within 4 standard errors of sampling."""
    ref, fast, ref_crops, fast_crops = _both_paths(jpeg_folder, monkeypatch, reprob=0.25, epochs=4)
    n = ref.shape[0]
    for stat in (lambda x: x.mean((2, 3)), lambda x: x.std((2, 3))):  # per sample and channel
        a, b = stat(ref), stat(fast)
        se = ((a.var(0) + b.var(0)) / n).sqrt()
        assert ((a.mean(0) - b.mean(0)).abs() < 4 * se).all(), (a.mean(0), b.mean(0), se)
    for k, bins in ((0, np.linspace(0.08, 1.0, 7)), (1, np.geomspace(3 / 4, 4 / 3, 7))):
        h_ref = np.histogram(ref_crops[:, k], bins)[0] / n
        h_fast = np.histogram(fast_crops[:, k], bins)[0] / n
        se = np.sqrt((h_ref * (1 - h_ref) + h_fast * (1 - h_fast)) / n)
        assert (np.abs(h_ref - h_fast) <= 4 * se + 1e-9).all(), (k, h_ref, h_fast)
        assert h_ref.sum() > 0.97 and h_fast.sum() > 0.97  # inside timm's ranges (else: the centre fallback)
        assert h_ref.min() > 0.02  # every bin drawn: the histograms compare a spread, not one value
    erased = lambda x: ((x[:, 0] - x[:, 0].roll(1, -1)).abs() > 0).float().mean()  # noqa: E731
    assert erased(fast) > 0.5  # the device erasing ran (pixel noise everywhere is 'different')

"""data.gpu_decode on the CPU (the nvJPEG and DALI calls themselves need CUDA and are skipped without it): the
workers' half draws the fast path's crops, collation keeps files and CPU-decoded samples apart, decoding a batch
(torchvision's decode_jpeg, here on the CPU) gives the fast path's images, and the settings it refuses."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from conftest import photo_jpeg
from PIL import Image

from vanillanet.data import gpu_decode as gd
from vanillanet.data.uint8_transforms import FastTrainTransform, crop_box, timm_secondary
from vanillanet.util.errors import ConfigError


def _files(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [photo_jpeg(rng, 96, 72) if i % 2 else photo_jpeg(rng, 64, 80) for i in range(n)]


def test_workers_draw_the_fast_paths_crop_and_flip():
    data = _files(1)[0]
    random.seed(3)
    torch.manual_seed(3)
    sample = gd.GpuCropSample(32)(data)
    random.seed(3)
    assert sample.box == crop_box(64, 80, (0.08, 1.0), (3 / 4, 4 / 3)) and sample.pixels is None
    assert bytes(sample.data.numpy()) == data


def test_what_nvjpeg_cannot_read_is_cropped_on_the_cpu():
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(buf, "PNG")
    cmyk = photo_jpeg(np.random.default_rng(1), 40, 30, mode="CMYK")
    for data in (buf.getvalue(), cmyk):
        sample = gd.GpuCropSample(16)(data)
        assert sample.data is None and sample.pixels.shape == (3, 16, 16) and sample.pixels.dtype == torch.uint8


def test_decoded_batches_match_the_fast_path():
    files = _files(6)
    png = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(png, "PNG")
    files.insert(2, png.getvalue())
    worker = gd.GpuCropSample(32, interpolation="bicubic")
    fast = FastTrainTransform(32, interpolation="bicubic")
    samples, expected = [], []
    for i, data in enumerate(files):
        for tf, sink in ((worker, samples), (fast, expected)):
            random.seed(i)
            torch.manual_seed(i)
            sink.append((tf(data), i) if tf is worker else tf(data))
    batch, labels = gd.collate_encoded(samples, (32, 32), 3, "bicubic")
    assert len(batch) == 7 and batch.cpu_positions == [2] and batch.positions == [0, 1, 3, 4, 5, 6]
    assert labels.tolist() == list(range(7))
    images = batch.decode("cpu")
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.uint8
    diff = (images.float() - torch.stack(expected).float()).abs().mean((1, 2, 3))
    # the same boxes and flips: float vs uint8 resampling, and the fast path's DCT scaling of large boxes
    assert diff.median() < 0.5 and diff.max() < 6, diff


def test_settings_it_refuses():
    with pytest.raises(ConfigError, match="--decoder gpu decodes on the training GPU.*--decoder fast"):
        gd.check_gpu_settings(torch.device("cpu"), "timm")
    with pytest.raises(ConfigError, match="not 'light'"):
        gd.check_gpu_settings(torch.device("cuda"), "light")
    gd.check_gpu_settings(torch.device("cuda"), "timm")
    jitter = timm_secondary(32, mean=(0.5,) * 3, interpolation="bicubic", auto_augment=None, color_jitter=0.4)
    with pytest.raises(ConfigError, match="not colour jitter; pass --aa"):
        gd.GpuCropSample(32, secondary=jitter)


def test_randaugment_is_drawn_in_the_workers_and_applied_after_the_crop():
    ra = timm_secondary(32, mean=(0.485, 0.456, 0.406), interpolation="bicubic",
                        auto_augment="rand-m7-mstd0.5-inc1", color_jitter=0.4)
    with_ra, plain = gd.GpuCropSample(32, secondary=ra), gd.GpuCropSample(32)
    samples, bare = [], []
    for i, data in enumerate(_files(8)):
        for tf, sink in ((with_ra, samples), (plain, bare)):
            random.seed(i)
            torch.manual_seed(i)
            np.random.seed(i)
            sink.append((tf(data), i))
    assert all(s.ops.shape == (2, 3) for s, _ in samples) and bare[0][0].ops is None
    assert [s.box for s, _ in samples] == [s.box for s, _ in bare]  # the same crops: RA draws after them
    batch, _ = gd.collate_encoded(samples, (32, 32), 3)
    plain_batch, _ = gd.collate_encoded(bare, (32, 32), 3)
    changed = (batch.decode("cpu") != plain_batch.decode("cpu")).flatten(1).any(1)
    applied = (batch.ops[:, :, 0] >= 0).any(1)
    assert changed.tolist() == applied.tolist() and applied.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_on_cuda_matches_the_cpu_decode():
    samples = [(gd.GpuCropSample(32)(data), i) for i, data in enumerate(_files(8))]
    batch, _ = gd.collate_encoded(samples, (32, 32), 3)
    batch.pin_memory()
    on_gpu = batch.decode("cuda")
    assert on_gpu.device.type == "cuda"
    assert (on_gpu.cpu().float() - batch.decode("cpu").float()).abs().mean() < 2  # nvJPEG vs libjpeg-turbo

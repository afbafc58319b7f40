"""Shared test helpers: seeded, CPU-only, small models."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels are tested in Triton's interpreter, which must be chosen before triton is
    # first imported (vanillanet imports timm, which imports triton); the kernels then run on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import vanillanet  # noqa: E402, F401  (registers the models with timm)
from vanillanet.model.network import VanillaNet  # noqa: E402
from vanillanet.model.reparam import calibrate_bn, rel_err  # noqa: E402, F401  (re-exported for the tests)
from vanillanet.model.variants import VARIANTS  # noqa: E402

torch.set_num_threads(2)


def build_variant(name: str, width_mult: float = 1 / 16, **kwargs) -> VanillaNet:
    """A VanillaNet with the real depth, strides and pooling of ``name`` but ``width_mult`` of its widths."""
    spec = VARIANTS[name]
    return VanillaNet(dims=spec.dims, strides=spec.strides, ada_pool=spec.ada_pool, width_mult=width_mult, **kwargs)


def give_realistic_bn_stats(model: nn.Module, in_shape: tuple[int, ...], seed: int = 0, batches: int = 3) -> None:
    """Random BN affine parameters, and running statistics gathered from forward passes (cumulative average)."""
    calibrate_bn(model, in_shape, batches=batches, seed=seed, randomize_affine=True)


@pytest.fixture(autouse=True)
def _no_trace_logging():
    """torch.export logs large structured-trace records at DEBUG; pytest's log capture makes them cost seconds."""
    trace = logging.getLogger("torch.__trace")
    old, trace.disabled = trace.disabled, True
    yield
    trace.disabled = old


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine run many times faster on one thread (no OpenMP contention); used by
    the training tests through ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    yield


def photo_jpeg(rng, width: int, height: int, quality: int = 90, mode: str = "RGB") -> bytes:
    """A seeded photo-like JPEG: a smooth colour field with a per-image colour cast (channels differ, so a swapped
    channel order shows), shapes and grain, as ``mode`` (RGB, L or CMYK)."""
    import io

    import numpy as np
    from PIL import Image

    coarse = rng.uniform(0, 255, (4, 4, 3)) * np.array([1.0, 0.7, 0.4]) + rng.uniform(0, 60, 3)
    base = np.asarray(Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((width, height),
                                                                                        Image.BICUBIC), np.float32)
    noise = rng.normal(0, 12, (height, width, 1))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).convert(mode).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory):
    """An ImageFolder root of photo-like JPEGs (train: 2 classes x 24, val: 2 x 8; 96x72 and 72x96 px)."""
    import numpy as np

    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 24), ("val", 8)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                size = (96, 72) if i % 2 else (72, 96)
                (root / split / c / f"{i:03d}.jpg").write_bytes(photo_jpeg(rng, *size))
    return root

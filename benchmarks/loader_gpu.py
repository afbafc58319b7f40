"""The loader section of benchmarks/gpu_check.py (``--decoder gpu``): decoded images/s per GPU at one batch size, and
vanillanet_5 training images/s with batches already on the GPU vs decoded on the GPU each step.

The JPEGs are benchmarks/loader.py's photo-like 500x375 / 375x500 images (~100 KB at quality 90); the workers' half
(crop draw) runs here in the process, so the timings are the GPU's: decode (nvJPEG through torchvision, or DALI
when installed) + per-sample crop, resize and flip, then the on-device normalise + RandomErasing. ``tiny`` runs the
same code on the CPU with small sizes (gpu_check's --dry-run).
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from loader import MEAN, STD, photo
from PIL import Image


def _jpegs(n: int, tiny: bool) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(min(n, 64)):  # 64 distinct files, repeated to the batch size
        w, h = (40, 30) if tiny else (500, 375)
        buf = io.BytesIO()
        Image.fromarray(photo(rng, *((w, h) if i % 2 else (h, w)))).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return [out[i % len(out)] for i in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoded_batch(files: list[bytes], size: int) -> Any:
    """The batch as the workers would send it (crops and flips drawn with a fixed seed)."""
    from vanillanet.data.gpu_decode import GpuCropSample, collate_encoded

    random.seed(0)
    torch.manual_seed(0)
    worker = GpuCropSample(size)
    batch, labels = collate_encoded([(worker(f), i % 1000) for i, f in enumerate(files)], (size, size), 3)
    return batch.pin_memory() if torch.cuda.is_available() else batch, labels


def _rate(fn: Callable[[], Any], device: torch.device, images: int, repeats: int) -> float:
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return images * repeats / (time.perf_counter() - t0)


def measure_gpu_loader(device: str, *, batch: int = 256, train_batch: int = 128, tiny: bool = False,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """One record (kind "loader"): decoded img/s at ``batch``; training img/s at ``train_batch`` both ways."""
    from vanillanet.data.device_augment import DeviceAugment
    from vanillanet.data.gpu_decode import dali_available
    from vanillanet.model.registry import create_model

    dev = torch.device(device)
    size = 32 if tiny else 224
    repeats = 1 if tiny else 10
    decode_batch, _ = encoded_batch(_jpegs(batch, tiny), size)
    decoded = _rate(lambda: decode_batch.decode(dev), dev, batch, repeats)
    log(f"loader: {decoded:.0f} decoded img/s at batch {batch}")
    aug = DeviceAugment(MEAN, STD, dev, reprob=0.25)
    enc, labels = encoded_batch(_jpegs(train_batch, tiny), size)
    labels = labels.to(dev)
    ready = enc.decode(dev)
    model = create_model("vanillanet_5", num_classes=1000, width_mult=1 / 32 if tiny else 1.0).to(dev)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def step(x_uint8: torch.Tensor) -> None:
        x = aug(x_uint8).contiguous(memory_format=torch.channels_last)
        with torch.autocast(**amp):
            loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    pre = _rate(lambda: step(ready), dev, train_batch, repeats)
    with_decode = _rate(lambda: step(enc.decode(dev)), dev, train_batch, repeats)
    log(f"loader: training {pre:.0f} img/s with batches on the device, {with_decode:.0f} decoding each on it")
    return dict(kind="loader", model="vanillanet_5", decoder="dali" if dali_available() else "nvjpeg (torchvision)",
                device=str(dev), batch_size=batch, train_batch_size=train_batch, decoded_img_per_s=decoded,
                train_img_per_s_predecoded=pre, train_img_per_s_gpu_decode=with_decode,
                mean_jpeg_kb=round(sum(map(len, _jpegs(min(batch, 64), tiny))) / min(batch, 64) / 1024, 1))

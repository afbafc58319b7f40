"""Images per CPU-second of the training input pipeline (issue 16): the original's path against ours, in one run.

Generates seeded photo-like JPEGs (500x375 and 375x500, plus a 10 % tail of 1-2k px images; quality 90, textured so
that a 500x375 file weighs ~100 KB like a photo) as an ImageFolder, then runs one epoch of each path through a
DataLoader with worker processes and counts the CPU time of the loader: this process (``getrusage``) and its
workers (``/proc/PID/stat``), not wall time, over the second of two epochs (persistent workers: the steady state
of a long epoch, without the one-off cost of starting workers):

  a   the original's path: torchvision ImageFolder + PIL + timm's ``create_transform(is_training=True)`` with the
      recipe's settings (RandomResizedCrop 224, flip, RandAugment rand-m7-mstd0.5-inc1, normalise, RandomErasing
      0.25), float tensors across the process boundary
  b   ours from the same folder (``--decoder fast``): libjpeg-turbo with DCT-scaled decoding, crop + flip on uint8,
      the same RandAugment; uint8 across the boundary (normalise and erasing run on the training device)
  b+  b with ``--aa-on-device``: RandAugment drawn in the workers (timm's code), its pixels on the device
  b0  ours, decode + RandomResizedCrop + flip to uint8 only (no RandAugment)
  c   ours from pre-resized shards (``vanillanet shards --max-side 320 --quality 90``); c+ likewise with
      ``--aa-on-device``, c0 likewise with decode + crop + flip only
  d   ours with GPU decoding (nvJPEG; only where CUDA exists): the loader's CPU time, and decoded img/s on the GPU

Paths are interleaved round by round (a b b+ b0 c c+ c0 d, a b ...) and each row sums its rounds, so that ratios
are comparable on a busy machine. Device-side work (normalise + erase, RandAugment's operations for b+/c+) is
timed separately on this machine's device and not counted as loader time. Targets: b >= 2.0x a, c >= 3.5x a,
decode + crop + flip (b0 from the folder, c0 from shards) >= 600 img/CPU-s.

Usage: python benchmarks/loader.py [--quick] [--json ROWS.json] [--out DIR] [--images N] [--workers W]
``--quick`` runs the same comparison on fewer images (under 3 minutes); ``--out`` writes DIR/loader.json (machine,
settings, rows) and DIR/loader.md; ``--json`` writes the rows alone.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

RECIPE = dict(auto_augment="rand-m7-mstd0.5-inc1", interpolation="bicubic", hflip=0.5, color_jitter=0.4,
              scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TARGETS = {"b": 2.0, "b+": 2.0, "c": 3.5, "c+": 3.5}  # x path a
CROP_TARGET = 600.0  # b0, images per CPU-second


# ----------------------------------------------------------------------------------------------- the images
def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like RGB image: a smooth colour field, mid-frequency shapes and sensor grain (so that JPEG files
    weigh what photos weigh: ~100 KB at 500x375, quality 90)."""
    small = rng.uniform(0, 255, (max(2, height // 60), max(2, width // 60), 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
    mid = np.clip(rng.uniform(-60, 60, (height // 6 + 1, width // 6 + 1, 3)) + 128, 0, 255).astype(np.uint8)
    mid = np.asarray(Image.fromarray(mid).resize((width, height), Image.BILINEAR), np.float32) - 128
    grain = rng.normal(0, 14, (height, width, 1)).astype(np.float32)
    return np.clip(base + mid + grain, 0, 255).astype(np.uint8)


def image_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    """500x375 / 375x500 alternately, every tenth image a 1-2k px one (4:3 either way)."""
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(n):
        if i % 10 == 9:
            long = int(rng.integers(1000, 2001))
            w, h = long, long * 3 // 4
        else:
            w, h = 500, 375
        sizes.append((w, h) if i % 2 else (h, w))
    return sizes


def make_folder(root: Path, n: int, classes: int = 4, seed: int = 0) -> dict[str, Any]:
    """An ImageFolder root (train/ with ``n`` images over ``classes`` classes, val/ with one per class); the
    folder is reused when it already holds what this call would write."""
    stamp = root / "made.json"
    want = dict(n=n, classes=classes, seed=seed, version=1)
    if stamp.is_file() and json.loads(stamp.read_text()).get("settings") == want:
        return json.loads(stamp.read_text())
    rng = np.random.default_rng(seed)
    sizes = image_sizes(n, seed)
    total = 0
    for split, count in (("train", n), ("val", classes)):
        for i in range(count):
            folder = root / split / f"class_{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = sizes[i] if split == "train" else (500, 375)
            buf = io.BytesIO()
            Image.fromarray(photo(rng, w, h)).save(buf, "JPEG", quality=90)
            (folder / f"{i:06d}.jpg").write_bytes(buf.getvalue())
            total += len(buf.getvalue()) if split == "train" else 0
    small = [s for s in sizes if max(s) == 500]
    info = dict(settings=want, images=n, tail_images=n - len(small), mean_kb=round(total / n / 1024, 1))
    stamp.write_text(json.dumps(info))
    return info


# ------------------------------------------------------------------------------------------------- the paths
def cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def original_loader(root: Path, batch: int, workers: int) -> torch.utils.data.DataLoader:
    """Path a, as the original code builds it: ImageFolder + timm's training transform, float tensors."""
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    tf = create_transform(224, is_training=True, auto_augment=RECIPE["auto_augment"],
                          interpolation=RECIPE["interpolation"], hflip=RECIPE["hflip"],
                          color_jitter=RECIPE["color_jitter"], scale=RECIPE["scale"], ratio=RECIPE["ratio"],
                          re_prob=0.25, re_mode="pixel", re_count=1, mean=MEAN, std=STD)
    ds = ImageFolder(str(root / "train"), transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=False,
                                       persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))


def our_loader(data: str, batch: int, workers: int, *, randaugment: bool = True,
               aa_on_device: bool = False) -> torch.utils.data.DataLoader:
    """Paths b, b0, c (and with ``aa_on_device`` b+, c+): our dataset for ``data`` (folder or shards) with the
    fast transform, our seeded loader."""
    from vanillanet.data.loaders import build_loader
    from vanillanet.data.sources import build_dataset
    from vanillanet.data.transforms import build_fast_transform

    settings = dict(RECIPE, auto_augment=RECIPE["auto_augment"] if randaugment else None,
                    color_jitter=RECIPE["color_jitter"] if randaugment else 0.0)
    tf = build_fast_transform(True, 224, mean=MEAN, aa_on_device=aa_on_device, **settings)
    ds = build_dataset(data, "train", tf)
    return build_loader(ds, batch, is_training=True, num_workers=workers, drop_last=False)


def gpu_loader(data: str, batch: int, workers: int, device: str = "cuda") -> Any:
    """Path d: the workers read bytes and draw the crops, flips and RandAugment operations, the GPU decodes each
    batch and applies them (``data.gpu_decode``); the loader yields decoded uint8 batches on ``device``."""
    import functools

    from vanillanet.data.gpu_decode import GpuCropSample, collate_encoded
    from vanillanet.data.loaders import build_loader
    from vanillanet.data.sources import build_dataset
    from vanillanet.data.uint8_transforms import timm_secondary

    secondary = timm_secondary(224, mean=MEAN, interpolation=RECIPE["interpolation"],
                               auto_augment=RECIPE["auto_augment"], color_jitter=0.0)
    tf = GpuCropSample(224, scale=RECIPE["scale"], ratio=RECIPE["ratio"], hflip=RECIPE["hflip"],
                       interpolation=RECIPE["interpolation"], secondary=secondary)
    collate = functools.partial(collate_encoded, size=(224, 224), channels=3, interpolation=RECIPE["interpolation"])
    loader = build_loader(build_dataset(data, "train", tf), batch, is_training=True, num_workers=workers,
                          drop_last=False, collate_fn=collate, pin_memory=device == "cuda")
    return _Decoding(loader, torch.device(device))


class _Decoding:
    """A loader whose encoded batches are decoded on the device as they are taken (timing the decoding there)."""

    def __init__(self, loader: Any, device: torch.device):
        self.loader, self.batch_sampler, self.device, self.gpu_s = loader, loader.batch_sampler, device, 0.0

    @property
    def _iterator(self) -> Any:
        return self.loader._iterator

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __iter__(self):
        fill = tuple(round(255 * m) for m in MEAN)
        for encoded, labels in self.loader:
            self._sync()
            t0 = time.perf_counter()
            images = encoded.decode(self.device, fill)
            self._sync()
            self.gpu_s += time.perf_counter() - t0
            yield images, labels


def _proc_cpu(pid: int) -> float:
    """utime + stime of a live process (Linux /proc), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loader_cpu(loader: Any) -> float:
    """CPU seconds so far of this process and of the loader's (persistent) worker processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    it = getattr(loader, "_iterator", None)
    workers = getattr(it, "_workers", []) if it is not None else []
    return own.ru_utime + own.ru_stime + sum(_proc_cpu(w.pid) for w in workers)


def run_epoch(make: Callable[[], Any]) -> dict[str, float]:
    """Steady-state cost of one epoch of the loader ``make()`` builds (persistent workers): a first epoch starts
    the workers and warms them, the second is measured: images, CPU seconds of this process and the workers,
    wall seconds. (Starting workers costs ~1 CPU-s per epoch-less run here, which an ImageNet epoch amortises.)"""
    from vanillanet.data.loaders import set_epoch

    gc.collect()
    loader = make()
    for epoch in range(2):
        if hasattr(loader.batch_sampler, "set_epoch"):
            set_epoch(loader, epoch)
        if epoch == 1:
            cpu0, wall0 = loader_cpu(loader), time.perf_counter()
        images = 0
        for batch in loader:
            images += len(batch[1])
    result = dict(images=images, cpu_s=loader_cpu(loader) - cpu0, wall_s=time.perf_counter() - wall0)
    if isinstance(loader, _Decoding):  # the GPU seconds of both epochs' decoding
        result["gpu_img_s"] = 2 * images / max(loader.gpu_s, 1e-9)
    del batch, loader
    gc.collect()
    return result


def device_seconds(batch: int, rounds: int = 5) -> dict[str, float]:
    """Seconds per image of the device-side work on this machine's device (reported, not counted as loader time:
    on a training machine it runs on the GPU): normalise + RandomErasing (paths b, c), and RandAugment's
    operations (b+, c+), each table drawn by timm's RandAugment as in the workers."""
    import random

    from vanillanet.data.device_augment import DeviceAugment
    from vanillanet.data.device_randaugment import apply_ops
    from vanillanet.data.uint8_transforms import device_draws, timm_secondary

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    aug = DeviceAugment(MEAN, STD, dev, reprob=0.25)
    x = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=dev)
    draw = device_draws(timm_secondary(224, mean=MEAN, interpolation="bicubic", auto_augment=RECIPE["auto_augment"],
                                       color_jitter=0.4))
    random.seed(0)
    tables = torch.stack([draw() for _ in range(batch)])

    def timed(fn: Callable[[], Any]) -> float:
        fn()
        clock = time.perf_counter if dev.type == "cuda" else cpu_seconds
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        for _ in range(rounds):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (clock() - t0) / (rounds * batch)

    return dict(normalise_erase=timed(lambda: aug(x)), randaugment=timed(lambda: apply_ops(x, tables, aug.fill)))


def make_shards(folder: Path, out: Path) -> str | None:
    """Pre-resized shards of the folder (``vanillanet shards SRC OUT --max-side 320 --quality 90``), reused when
    present; None where this build has no shard writer."""
    try:
        from vanillanet.data.shard_writer import WriteSettings, write_shards
    except ImportError:
        return None
    write_shards(str(folder), str(out), WriteSettings(shard_size=256, max_side=320, quality=90), workers=2,
                 progress=False)
    return str(out)


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in _lscpu().splitlines()
                  if line.startswith("Model name")), platform.processor())
    import timm

    try:
        import simplejpeg

        sj = simplejpeg.__version__
    except ImportError:
        sj = None
    return dict(cpu=model, cores=os.cpu_count(), load_1min=round(os.getloadavg()[0], 2),
                python=platform.python_version(), torch=torch.__version__, timm=timm.__version__, simplejpeg=sj,
                pillow=Image.__version__, cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def _lscpu() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _rows(totals: dict[str, dict[str, float]], names: dict[str, str], skipped: dict[str, str]) -> list[dict]:
    base = totals["a"]["images"] / totals["a"]["cpu_s"]
    rows = []
    for key, name in names.items():
        if key in skipped:
            rows.append(dict(path=key, name=name, skipped=skipped[key]))
            continue
        t = totals[key]
        ips = t["images"] / t["cpu_s"]
        row = dict(path=key, name=name, images=int(t["images"]), cpu_s=round(t["cpu_s"], 2),
                   wall_s=round(t["wall_s"], 2), img_per_cpu_s=round(ips, 1), x_a=round(ips / base, 2))
        if key in TARGETS:
            row.update(target_x_a=TARGETS[key], met=ips / base >= TARGETS[key])
        if key in ("b0", "c0"):
            row.update(target_img_per_cpu_s=CROP_TARGET, met=ips >= CROP_TARGET)
        if "gpu_img_s" in t:  # decode + crop + resize + flip on the GPU, per GPU-second of decoding
            row.update(gpu_decoded_img_per_s=round(t["gpu_img_s"], 1), gpu_target_img_per_s=7000,
                       gpu_met=t["gpu_img_s"] >= 7000)
        rows.append(row)
    return rows


def markdown(record: dict[str, Any]) -> str:
    m, s = record["machine"], record["settings"]
    lines = [f"Loader throughput, images per CPU-second (loader process + workers), {m['cpu']}, {m['cores']} cores "
             f"(1-min load {m['load_1min']} at start), torch {m['torch']}, timm {m['timm']}, simplejpeg "
             f"{m['simplejpeg']}. {s['images']} train images ({s['tail_images']} of 1-2k px, mean {s['mean_kb']} KB), "
             f"batch {s['batch']}, {s['workers']} workers, {s['rounds']} interleaved rounds.", "",
             "| path | images / CPU-s | x (a) | target | CPU s | wall s |", "|---|---:|---:|---|---:|---:|"]
    for r in record["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['path']}: {r['name']} | - | - | - | skipped: {r['skipped']} | |")
            continue
        target = (f">= {r['target_x_a']}x: {'met' if r['met'] else 'NOT met'}" if "target_x_a" in r else
                  f">= {r['target_img_per_cpu_s']:.0f}: {'met' if r['met'] else 'NOT met'}"
                  if "target_img_per_cpu_s" in r else "")
        lines.append(f"| {r['path']}: {r['name']} | {r['img_per_cpu_s']:.0f} | {r['x_a']:.2f} | {target} | "
                     f"{r['cpu_s']:.1f} | {r['wall_s']:.1f} |")
    dev = record["device_ms_per_image"]
    lines += ["", f"Device-side work, not counted above (on a training machine it runs on the GPU), per image on "
              f"{record['device']}: normalise + RandomErasing (all our paths) {dev['normalise_erase']:.3f} ms; "
              f"RandAugment's operations (b+, c+) {dev['randaugment']:.3f} ms."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer images and one round (under 3 minutes)")
    p.add_argument("--images", type=int, help="training images (default 1200, --quick 200)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 2, --quick 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", default=None, help="folder for the generated images and shards (default: a temp dir)")
    p.add_argument("--json", help="write the rows (one per path) to this JSON file")
    p.add_argument("--out", help="write DIR/loader.json (machine, settings, rows) and DIR/loader.md")
    args = p.parse_args(argv)
    n = args.images or (200 if args.quick else 1200)
    rounds = args.rounds or (1 if args.quick else 2)
    torch.set_num_threads(1)
    import tempfile

    cache = Path(args.cache or tempfile.mkdtemp(prefix="vanillanet-loader-"))
    folder = cache / f"folder_{n}"
    print(f"generating {n} photo-like JPEGs in {folder} ...", file=sys.stderr)
    info = make_folder(folder, n)
    shards = make_shards(folder, cache / f"shards_{n}")
    names = {"a": "original: ImageFolder + PIL + timm transform, float out",
             "b": "ours, folder, --decoder fast (uint8 out)",
             "b+": "ours, folder, --decoder fast --aa-on-device (RandAugment's pixels on the device)",
             "b0": "ours, folder, decode + RandomResizedCrop + flip only",
             "c": "ours, pre-resized shards (--max-side 320), --decoder fast",
             "c+": "ours, pre-resized shards, --decoder fast --aa-on-device",
             "c0": "ours, pre-resized shards, decode + RandomResizedCrop + flip only",
             "d": "ours, GPU decoding (nvJPEG)"}
    skipped = {}
    if shards is None:
        skipped["c"] = skipped["c+"] = skipped["c0"] = "this build has no shard writer"
    if not torch.cuda.is_available():
        skipped["d"] = "no CUDA device"
    makers = {"a": lambda: original_loader(folder, args.batch_size, args.workers),
              "b": lambda: our_loader(str(folder), args.batch_size, args.workers),
              "b+": lambda: our_loader(str(folder), args.batch_size, args.workers, aa_on_device=True),
              "b0": lambda: our_loader(str(folder), args.batch_size, args.workers, randaugment=False),
              "c": lambda: our_loader(str(shards), args.batch_size, args.workers),
              "c+": lambda: our_loader(str(shards), args.batch_size, args.workers, aa_on_device=True),
              "c0": lambda: our_loader(str(shards), args.batch_size, args.workers, randaugment=False),
              "d": lambda: gpu_loader(str(folder), args.batch_size, args.workers)}
    totals = {k: dict(images=0.0, cpu_s=0.0, wall_s=0.0) for k in names}
    for r in range(rounds):
        for key in names:
            if key in skipped:
                continue
            res = run_epoch(makers[key])
            for k, v in res.items():
                totals[key][k] = totals[key].get(k, 0.0) + v / (rounds if k == "gpu_img_s" else 1)
            print(f"round {r + 1}/{rounds} {key}: {res['images'] / res['cpu_s']:.0f} img/CPU-s "
                  f"({res['cpu_s']:.1f} CPU s, {res['wall_s']:.1f} s)", file=sys.stderr)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    record = dict(machine=machine(), settings=dict(images=n, tail_images=info["tail_images"], mean_kb=info["mean_kb"],
                                                   batch=args.batch_size, workers=args.workers, rounds=rounds,
                                                   quick=args.quick, recipe={k: str(v) for k, v in RECIPE.items()}),
                  rows=_rows(totals, names, skipped), device=device,
                  device_ms_per_image={k: round(1000 * v, 4) for k, v in device_seconds(args.batch_size).items()})
    text = markdown(record)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(record["rows"], indent=2) + "\n")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "loader.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / "loader.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

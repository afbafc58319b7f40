"""Writing shards (``vanillanet shards SRC OUT``): any source ``--data`` reads (an image folder with class
sub-folders, with or without train/ and val/; fashion-mnist, digits, synthetic; existing shards) -> WebDataset tar
shards, their indexes and a manifest (format in ``shard_format``).

Each split's samples are shuffled with a fixed seed and cut into shards of ``shard_size``; worker processes write
whole shards. Images are copied byte for byte when they are JPEGs that need no change, else decoded with the safe
loader (size limits; CMYK, palette and alpha images to RGB; 16-bit by their range) and encoded as JPEG, shrunk first
so that the longer side is at most ``max_side`` (aspect kept). Unreadable images are skipped and counted (listed in
the manifest), or refused with ``strict``.

Safe re-runs: a shard is written to a temporary name and renamed when complete, then its index (the completion
mark); an existing shard whose index matches the plan (same samples and settings), whose size and SHA-256 match is
kept, so an interrupted run continues where it stopped. The manifest is written last. A refused run (``strict``),
a failed worker and SIGTERM stop every worker before the call returns (``run_jobs``); workers die with their
parent. Nothing is written outside OUT: every name is made here from the split and a number.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

from ..util.errors import DataError, OutputError, first_line
from ..util.fileio import remove_stale_temporaries, write_atomic, write_json
from ..util.safe_open import special_kind
from . import remote
from .datasets import SPLITS, SafeImageFolder
from .images import _UNREADABLE, _eight_bit, check_pixels, open_bytes
from .shard_format import (
    MANIFEST,
    Manifest,
    ShardIndex,
    ShardInfo,
    TarWriter,
    index_name,
    is_shard_location,
    parse_index,
    sample_key,
    shard_name,
)
from .shards import ShardDataset
from .sources import build_dataset, find_source


@dataclass(frozen=True)
class WriteSettings:
    """How samples are encoded and grouped."""

    shard_size: int = 1000
    max_side: int | None = None
    quality: int = 90
    seed: int = 0
    strict: bool = False
    allow_large: bool = False


# ------------------------------------------------------------------------------------------------------ sources
class ShardSource:
    """The splits of a source: per split a dataset and how to read sample ``i`` as (bytes or PIL image, label,
    name); labels follow ``classes``."""

    def __init__(self, src: str, splits: dict[str, Any], classes: list[str], remap: dict[str, list[int]]):
        self.src, self.splits, self.classes, self.remap = src, splits, classes, remap

    def read(self, split: str, i: int) -> tuple[bytes | Image.Image, int, str]:
        ds = self.splits[split]
        if isinstance(ds, SafeImageFolder):
            path, target = ds.samples[i]
            kind = special_kind(path)
            if kind is not None:  # reading a FIFO or a device would block or never end
                raise ValueError(f"{path} is {kind}, not an image file")
            with open(path, "rb") as f:
                return f.read(), self.remap[split][target], Path(path).stem
        if isinstance(ds, ShardDataset):
            data, label, key = ds.raw(i)
            return data, label, key.split("_", 1)[-1]
        img, target = ds[i]
        return img, self.remap[split][int(target)], str(i)

    def identity(self, split: str, i: int) -> str:
        """What sample ``i`` is (for the plan's fingerprint)."""
        ds = self.splits[split]
        if isinstance(ds, SafeImageFolder):
            path, target = ds.samples[i]
            return f"{os.path.relpath(path, ds.root)}:{target}"
        return str(i)


def open_source(src: str, *, split: str | None = None, allow_large: bool = False) -> ShardSource:
    """The source ``SRC`` names: an ImageFolder root with train/ and/or val/, a folder with class sub-folders (one
    split, named ``split`` or train), shards, or a named source (fashion-mnist, digits, synthetic)."""
    if is_shard_location(src):
        datasets: dict[str, Any] = {}
        first = ShardDataset(src, next(iter(_manifest_splits(src))), allow_large=allow_large)
        for name in first.manifest.splits:
            if first.manifest.count(name):
                datasets[name] = ShardDataset(src, name, allow_large=allow_large, manifest=first.manifest)
        return ShardSource(src, datasets, first.classes, {s: list(range(len(first.classes))) for s in datasets})
    source = find_source(src)
    if source.name != "folder":
        datasets = {s: build_dataset(src, s) for s in SPLITS}
        classes = list(datasets["train"].classes)
        return ShardSource(src, datasets, classes, {s: list(range(len(classes))) for s in datasets})
    root = Path(src)
    if not root.is_dir():
        raise DataError(f"{src} is neither a folder nor a data source; pass an image folder (one sub-folder per "
                        "class, optionally inside train/ and val/), shards, fashion-mnist, digits or synthetic")
    dirs = {s: root / s for s in SPLITS if (root / s).is_dir()} or {split or "train": root}
    folders = {s: SafeImageFolder(d, allow_large=allow_large) for s, d in dirs.items()}
    classes = sorted(set().union(*(f.classes for f in folders.values())))
    remap = {s: [classes.index(c) for c in f.classes] for s, f in folders.items()}
    return ShardSource(src, folders, classes, remap)


def _manifest_splits(src: str) -> list[str]:
    from .shard_format import load_manifest

    splits = list(load_manifest(src).splits)
    if not splits:
        raise DataError(f"{src} lists no splits; write the shards again")
    return splits


# ------------------------------------------------------------------------------------------------------ encoding
JPEG_MAX_SIDE = 65_500  # libjpeg's largest width or height

def encode_image(item: bytes | Image.Image, settings: WriteSettings) -> bytes:
    """The JPEG bytes stored for one image: the source bytes themselves when they are a JPEG (RGB or grayscale)
    that needs no shrinking, else the decoded image (16-bit scaled, other modes to RGB), shrunk to ``max_side``
    and encoded at ``quality``. Raises the loaders' unreadable-image errors."""
    img = open_bytes(item) if isinstance(item, bytes) else item
    if not settings.allow_large:
        check_pixels(*img.size)
    big = settings.max_side is not None and max(img.size) > settings.max_side
    if isinstance(item, bytes) and img.format == "JPEG" and img.mode in ("RGB", "L") and not big:
        img.load()  # the whole file must decode
        return item
    if big:
        img.draft(img.mode, (settings.max_side, settings.max_side))  # DCT-scaled JPEG decoding when it is enough
    img = _eight_bit(img)
    if img.mode == "P":
        img = img.convert("RGBA")  # as the loaders' convert("RGB") does, without PIL's transparency warning
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    if big:
        img.thumbnail((settings.max_side, settings.max_side), Image.Resampling.BICUBIC)
    if max(img.size) > JPEG_MAX_SIDE:
        raise ValueError(f"{img.size[0]}x{img.size[1]} px is above JPEG's {JPEG_MAX_SIDE} px limit; pass --max-side "
                         "to shrink it")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=settings.quality)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------------ one shard
@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its split, number, sample numbers (in the source split) and the plan's fingerprint."""

    split: str
    number: int
    samples: list[int]
    plan: str

    @property
    def name(self) -> str:
        return shard_name(self.split, self.number)


_SOURCE: ShardSource | None = None
_STOP: Any = None  # a multiprocessing Event: set when the run is refused, so that the other workers stop early


class _Stopped(Exception):
    """A worker stopped writing its shard because the run was refused elsewhere (its temporary is removed)."""


def _set_source(source: ShardSource, stop: Any = None) -> None:
    global _SOURCE, _STOP
    _SOURCE, _STOP = source, stop


def _worker_init(source: ShardSource, stop: Any, parent: int) -> None:
    """A writing worker: its source and stop event; SIGTERM ends it at once (its temporary is removed by the next
    run), and so does its parent's death (Linux: PR_SET_PDEATHSIG), so no worker outlives a killed command."""
    _set_source(source, stop)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


@contextlib.contextmanager
def _sigterm_as_exit() -> Any:
    """SIGTERM (a scheduler's stop, ``kill``) raised as SystemExit(143) in the main thread while shards are written,
    so that the workers are stopped and temporaries removed before the process ends with the usual status."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_shard(job: ShardJob, settings: WriteSettings, out: Path,
                source: ShardSource | None = None) -> tuple[ShardIndex, list[dict[str, str]]]:
    """Write the tar of ``job`` to a temporary file in ``out`` and rename it; (its index, the skipped samples)."""
    source = source or _SOURCE
    assert source is not None
    cols: dict[str, list] = {"keys": [], "offsets": [], "sizes": [], "labels": [], "exts": []}
    skipped: list[dict[str, str]] = []

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            tar = TarWriter(f)
            for i in job.samples:
                if _STOP is not None and _STOP.is_set():
                    raise _Stopped(job.name)
                try:
                    item, label, stem = source.read(job.split, i)
                    data = encode_image(item, settings)
                except (*_UNREADABLE, DataError) as err:
                    where = source.identity(job.split, i)
                    if settings.strict:
                        raise DataError(f"cannot read {job.split} sample {where} of {source.src} "
                                        f"({first_line(err, 300)}); fix or delete it, or drop --strict to skip "
                                        "unreadable images") from None
                    skipped.append({"sample": where, "reason": first_line(err, 300)})
                    continue
                key = sample_key(len(cols["keys"]) + job.number * settings.shard_size, stem)
                offset = tar.add(f"{key}.jpg", data)
                tar.add(f"{key}.cls", str(label).encode())
                for k, v in zip(cols, (key, offset, len(data), label, "jpg")):
                    cols[k].append(v)
            tar.close()
            f.flush()
            os.fsync(f.fileno())

    write_atomic(out / job.name, write)
    return ShardIndex(**cols), skipped


def _sha256(location: str) -> str:
    if remote.is_remote(location):
        return hashlib.sha256(remote.read_bytes(location)).hexdigest()
    h = hashlib.sha256()
    with open(remote.local_path(location), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified(out: str, job: ShardJob) -> dict[str, Any] | None:
    """The index of the existing shard of ``job`` in ``out`` if it is complete and made by the same plan (size and
    SHA-256 match its index), else None (it is then written again)."""
    where = remote.join(out, index_name(job.name))
    try:
        if not remote.exists(where):
            return None
        index, header = parse_index(remote.read_bytes(where), where)
    except DataError:
        return None
    tar = remote.join(out, job.name)
    if header.get("plan") != job.plan or remote.size(tar) != header.get("bytes") or _sha256(tar) != header["sha256"]:
        return None
    return {"index": index, **header}


def run_job(job: ShardJob, settings: WriteSettings, out: str) -> tuple[ShardInfo, list[dict[str, str]], bool]:
    """Write (or verify and keep) one shard and its index; (its manifest entry, skipped samples, kept)."""
    existing = verified(out, job)
    if existing is not None:
        index = existing["index"]
        return ShardInfo(job.name, len(index), existing["bytes"], existing["sha256"]), existing.get("skipped", []), True
    staging = Path(tempfile.mkdtemp(prefix="vanillanet-shards-")) if remote.is_remote(out) else remote.local_path(out)
    try:
        index, skipped = build_shard(job, settings, staging)
        tar = staging / job.name
        info = ShardInfo(job.name, len(index), tar.stat().st_size, _sha256(str(tar)))
        header = index.to_json(job.name, info.nbytes, info.sha256, job.plan)
        header["skipped"] = skipped
        write_json(staging / index_name(job.name), header, indent=None)
        if remote.is_remote(out):
            remote.upload(tar, remote.join(out, job.name))
            remote.upload(staging / index_name(job.name), remote.join(out, index_name(job.name)))
    finally:
        if remote.is_remote(out):
            shutil.rmtree(staging, ignore_errors=True)
    return info, skipped, False


# ------------------------------------------------------------------------------------------------------ the run
def plan_jobs(source: ShardSource, settings: WriteSettings) -> list[ShardJob]:
    """The shards of every split: the split's samples in a seeded random order, ``shard_size`` per shard, each with
    a fingerprint of its samples and the encoding settings."""
    jobs = []
    encoding = {"version": 1, "max_side": settings.max_side, "quality": settings.quality,
                "allow_large": settings.allow_large, "classes": source.classes}
    for s_num, (split, ds) in enumerate(source.splits.items()):
        order = np.random.default_rng([settings.seed, s_num, 0x5EED]).permutation(len(ds)).tolist()
        for number, start in enumerate(range(0, len(order), settings.shard_size)):
            samples = order[start:start + settings.shard_size]
            ident = json.dumps({**encoding, "split": split, "number": number,
                                "samples": [source.identity(split, i) for i in samples]}).encode()
            jobs.append(ShardJob(split, number, samples, hashlib.sha256(ident).hexdigest()))
    return jobs


def _check_output(src: str, out: str) -> None:
    if remote.is_remote(out):
        return
    path = remote.local_path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"OUT {out} is a file; give a folder for the shards")
    src_path = Path(src)
    if src_path.is_dir() and (path.resolve() == src_path.resolve() or src_path.resolve() in path.resolve().parents):
        raise OutputError(f"OUT {out} is inside SRC {src}: the shards would be read back as images on the next run; "
                          "choose a folder outside SRC")


def _make_output(out: str) -> None:
    if remote.is_remote(out):
        return
    path = remote.local_path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {out} ({err.strerror}); choose a writable folder") from None
    remove_stale_temporaries(path)


def write_shards(src: str, out: str, settings: WriteSettings = WriteSettings(), *, workers: int = 1,
                 split: str | None = None, progress: bool = True,
                 on_shard: Callable[[ShardInfo, bool], None] | None = None) -> dict[str, Any]:
    """Write the shards of ``src`` to the folder or URL ``out`` (see the module docstring); a summary: samples
    per split, shards written and kept, skipped samples, the manifest's location."""
    from tqdm import tqdm

    src, out = str(src), str(out)
    _check_output(src, out)
    source = open_source(src, split=split, allow_large=settings.allow_large)
    jobs = plan_jobs(source, settings)
    _make_output(out)  # only once the source is known to be good
    started = time.time()
    results: dict[str, tuple[ShardInfo, list[dict[str, str]]]] = {}
    kept = 0
    bar = tqdm(total=sum(len(j.samples) for j in jobs), unit="img", desc="shards", dynamic_ncols=True,
               disable=None if progress else True)

    def done(result: tuple[ShardInfo, list[dict[str, str]], bool]) -> None:
        nonlocal kept
        info, skipped, was_kept = result
        results[info.name] = (info, skipped)
        kept += was_kept
        bar.update(info.count + len(skipped))
        if on_shard is not None:
            on_shard(info, was_kept)

    try:
        with _sigterm_as_exit():
            run_jobs([(job, settings, out) for job in jobs], source, workers, done)
    finally:
        bar.close()
    return _finish(source, settings, out, jobs, results, kept, time.time() - started, workers)


def run_jobs(args: list[tuple[ShardJob, WriteSettings, str]], source: ShardSource, workers: int,
             done: Callable[[tuple[ShardInfo, list[dict[str, str]], bool]], None]) -> None:
    """``run_job`` over ``args`` in ``workers`` forked processes (in this one for one worker or one job), ``done``
    called here with each result as it comes. When a job fails (``--strict`` refusing an image, a full disk, a
    worker that died) the others stop before their next sample, their temporaries removed, the queued ones are
    cancelled, and the error is raised only once every worker has exited: a refused run leaves complete shards
    only, and nothing writes after it returned."""
    if workers <= 1 or len(args) <= 1:
        _set_source(source)
        for a in args:
            done(run_job(*a))
        return
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    pool = ProcessPoolExecutor(min(workers, len(args)), mp_context=ctx, initializer=_worker_init,
                               initargs=(source, stop, os.getpid()))
    try:
        futures = [pool.submit(run_job, *a) for a in args]
        for future in as_completed(futures):
            done(future.result())
    except BrokenProcessPool:
        raise DataError("a worker process writing shards died (killed, perhaps out of memory); run the same command "
                        "again (complete shards are kept), with fewer --workers if memory is short") from None
    finally:
        stop.set()  # a no-op after a complete run
        pool.shutdown(wait=True, cancel_futures=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vanillanet")
    except PackageNotFoundError:
        return "unknown"


def _finish(source: ShardSource, settings: WriteSettings, out: str, jobs: list[ShardJob],
            results: dict[str, tuple[ShardInfo, list[dict[str, str]]]], kept: int, seconds: float,
            workers: int) -> dict[str, Any]:
    splits: dict[str, list[ShardInfo]] = {s: [] for s in source.splits}
    skipped: dict[str, dict[str, Any]] = {}
    for job in jobs:
        info, bad = results[job.name]
        splits[job.split].append(info)
        entry = skipped.setdefault(job.split, {"count": 0, "samples": []})
        entry["count"] += len(bad)
        entry["samples"] = (entry["samples"] + bad)[:100]
    made = {"tool": f"vanillanet {_version()}", "source": source.src, **asdict(settings), "workers": workers,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
            "pillow": PIL.__version__, "command": " ".join(sys.argv)}
    manifest = Manifest(out, source.classes, splits, made)
    text = json.dumps(manifest.to_json({s: v for s, v in skipped.items() if v["count"]}), indent=1) + "\n"
    where = remote.join(out, MANIFEST)
    if remote.is_remote(out):
        with tempfile.TemporaryDirectory(prefix="vanillanet-shards-") as tmp:
            (Path(tmp) / MANIFEST).write_text(text)
            remote.upload(Path(tmp) / MANIFEST, where)
    else:
        write_atomic(where, lambda tmp: Path(tmp).write_text(text))
    return {"manifest": where, "samples": {s: manifest.count(s) for s in splits},
            "shards": len(jobs), "written": len(jobs) - kept, "kept": kept,
            "skipped": {s: v["count"] for s, v in skipped.items() if v["count"]}, "seconds": seconds,
            "classes": len(source.classes)}

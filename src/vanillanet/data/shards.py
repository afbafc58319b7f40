"""Reading shards: ``ShardDataset``, a map-style torch Dataset over one split of a shard folder, manifest or URL.

Every sample is addressable (the per-shard index gives its byte range), so the loaders' seeded, resumable order
works as for folders: ``epoch_order(seed, epoch)`` is a permutation of all (shard, sample) pairs, shuffled by shard
windows for locality (a few shards are read at a time, each sample by one range request, a batch's requests
concurrently), which ``loaders.EpochBatchSampler`` splits over ranks with equal counts. A batch fetched through
``__getitems__`` reads its byte ranges shard by shard (concurrently for URLs) before decoding.

The decode seam (stable; ``SafeImageFolder`` has the same one, so a fast or GPU decoder serves both sources):

* ``transform.decodes = True``: ``transform(data)`` receives the image file's raw bytes (a JPEG as stored, as
  ``raw(i)`` returns them) and does its own decoding; an exception of ``images._UNREADABLE`` (OSError,
  ValueError, SyntaxError, DecompressionBombError) raised by it means "this image cannot be decoded";
* otherwise the image is opened with the safe PIL loader (``images.open_image``: size limits, 16-bit scaling,
  ``in_chans`` mode) and ``transform`` (if any) gets the PIL image;
* ``transform.collate`` (optional): ``build_loader`` uses it as the DataLoader's ``collate_fn`` (uint8 batches,
  encoded batches for GPU decoding), unless the caller passes its own.

An image that cannot be decoded is skipped and counted as folders do (``num_skipped``; the next readable sample
takes its place, so batches keep their size), or, with ``strict``, ends in a one-line DataError. Missing or
truncated shards are found when the dataset is made, before any training step. Remote reads have timeouts and a
bounded number of attempts (``remote``), so a dead endpoint ends in a one-line error, never a hang.

From Python::

    from vanillanet import ShardDataset
    ds = ShardDataset("s3://bucket/imagenet-shards", "train", transform)   # or a folder, or its manifest.json
    order = ds.epoch_order(seed, epoch)   # this epoch's permutation of every index (shuffle it per rank yourself)
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..util.errors import ConfigError, DataError, first_line
from . import remote
from .images import _UNREADABLE, open_bytes, open_image
from .shard_format import Manifest, ShardIndex, check_member_name, load_manifest, parse_index

_log = logging.getLogger(__name__)

WINDOW = 8  # shards whose samples are shuffled together in one epoch (the read locality)


class ShardDataset(Dataset):
    """One split of a shard folder (local path, ``file://``, ``s3://``, ``gs://``, ``http(s)://``, a folder with
    ``manifest.json`` or the manifest itself). Items are ``(transform(image), label)``; ``classes`` names the
    labels. ``window`` shards are shuffled together per epoch (see ``epoch_order``)."""

    def __init__(self, data: str, split: str = "train", transform: Callable | None = None, *, in_chans: int = 3,
                 strict: bool = False, allow_large: bool = False, window: int = WINDOW,
                 manifest: Manifest | None = None):
        mode = {1: "L", 3: "RGB"}.get(in_chans)
        if mode is None:
            raise ConfigError(f"in_chans must be 1 or 3, got {in_chans}; use 1 for grayscale or 3 for RGB input")
        self.data, self.split, self.transform, self.mode = str(data), split, transform, mode
        self.strict, self.allow_large, self.window = strict, allow_large, max(1, int(window))
        self.manifest = manifest or load_manifest(self.data)
        if split not in self.manifest.splits:
            have = ", ".join(self.manifest.splits) or "none"
            raise DataError(f"{self.data} has no {split!r} split (it has: {have}); write it with `vanillanet shards "
                            "SRC OUT` from a source that has that split")
        self.shards = self.manifest.splits[split]
        self.classes = list(self.manifest.classes)
        self.starts = np.cumsum([0] + [s.count for s in self.shards]).tolist()
        if self.starts[-1] == 0:
            raise DataError(f"the {split} split of {self.data} has no samples; write the shards again from a source "
                            "with images")
        check_shards_present(self.manifest, split)
        self.bad = torch.zeros(len(self), dtype=torch.bool).share_memory_()
        self._indexes: dict[int, ShardIndex] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def num_skipped(self) -> int:
        return int(self.bad.sum())

    @property
    def root(self) -> str:
        return self.data

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, position in that shard) of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is outside 0..{len(self) - 1}")
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, index - self.starts[shard]

    def shard_index(self, shard: int) -> ShardIndex:
        """The index of shard number ``shard`` (read once per process)."""
        index = self._indexes.get(shard)
        if index is None:
            info = self.shards[shard]
            where = self.manifest.location(info.index)
            index, header = parse_index(remote.read_bytes(where), where)
            if len(index) != info.count or header.get("bytes") != info.nbytes:
                raise DataError(f"{where} does not match the manifest ({len(index)} samples, {header.get('bytes')} "
                                f"bytes; the manifest says {info.count}, {info.nbytes}); re-run `vanillanet shards` "
                                "to rewrite the folder")
            for key, ext in zip(index.keys, index.exts):
                check_member_name(f"{key}.{ext}", self.manifest.location(info.name))
            self._indexes[shard] = index
        return index

    def label(self, index: int) -> int:
        shard, pos = self.locate(index)
        return self.shard_index(shard).labels[pos]

    def raw_many(self, indices: list[int]) -> list[tuple[bytes, int, str]]:
        """(image bytes, label, key) of each sample, one read per sample, the reads of one shard together."""
        located = [self.locate(i) for i in indices]
        out: list[Any] = [None] * len(indices)
        by_shard: dict[int, list[int]] = {}
        for j, (shard, _) in enumerate(located):
            by_shard.setdefault(shard, []).append(j)
        for shard, js in by_shard.items():
            index = self.shard_index(shard)
            poss = [located[j][1] for j in js]
            starts = [index.offsets[p] for p in poss]
            chunks = remote.read_ranges(self.manifest.location(self.shards[shard].name), starts,
                                        [s + index.sizes[p] for s, p in zip(starts, poss)])
            for j, p, chunk in zip(js, poss, chunks):
                if len(chunk) != index.sizes[p]:
                    raise DataError(f"{self.manifest.location(self.shards[shard].name)} is truncated (sample "
                                    f"{index.keys[p]} is cut short); re-run `vanillanet shards` to rewrite it")
                out[j] = (chunk, index.labels[p], index.keys[p])
        return out

    def raw(self, index: int) -> tuple[bytes, int, str]:
        """(image bytes, label, key) of sample ``index``: what the shard holds, undecoded."""
        return self.raw_many([index])[0]

    def _decode(self, data: bytes) -> Any:
        if getattr(self.transform, "decodes", False):
            return self.transform(data)
        img = open_image(open_bytes(data), self.mode, limit=not self.allow_large)
        return self.transform(img) if self.transform is not None else img

    def _sample(self, index: int, fetched: tuple[bytes, int, str] | None) -> tuple[Any, int]:
        n = len(self)
        for step in range(n):
            i = (index + step) % n
            if self.bad[i]:
                continue
            data, label, key = fetched if step == 0 and fetched is not None else self.raw(i)
            try:
                return self._decode(data), label
            except _UNREADABLE as err:
                where = f"sample {key} of {self.manifest.location(self.shards[self.locate(i)[0]].name)}"
                if self.strict:
                    raise DataError(f"cannot decode {where} ({first_line(err, 300)}); rewrite the shard from a good "
                                    "source, or train without --strict-data to skip unreadable images") from None
                self.bad[i] = True
                _log.warning("skipping unreadable %s (%s); %d skipped so far", where, first_line(err, 300),
                             self.num_skipped)
        raise DataError(f"no readable image in the {self.split} split of {self.data}; every sample failed to decode")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, int]]:
        wanted = [i for i in indices if not self.bad[i]]
        fetched = dict(zip(wanted, self.raw_many(wanted))) if wanted else {}
        return [self._sample(i, fetched.get(i)) for i in indices]

    def epoch_order(self, seed: int, epoch: int) -> list[int]:
        """A seeded permutation of every sample for ``epoch``: the shards in random order, grouped ``window`` at a
        time, the samples of each group shuffled together. Depends only on (seed, epoch) and the manifest."""
        rng = np.random.default_rng([seed, epoch, 0x5A4D])
        order = rng.permutation(len(self.shards))
        parts = []
        for g in range(0, len(order), self.window):
            group = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in order[g:g + self.window]])
            parts.append(group[rng.permutation(len(group))])
        return np.concatenate(parts).tolist()


def check_shards_present(manifest: Manifest, split: str) -> None:
    """DataError naming the first shard of ``split`` (or its index) that is missing, or shorter than the manifest
    says (a truncated copy or download), with the fix."""
    listing = _sizes(manifest.base)
    for info in manifest.splits[split]:
        for name, expected in ((info.name, info.nbytes), (info.index, None)):
            where = manifest.location(name)
            found = listing.get(name) if listing is not None else remote.size(where)
            if found is None:
                raise DataError(f"{where} is listed in the manifest but missing; copy it again or re-run "
                                "`vanillanet shards SRC OUT` (it writes only what is missing)")
            if expected is not None and found != expected:
                raise DataError(f"{where} has {found} bytes, the manifest says {expected}: the shard is truncated "
                                "or changed; copy it again or re-run `vanillanet shards SRC OUT` to rewrite it")


def _sizes(base: str) -> dict[str, int] | None:
    """{file name: size} of a folder, from one listing (None where listing is not possible: http)."""
    if remote.scheme(base) in ("http", "https"):
        return None
    if not remote.is_remote(base):
        folder = remote.local_path(base)
        return {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}
    fs, path = remote.filesystem(base)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    except Exception as err:
        raise DataError(remote.describe(err, base)) from None
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries}

"""The shard format: WebDataset tar files, one index per shard and one JSON manifest.

A shard folder (local or at a URL) holds::

    manifest.json                 classes, splits, shards with their counts, sizes and SHA-256, how it was made
    train-000000.tar              samples KEY.jpg (the image) and KEY.cls (the class index, ASCII decimal)
    train-000000.idx.json         the shard's index: key, byte offset and size of each image, its label
    ...
    val-000000.tar, val-000000.idx.json, ...

The tar files are plain POSIX (ustar) archives that WebDataset, timm's ``wds`` reader, OpenCLIP, DALI and ``tar``
read; the samples of a split are shuffled across its shards when written (seeded), so any window of shards holds
every class. The index makes any sample addressable by one byte-range read; the manifest is the entry point that
``--data`` and ``ShardDataset`` take. Shards and indexes are deterministic (mtime 0, fixed owner), so a re-run
writes the same bytes and can verify a shard by its SHA-256.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from ..util.errors import DataError
from . import remote

FORMAT = "vanillanet-shards"
VERSION = 1
MANIFEST = "manifest.json"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")
_BLOCK = 512
_RECORD = 20 * _BLOCK  # what tar pads an archive to


def shard_name(split: str, number: int) -> str:
    """The file name of shard ``number`` of ``split``: ``train-000012.tar``."""
    return f"{split}-{number:06d}.tar"


def index_name(tar_name: str) -> str:
    """The index file beside a shard: ``train-000012.idx.json``."""
    return tar_name[: -len(".tar")] + ".idx.json"


def sample_key(number: int, stem: str) -> str:
    """A WebDataset key: the sample's number in its split and its source name, reduced to [A-Za-z0-9_-] (a key has
    no dot, which starts the extension, and no slash, which would make a folder)."""
    return f"{number:08d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', stem)[:64]}".rstrip("_")


def check_member_name(name: str, where: str) -> str:
    """``name`` if it is a safe relative member name; a DataError for an absolute name, a ``..`` component, a
    backslash or a NUL (such members could write outside a folder if extracted, and are never ours)."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\0" in name:
        raise DataError(f"{where} has a member named {name!r}, which points outside the archive; it was not "
                        "written by vanillanet: rebuild the shards with `vanillanet shards`")
    return name


class TarWriter:
    """Writes ustar members to a binary file and reports where each member's data starts."""

    def __init__(self, f: BinaryIO):
        self.f, self.offset = f, 0

    def add(self, name: str, data: bytes) -> int:
        """Append member ``name``; the byte offset of its data in the archive."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "", ""
        header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
        pad = -len(data) % _BLOCK
        self.f.write(header + data + b"\0" * pad)
        start = self.offset + len(header)
        self.offset += len(header) + len(data) + pad
        return start

    def close(self) -> None:
        """The end-of-archive blocks, padded to a tar record."""
        end = self.offset + 2 * _BLOCK
        self.f.write(b"\0" * (2 * _BLOCK + (-end % _RECORD)))
        self.offset = end + (-end % _RECORD)


@dataclass(frozen=True)
class ShardIndex:
    """Where each image of one shard lies: parallel lists, one entry per sample."""

    keys: list[str]
    offsets: list[int]
    sizes: list[int]
    labels: list[int]
    exts: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def to_json(self, shard: str, nbytes: int, sha256: str, plan: str) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "shard": shard, "bytes": nbytes, "sha256": sha256,
                "plan": plan, "keys": self.keys, "offsets": self.offsets, "sizes": self.sizes,
                "labels": self.labels, "exts": self.exts}


def parse_index(raw: bytes, where: str) -> tuple[ShardIndex, dict[str, Any]]:
    """(the index, its header fields) from an index file's bytes; DataError if it is not a complete index."""
    try:
        obj = json.loads(raw)
        cols = [obj[k] for k in ("keys", "offsets", "sizes", "labels", "exts")]
        if obj.get("format") != FORMAT or len({len(c) for c in cols}) != 1:
            raise ValueError("not a shard index")
        index = ShardIndex([str(k) for k in cols[0]], [int(v) for v in cols[1]], [int(v) for v in cols[2]],
                           [int(v) for v in cols[3]], [str(v) for v in cols[4]])
        if any(o < 0 or s < 0 or o + s > int(obj["bytes"]) for o, s in zip(index.offsets, index.sizes)):
            raise ValueError("a member lies outside the shard")
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{where} is not a valid shard index ({err}); re-run `vanillanet shards` to rewrite "
                        "it") from None
    return index, {k: obj[k] for k in ("shard", "bytes", "sha256", "plan", "skipped") if k in obj}


# ---------------------------------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it."""

    name: str
    count: int
    nbytes: int
    sha256: str

    @property
    def index(self) -> str:
        return index_name(self.name)


@dataclass(frozen=True)
class Manifest:
    """A shard folder's manifest: where it lies (``base``), the class names, the shards of each split, and the
    record of how it was made."""

    base: str
    classes: list[str]
    splits: dict[str, list[ShardInfo]]
    made: dict[str, Any]

    def count(self, split: str) -> int:
        return sum(s.count for s in self.splits.get(split, ()))

    def location(self, name: str) -> str:
        return remote.join(self.base, name)

    def to_json(self, skipped: dict[str, Any] | None = None) -> dict[str, Any]:
        splits = {split: {"count": self.count(split),
                          "shards": [{"name": s.name, "index": s.index, "count": s.count, "bytes": s.nbytes,
                                      "sha256": s.sha256} for s in shards]}
                  for split, shards in self.splits.items()}
        return {"format": FORMAT, "version": VERSION, "classes": self.classes, "num_classes": len(self.classes),
                "splits": splits, "skipped": skipped or {}, "made": self.made}


def manifest_location(data: str) -> str:
    """The manifest of ``data``: ``data`` itself if it names a ``.json`` file, else ``data/manifest.json``."""
    return data if data.rstrip("/").endswith(".json") else remote.join(data, MANIFEST)


def is_shard_location(data: str) -> bool:
    """True if ``--data`` names shards: a URL, a ``.json`` manifest, or a folder holding ``manifest.json``."""
    if remote.is_url(data):
        return True
    path = remote.local_path(data)
    return (path.is_file() and path.suffix == ".json") or (path / MANIFEST).is_file()


def parse_manifest(raw: bytes, location: str) -> Manifest:
    """The manifest in ``raw`` (read from ``location``); DataError naming what is wrong and the fix."""
    try:
        obj = json.loads(raw)
    except ValueError as err:
        raise DataError(f"{location} is not JSON ({err}); point --data at a manifest written by `vanillanet "
                        "shards`") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise DataError(f"{location} is not a vanillanet shard manifest (no \"format\": \"{FORMAT}\"); write one "
                        "with `vanillanet shards SRC OUT`")
    if int(obj.get("version", 0)) > VERSION:
        raise DataError(f"{location} has manifest version {obj['version']}, newer than this vanillanet reads "
                        f"({VERSION}); upgrade vanillanet")
    try:
        splits = {split: [ShardInfo(str(s["name"]), int(s["count"]), int(s["bytes"]), str(s["sha256"]))
                          for s in info["shards"]] for split, info in obj["splits"].items()}
        classes = [str(c) for c in obj["classes"]]
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{location} is incomplete ({type(err).__name__}: {err}); re-run `vanillanet shards` to "
                        "rewrite it") from None
    for shards in splits.values():
        for s in shards:
            if "/" in s.name or not s.name.endswith(".tar"):
                raise DataError(f"{location} lists the shard {s.name!r}, which is not a .tar file beside the "
                                "manifest; re-run `vanillanet shards` to rewrite it")
    return Manifest(remote.parent(location), classes, splits, dict(obj.get("made") or {}))


def load_manifest(data: str) -> Manifest:
    """The manifest of a shard folder, manifest file or URL."""
    location = manifest_location(str(data))
    return parse_manifest(remote.read_bytes(location), location)


# ------------------------------------------------------------------------------------------ foreign WebDataset tars
def scan_tar(raw: bytes, where: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of a WebDataset tar (any writer): (key, {extension: bytes}) in archive order, members grouped by
    the key before the first dot of their base name. Unsafe member names raise DataError; a truncated archive
    raises DataError naming the fix."""
    current: str | None = None
    parts: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                check_member_name(member.name, where)
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                if key != current and current is not None:
                    yield current, parts
                    parts = {}
                current = key
                if dot:
                    parts[ext.lower()] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{where} is not a complete tar file ({err}); download or write it again") from None
    if current is not None:
        yield current, parts

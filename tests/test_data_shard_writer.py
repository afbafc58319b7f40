"""Writing shards: contents, pre-resizing, image kinds, unreadable images, determinism and safe re-runs."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
import tarfile
import time

import numpy as np
import pytest
from conftest import make_image_tree
from PIL import Image

from vanillanet.data import shard_writer
from vanillanet.data.shard_writer import WriteSettings, encode_image, write_shards
from vanillanet.data.shards import ShardDataset
from vanillanet.util.errors import DataError, OutputError


@pytest.fixture
def tree(tmp_path):
    return make_image_tree(tmp_path / "src")


def _members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_writes_every_sample_with_its_label(tree, tmp_path):
    out = tmp_path / "out"
    s = write_shards(str(tree), str(out), WriteSettings(shard_size=5), progress=False)
    assert s["samples"] == {"train": 24, "val": 9} and s["shards"] == 5 + 2 and s["written"] == 7
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["ant", "bee", "cat"] and manifest["splits"]["train"]["count"] == 24
    assert manifest["made"]["source"] == str(tree) and manifest["made"]["shard_size"] == 5
    sources = {p.read_bytes(): p.parent.name for p in tree.glob("train/*/*.jpg")}
    seen = []
    for tar in sorted(out.glob("train-*.tar")):
        members = _members(tar)
        for name, data in members.items():
            if name.endswith(".jpg"):
                label = int(members[name[:-4] + ".cls"])
                assert manifest["classes"][label] == sources[data]  # JPEGs needing no change: copied byte for byte
                seen.append(data)
    assert sorted(seen) == sorted(sources)
    first = [sources[d] for d in seen[:5]]
    assert len(set(first)) > 1  # samples are shuffled across shards, not written class by class


def test_shards_are_deterministic_and_independent_of_workers(tree, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_shards(str(tree), str(a), WriteSettings(shard_size=4, max_side=16), workers=1, progress=False)
    write_shards(str(tree), str(b), WriteSettings(shard_size=4, max_side=16), workers=2, progress=False)
    assert _digest(a) == _digest(b) and len(_digest(a)) == 9


def test_max_side_keeps_the_aspect_ratio(tree, tmp_path):
    out = tmp_path / "out"
    write_shards(str(tree), str(out), WriteSettings(max_side=16, quality=80), progress=False)
    ds = ShardDataset(str(out), "val")
    assert {ds[i][0].size for i in range(len(ds))} == {(16, 12)}  # 32x24 -> 16x12


def test_image_kinds_become_8_bit_rgb_or_gray():
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)
    kinds = {  # (image, the formats that can hold it)
        "cmyk": (Image.fromarray(rgb).convert("CMYK"), ("JPEG", "TIFF")),
        "gray": (Image.fromarray(rgb[..., 0]), ("PNG", "JPEG")),
        "16-bit": (Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).convert("I;16"), ("PNG", "TIFF")),
        "palette+alpha": (Image.fromarray(rgb).convert("RGBA").convert("P"), ("PNG",)),
    }
    for kind, (img, formats) in kinds.items():
        for fmt in formats:
            buf = io.BytesIO()
            img.save(buf, format=fmt)
            out = Image.open(io.BytesIO(encode_image(buf.getvalue(), WriteSettings())))
            assert out.format == "JPEG" and out.mode in ("RGB", "L") and out.size == (30, 20), (kind, fmt)
    sixteen = io.BytesIO()
    kinds["16-bit"][0].save(sixteen, format="PNG")
    got = np.asarray(Image.open(io.BytesIO(encode_image(sixteen.getvalue(), WriteSettings(quality=95)))))
    assert abs(got.astype(int) - rgb[..., 0]).mean() < 3  # scaled by its 16-bit range, not clipped to white


def _bad_tree(tree):
    (tree / "train" / "ant" / "garbage.jpg").write_bytes(b"this is not an image")
    good = (tree / "train" / "bee" / "bee_0.jpg").read_bytes()
    (tree / "train" / "bee" / "cut.jpg").write_bytes(good[: len(good) // 2])
    Image.new("L", (600_000, 1)).save(tree / "train" / "cat" / "line.png")
    (tree / "train" / "cat" / "notes.txt").write_text("not an image extension: never listed")


def test_unreadable_images_are_counted_skips_or_refused(tree, tmp_path):
    _bad_tree(tree)
    s = write_shards(str(tree), str(tmp_path / "out"), progress=False)
    assert s["skipped"] == {"train": 3} and s["samples"]["train"] == 24
    skipped = json.loads((tmp_path / "out" / "manifest.json").read_text())["skipped"]["train"]
    reasons = {row["sample"].split(":")[0]: row["reason"] for row in skipped["samples"]}
    assert set(reasons) == {"ant/garbage.jpg", "bee/cut.jpg", "cat/line.png"} and skipped["count"] == 3
    assert "aspect ratio" in reasons["cat/line.png"] and reasons["ant/garbage.jpg"].startswith("not an image")
    with pytest.raises(DataError, match=r"cannot read train sample .*(garbage|cut|line).*drop --strict"):
        write_shards(str(tree), str(tmp_path / "strict"), WriteSettings(strict=True), progress=False)
    write_shards(str(tree), str(tmp_path / "large"), WriteSettings(allow_large=True), progress=False)
    reasons = json.loads((tmp_path / "large" / "manifest.json").read_text())["skipped"]["train"]["samples"]
    assert "600000x1 px is above JPEG's 65500 px limit; pass --max-side to shrink it" in [r["reason"] for r in reasons]
    shrunk = WriteSettings(allow_large=True, max_side=320)
    assert write_shards(str(tree), str(tmp_path / "shrunk"), shrunk, progress=False)["skipped"] == {"train": 2}
    assert (320, 1) in {img.size for img, _ in ShardDataset(str(tmp_path / "shrunk"), allow_large=True)}


def test_rerun_keeps_complete_shards_and_rewrites_damaged_ones(tree, tmp_path):
    out = tmp_path / "out"
    settings = WriteSettings(shard_size=4)
    write_shards(str(tree), str(out), settings, progress=False)
    before = _digest(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    kept = []
    s = write_shards(str(tree), str(out), settings, progress=False, on_shard=lambda i, k: kept.append(k))
    assert s["kept"] == 9 and all(kept)
    assert all(p.stat().st_mtime_ns == mtimes[p.name] for p in out.glob("*.tar"))  # verified, not rewritten
    # a truncated shard, a shard without index (interrupted before its index), a flipped byte: rewritten
    (out / "train-000001.tar").write_bytes((out / "train-000001.tar").read_bytes()[:3000])
    (out / "train-000002.idx.json").unlink()
    raw = bytearray((out / "val-000000.tar").read_bytes())
    raw[700] ^= 0xFF
    (out / "val-000000.tar").write_bytes(bytes(raw))
    s = write_shards(str(tree), str(out), settings, progress=False)
    assert s["written"] == 3 and s["kept"] == 6 and _digest(out) == before
    # other settings: a different plan, every shard is written again
    assert write_shards(str(tree), str(out), WriteSettings(shard_size=4, quality=70), progress=False)["kept"] == 0


def test_interrupted_run_leaves_no_half_written_shard_and_continues(tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, calls = shard_writer.encode_image, []

    def dies_in_the_third_shard(item, settings):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(item, settings)

    monkeypatch.setattr(shard_writer, "encode_image", dies_in_the_third_shard)
    with pytest.raises(KeyboardInterrupt, match="^$"):  # raised bare, as Ctrl-C
        write_shards(str(tree), str(out), WriteSettings(shard_size=4), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["train-000000.idx.json", "train-000000.tar",
                                                     "train-000001.idx.json", "train-000001.tar"]
    monkeypatch.setattr(shard_writer, "encode_image", real)
    (out / f".train-000002.tar.{2**22 + 7}.deadbeef.tmp").write_bytes(b"left by a killed run")
    s = write_shards(str(tree), str(out), WriteSettings(shard_size=4), progress=False)
    assert s["kept"] == 2 and s["written"] == 7
    assert not list(out.glob(".*.tmp"))  # the dead run's temporary is gone


def test_refused_parallel_run_stops_its_workers_and_leaves_complete_shards(tree, tmp_path, monkeypatch):
    (tree / "train" / "ant" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    real = shard_writer.encode_image

    def slow(item, settings):  # the other worker is inside a shard (its temporary open) when the refusal comes
        time.sleep(0.05)
        return real(item, settings)

    monkeypatch.setattr(shard_writer, "encode_image", slow)  # forked workers inherit it
    out = tmp_path / "strict"
    with pytest.raises(DataError, match="cannot read train sample ant/broken.jpg"):
        write_shards(str(tree), str(out), WriteSettings(shard_size=3, strict=True), workers=2, progress=False)
    assert multiprocessing.active_children() == []  # every worker has exited: nothing writes after the return
    names = sorted(p.name for p in out.iterdir())
    tars = [n for n in names if n.endswith(".tar")]
    assert names == sorted(tars + [n[:-4] + ".idx.json" for n in tars])  # complete shards only, no temporaries
    assert sorted(os.listdir(tmp_path)) == ["src", "strict"]
    monkeypatch.setattr(shard_writer, "encode_image", real)
    s = write_shards(str(tree), str(out), WriteSettings(shard_size=3), workers=2, progress=False)
    assert s["kept"] == len(tars) and s["skipped"] == {"train": 1}


def test_sigterm_stops_the_workers_and_exits_143(tree, tmp_path, monkeypatch):
    real = shard_writer.encode_image

    def slow(item, settings):
        time.sleep(0.02)
        return real(item, settings)

    monkeypatch.setattr(shard_writer, "encode_image", slow)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="^143$") as info:  # the real signal, after the first finished shard
        write_shards(str(tree), str(out), WriteSettings(shard_size=3), workers=2, progress=False,
                     on_shard=lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    assert info.value.code == 143 and signal.getsignal(signal.SIGTERM) == before
    assert multiprocessing.active_children() == []  # no worker outlives the command
    names = sorted(p.name for p in out.iterdir())
    tars = [n for n in names if n.endswith(".tar")]
    assert tars and names == sorted(tars + [n[:-4] + ".idx.json" for n in tars])  # complete shards, no temporaries


def test_a_worker_that_dies_is_a_one_line_error(tree, tmp_path, monkeypatch):
    real = shard_writer.encode_image

    def killed(item, settings):  # the OOM killer's SIGKILL, in the worker only
        if multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(item, settings)

    monkeypatch.setattr(shard_writer, "encode_image", killed)
    with pytest.raises(DataError, match="a worker process writing shards died.*fewer --workers"):
        write_shards(str(tree), str(tmp_path / "out"), WriteSettings(shard_size=4), workers=2, progress=False)
    assert multiprocessing.active_children() == []


def test_sources_other_than_folders(tmp_path):
    s = write_shards("synthetic", str(tmp_path / "syn"), WriteSettings(shard_size=200), progress=False)
    assert s["samples"] == {"train": 512, "val": 128} and s["classes"] == 10
    ds = ShardDataset(str(tmp_path / "syn"), "val")
    assert ds[0][0].size == (32, 32) and ds.classes[0] == "class_0"
    # existing shards as the source: pre-resized copy of them
    again = write_shards(str(tmp_path / "syn"), str(tmp_path / "small"), WriteSettings(max_side=16), progress=False)
    assert again["samples"] == s["samples"]
    assert ShardDataset(str(tmp_path / "small"), "train")[3][0].size == (16, 16)


def test_single_split_class_folder(tree, tmp_path):
    s = write_shards(str(tree / "val"), str(tmp_path / "out"), split="holdout", progress=False)
    assert s["samples"] == {"holdout": 9}


def test_bad_sources_and_outputs(tree, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*one subfolder per class"):
        write_shards(str(tmp_path / "empty"), str(tmp_path / "o1"), progress=False)
    with pytest.raises(DataError, match="neither a folder nor a data source"):
        write_shards(str(tmp_path / "nothing"), str(tmp_path / "o2"), progress=False)
    with pytest.raises(OutputError, match="inside SRC"):
        write_shards(str(tree), str(tree / "shards"), progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        write_shards(str(tree), str(tmp_path / "file"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["empty", "file", "src"]  # nothing written anywhere

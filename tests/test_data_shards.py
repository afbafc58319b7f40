"""Reading shards: the Dataset, the decode seam, the per-epoch order over ranks, exact resume, bad shards."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import make_image_tree
from PIL import Image

from vanillanet.data.datasets import num_skipped
from vanillanet.data.loaders import EpochBatchSampler, build_loader, set_epoch
from vanillanet.data.shard_format import FORMAT, ShardIndex, TarWriter, index_name
from vanillanet.data.shard_writer import WriteSettings, write_shards
from vanillanet.data.shards import ShardDataset
from vanillanet.data.sources import build_dataset, find_source
from vanillanet.util.errors import DataError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    src = make_image_tree(root / "src", train=10, val=3)
    write_shards(str(src), str(root / "out"), WriteSettings(shard_size=7), progress=False)  # 30 = 7+7+7+7+2
    return root / "out", src


def _tensor(img):
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def test_items_are_the_source_images_with_their_labels(shards):
    out, src = shards
    ds = build_dataset(str(out), "train")
    assert isinstance(ds, ShardDataset) and find_source(str(out)).name == "shards"
    assert len(ds) == 30 and ds.classes == ["ant", "bee", "cat"]
    originals = {np.asarray(Image.open(p).convert("RGB")).tobytes(): p.parent.name for p in src.glob("train/*/*.jpg")}
    got = {np.asarray(img).tobytes(): ds.classes[label] for img, label in (ds[i] for i in range(len(ds)))}
    assert got == originals
    assert [ds.label(i) for i in range(3)] == [ds[i][1] for i in range(3)]
    gray = ShardDataset(str(out), "val", in_chans=1)
    assert gray[0][0].mode == "L"


def test_public_name():
    import vanillanet

    assert vanillanet.ShardDataset is ShardDataset and vanillanet.write_shards is write_shards
    assert vanillanet.WriteSettings is WriteSettings


def test_manifest_file_and_file_url_read_the_same(shards):
    out, _ = shards
    a = ShardDataset(str(out / "manifest.json"), "val")
    b = ShardDataset(f"file://{out}", "val")
    assert all(a.raw(i) == b.raw(i) for i in range(len(a)))


class BytesTransform:
    decodes = True

    def __init__(self):
        self.seen = []

    def __call__(self, data: bytes):
        self.seen.append(data[:2])
        return torch.tensor(len(data))

    @staticmethod
    def collate(items):
        return "collated", len(items)


def test_transform_that_decodes_gets_bytes_and_its_collate_is_used(shards):
    out, _ = shards
    tf = BytesTransform()
    ds = ShardDataset(str(out), "train", tf)
    x, _ = ds[0]
    assert tf.seen == [b"\xff\xd8"] and int(x) == len(ds.raw(0)[0])
    loader = build_loader(ds, 4, is_training=True)
    set_epoch(loader, 0)
    assert next(iter(loader)) == ("collated", 4)


def test_epoch_order_is_a_seeded_permutation_read_by_windows(shards):
    out, _ = shards
    ds = ShardDataset(str(out), "train", window=2)
    order = ds.epoch_order(0, 0)
    assert sorted(order) == list(range(30))
    assert order == ds.epoch_order(0, 0) and order != ds.epoch_order(0, 1) and order != ds.epoch_order(1, 0)
    first = {ds.locate(i)[0] for i in order[:14]}  # the first window: two shards of 7
    assert len(first) == 2 or (len(first) <= 2 and 4 in first)
    assert [ds.locate(i) for i in (0, 6, 7, 29)] == [(0, 0), (0, 6), (1, 0), (4, 1)]


def test_every_rank_gets_the_same_number_of_samples(shards):
    out, _ = shards
    ds = ShardDataset(str(out), "train")
    for world in (1, 2, 3, 4, 7):  # 30 samples in shards of 7, 7, 7, 7, 2: uneven for every world size
        per_rank = []
        for rank in range(world):
            sampler = EpochBatchSampler(len(ds), 2, shuffle=True, drop_last=True, seed=5, num_replicas=world,
                                        rank=rank, order=ds.epoch_order)
            per_rank.append([i for batch in sampler for i, _ in batch])
        per = -(-30 // world)  # the order padded to a multiple of the ranks
        assert [len(r) for r in per_rank] == [per // 2 * 2] * world  # equal: no rank waits for another
        covered = set().union(*per_rank)
        assert covered <= set(range(30)) and len(covered) >= world * (per // 2 * 2) - (per * world - 30)


class WorkerId:
    """A transform that returns the id of the DataLoader worker that made the sample."""

    def __call__(self, img):
        return torch.utils.data.get_worker_info().id


@pytest.mark.parametrize("world", [2, 3])
def test_loaders_of_every_rank_and_worker_get_equal_counts(shards, monkeypatch, world):
    out, _ = shards
    counts = []
    for rank in range(world):  # build_loader(distributed=True) as each rank of a world of ``world`` sees it
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        loader = build_loader(ShardDataset(str(out), "train", WorkerId()), 3, is_training=True, distributed=True,
                              num_workers=2, seed=1)
        set_epoch(loader, 0)
        batches = list(loader)
        assert all(len(ids) == 3 for ids, _ in batches)  # full batches only
        per_worker = [sum(int((ids == w).sum()) for ids, _ in batches) for w in (0, 1)]
        assert abs(per_worker[0] - per_worker[1]) <= 3  # whole batches, round robin over the workers
        counts.append(len(batches))
    assert counts == [(-(-30 // world)) // 3] * world  # 5 batches on each of 2 ranks, 3 on each of 3


def _epoch(loader, epoch, start=0):
    set_epoch(loader, epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_resume_mid_epoch_gives_the_same_batches_with_any_worker_count(shards):
    out, _ = shards
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(16), T.RandomHorizontalFlip(), T.ToTensor()])  # random: seeded per batch
    straight = _epoch(build_loader(ShardDataset(str(out), "train", tf), 4, is_training=True, seed=7), 1)
    resumed = _epoch(build_loader(ShardDataset(str(out), "train", tf), 4, is_training=True, seed=7, num_workers=2),
                     1, start=3)
    assert len(straight) == 7 and len(resumed) == 4
    for (xa, ya), (xb, yb) in zip(straight[3:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_corrupt_image_in_a_shard_is_a_counted_skip_or_refused(shards, tmp_path):
    out = _copy(shards[0], tmp_path / "bad")
    index = json.loads((out / "train-000000.idx.json").read_text())
    raw = bytearray((out / "train-000000.tar").read_bytes())
    start = index["offsets"][1]
    raw[start:start + index["sizes"][1]] = b"\x00" * index["sizes"][1]  # same length: the index still matches
    (out / "train-000000.tar").write_bytes(bytes(raw))
    ds = ShardDataset(str(out), "train")
    _, label = ds[1]
    assert ds.num_skipped == 1 and num_skipped(ds) == 1 and label == ds.label(2)  # the next sample takes its place
    loader = build_loader(ShardDataset(str(out), "train"), 5, is_training=False, num_workers=1)
    assert sum(len(y) for _, y in (b for b in _loader_items(loader))) == 30 and num_skipped(loader) == 1
    with pytest.raises(DataError, match=r"cannot decode sample 00000001_\w+ of .*train-000000.tar.*--strict-data"):
        ShardDataset(str(out), "train", strict=True)[1]


def _loader_items(loader):
    set_epoch(loader, 0)
    from torchvision import transforms as T

    loader.dataset.dataset.transform = T.ToTensor()
    return list(loader)


def test_truncated_missing_and_mismatched_shards_are_one_line_errors(shards, tmp_path):
    out = _copy(shards[0], tmp_path / "cut")
    tar = out / "train-000002.tar"
    tar.write_bytes(tar.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"train-000002.tar has 2000 bytes, the manifest says \d+: the shard is "
                                        "truncated.*vanillanet shards SRC OUT"):
        ShardDataset(str(out), "train")
    assert ShardDataset(str(out), "val")  # the other split is fine
    tar.unlink()
    with pytest.raises(DataError, match="train-000002.tar is listed in the manifest but missing"):
        ShardDataset(str(out), "train")
    with pytest.raises(DataError, match="no 'test' split .*it has: train, val"):
        ShardDataset(str(out), "test")
    with pytest.raises(DataError, match="does not exist"):
        ShardDataset(str(tmp_path / "nowhere" / "manifest.json"))


def _foreign_shard(folder, members: list[tuple[str, bytes, int]]) -> None:
    """A shard folder whose one shard holds ``members`` (name, image bytes, label), with a hand-made index."""
    folder.mkdir()
    buf = io.BytesIO()
    writer = TarWriter(buf)
    cols = ShardIndex([], [], [], [], [])
    for name, data, label in members:
        key, _, ext = name.rpartition(".")
        cols.keys.append(key)
        cols.offsets.append(writer.add(name, data))
        cols.sizes.append(len(data))
        cols.labels.append(label)
        cols.exts.append(ext)
    writer.close()
    (folder / "train-000000.tar").write_bytes(buf.getvalue())
    (folder / index_name("train-000000.tar")).write_text(json.dumps(cols.to_json("train-000000.tar",
                                                                                  len(buf.getvalue()), "0", "")))
    manifest = {"format": FORMAT, "version": 1, "classes": ["a", "b"], "splits": {"train": {"count": len(members),
                "shards": [{"name": "train-000000.tar", "count": len(members), "bytes": len(buf.getvalue()),
                            "sha256": "0"}]}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_image_kinds_inside_shards_are_read_like_folders(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (12, 10, 3), np.uint8)
    members = [("cmyk.jpg", _encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG"), 0),
               ("gray.png", _encoded(Image.fromarray(rgb[..., 0]), "PNG"), 1),
               ("deep.png", _encoded(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).convert("I;16"), "PNG"), 0),
               ("text.jpg", b"a text member, not an image", 1),
               ("cut.jpg", _encoded(Image.fromarray(rgb), "JPEG")[:200], 0),
               ("line.png", _encoded(Image.new("L", (600_000, 1)), "PNG"), 0)]
    _foreign_shard(tmp_path / "kinds", members)
    ds = ShardDataset(str(tmp_path / "kinds"))
    imgs = [ds[i][0] for i in range(3)]
    assert all(img.mode == "RGB" and img.size == (10, 12) for img in imgs)
    assert np.abs(np.asarray(imgs[2])[..., 0].astype(int) - rgb[..., 0]).max() <= 1  # 16-bit scaled by its range
    ds[3], ds[4], ds[5]
    assert ds.num_skipped == 3  # the text member, the truncated JPEG and the 1 x 600,000 line
    strict = ShardDataset(str(tmp_path / "kinds"), strict=True)
    for i, reason in ((3, "text of .*not an image file"), (4, "cut of .*Truncated File Read"),
                      (5, "line of .*aspect ratio above 100")):
        with pytest.raises(DataError, match=f"cannot decode sample {reason}.*--strict-data") as info:
            strict[i]
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["../x.jpg", "/etc/x.jpg"])
def test_members_pointing_outside_are_refused(tmp_path, name):
    _foreign_shard(tmp_path / "evil", [(name, _encoded(Image.new("RGB", (4, 4)), "JPEG"), 0)])
    with pytest.raises(DataError, match="points outside the archive"):
        ShardDataset(str(tmp_path / "evil"))[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil"]  # nothing written anywhere

"""The shard format: tar members and their offsets, keys, member-name safety, indexes, manifests, foreign tars."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from vanillanet.data.shard_format import (
    FORMAT,
    MANIFEST,
    ShardIndex,
    TarWriter,
    check_member_name,
    index_name,
    is_shard_location,
    load_manifest,
    manifest_location,
    parse_index,
    parse_manifest,
    sample_key,
    scan_tar,
    shard_name,
)
from vanillanet.util.errors import DataError


def _tar(members: list[tuple[str, bytes]]) -> tuple[bytes, list[int]]:
    buf = io.BytesIO()
    writer = TarWriter(buf)
    offsets = [writer.add(name, data) for name, data in members]
    writer.close()
    assert writer.offset == len(buf.getvalue())
    return buf.getvalue(), offsets


def test_tar_writer_offsets_point_at_the_data_and_tar_reads_it():
    members = [("00000000_a.jpg", b"\xff\xd8" + bytes(range(256)) * 3), ("00000000_a.cls", b"2"),
               ("00000001_b.jpg", b"x" * 512), ("00000001_b.cls", b"0")]
    raw, offsets = _tar(members)
    assert len(raw) % 10240 == 0  # padded to a tar record
    for (_, data), off in zip(members, offsets):
        assert raw[off:off + len(data)] == data
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        got = [(m.name, tar.extractfile(m).read(), m.mtime, m.uid) for m in tar]
    assert [(n, d) for n, d, _, _ in got] == members
    assert all(mtime == 0 and uid == 0 for _, _, mtime, uid in got)  # deterministic bytes
    assert _tar(members)[0] == raw


def test_names_and_keys():
    assert shard_name("train", 12) == "train-000012.tar" and index_name("train-000012.tar") == "train-000012.idx.json"
    assert sample_key(3, "n014.40764_10026 (copy)") == "00000003_n014_40764_10026_copy"
    assert "." not in sample_key(1, "a.b.c") and "/" not in sample_key(1, "../../etc/passwd")


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/../../x", "a\\..\\x", ""])
def test_unsafe_member_names_are_refused(name):
    with pytest.raises(DataError, match="points outside the archive"):
        check_member_name(name, "s.tar")


def test_safe_member_names_pass():
    assert check_member_name("dir/0001.jpg", "s.tar") == "dir/0001.jpg"


def _index_json(**change) -> bytes:
    index = ShardIndex(["k0", "k1"], [512, 2048], [100, 10], [1, 0], ["jpg", "jpg"])
    return json.dumps({**index.to_json("train-000000.tar", 10240, "ab", "plan"), **change}).encode()


def test_index_round_trip_and_refusals():
    index, header = parse_index(_index_json(), "i.json")
    assert index.keys == ["k0", "k1"] and index.offsets == [512, 2048] and header["bytes"] == 10240
    with pytest.raises(DataError, match="not a valid shard index.*re-run"):
        parse_index(b"{", "i.json")
    with pytest.raises(DataError, match="outside the shard"):
        parse_index(_index_json(bytes=1000), "i.json")
    with pytest.raises(DataError, match="not a valid shard index"):
        parse_index(_index_json(labels=[1]), "i.json")


def _manifest(**change) -> dict:
    return {"format": FORMAT, "version": 1, "classes": ["a", "b"],
            "splits": {"train": {"count": 3, "shards": [{"name": "train-000000.tar", "count": 3, "bytes": 10240,
                                                         "sha256": "00"}]}}, "made": {}, **change}


def test_manifest_parsing(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps(_manifest()))
    m = load_manifest(str(tmp_path))
    assert m.classes == ["a", "b"] and m.count("train") == 3 and m.count("val") == 0
    assert m.location("train-000000.tar") == str(tmp_path / "train-000000.tar")
    assert load_manifest(str(tmp_path / MANIFEST)).splits == m.splits
    assert parse_manifest(json.dumps(m.to_json()).encode(), "x/manifest.json").splits == m.splits
    with pytest.raises(DataError, match="not a vanillanet shard manifest.*vanillanet shards SRC OUT"):
        parse_manifest(b'{"a": 1}', "m.json")
    with pytest.raises(DataError, match="not JSON"):
        parse_manifest(b"\x00", "m.json")
    with pytest.raises(DataError, match="newer than this vanillanet reads.*upgrade"):
        parse_manifest(json.dumps(_manifest(version=99)).encode(), "m.json")
    with pytest.raises(DataError, match="incomplete"):
        parse_manifest(json.dumps(_manifest(splits={"train": {}})).encode(), "m.json")
    bad = _manifest()
    bad["splits"]["train"]["shards"][0]["name"] = "../../etc/passwd.tar"
    with pytest.raises(DataError, match="not a .tar file beside the manifest"):
        parse_manifest(json.dumps(bad).encode(), "m.json")
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(str(tmp_path / "nowhere"))


def test_shard_locations(tmp_path):
    (tmp_path / MANIFEST).write_text("{}")
    assert is_shard_location(str(tmp_path)) and is_shard_location(str(tmp_path / MANIFEST))
    assert is_shard_location("s3://bucket/x") and is_shard_location("https://host/x/manifest.json")
    assert not is_shard_location(str(tmp_path / "nowhere")) and not is_shard_location("synthetic")
    assert manifest_location("s3://b/x/") == "s3://b/x/manifest.json"
    assert manifest_location("s3://b/x/my.json") == "s3://b/x/my.json"


def test_scan_tar_groups_members_by_key():
    raw, _ = _tar([("a/s1.jpg", b"J1"), ("a/s1.cls", b"1"), ("s2.jpg", b"J2"), ("s2.cls", b"0"), ("s2.txt", b"t")])
    assert list(scan_tar(raw, "x.tar")) == [("a/s1", {"jpg": b"J1", "cls": b"1"}),
                                            ("s2", {"jpg": b"J2", "cls": b"0", "txt": b"t"})]


def test_scan_tar_refuses_unsafe_names_and_truncation():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("ok.jpg", "../x.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DataError, match=r"'\.\./x\.jpg'.*points outside"):
        list(scan_tar(buf.getvalue(), "evil.tar"))
    raw, _ = _tar([("s1.jpg", b"J" * 3000), ("s1.cls", b"1")])
    with pytest.raises(DataError, match="not a complete tar file.*again"):
        list(scan_tar(raw[:1200], "cut.tar"))

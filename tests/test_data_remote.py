"""data/remote.py: one way to read a local path or an fsspec URL: locations (scheme, join, parent), whole files,
byte ranges and sizes, locally and on a loopback S3 store, and every failure as one line naming the cause and the
fix. (Shards read through it end to end: test_shards.py and test_data_shards.py.)"""

from __future__ import annotations

import pytest

from vanillanet.data import remote
from vanillanet.util.errors import DataError


def test_locations():
    assert [remote.scheme(x) for x in ("s3://b/k", "GS://b", "file:///tmp/x", "/tmp/a://b", "plain")] == \
        ["s3", "gs", "file", "", ""]
    assert remote.is_remote("https://host/x") and not remote.is_remote("file:///x") and remote.is_url("file:///x")
    assert str(remote.local_path("file:///tmp/x.tar")) == "/tmp/x.tar"
    assert remote.join("s3://bucket/shards/", "a.tar") == "s3://bucket/shards/a.tar"
    assert remote.join("file:///tmp/s", "a.tar") == "/tmp/s/a.tar"
    assert remote.parent("s3://bucket/shards/a.tar") == "s3://bucket/shards"
    assert remote.parent("/tmp/s/a.tar") == "/tmp/s"


def test_timeouts_and_retries_from_the_environment(monkeypatch):
    monkeypatch.delenv("VANILLANET_IO_TIMEOUT", raising=False)
    monkeypatch.setenv("VANILLANET_IO_RETRIES", "0")
    assert remote.timeout() == 60.0 and remote.retries() == 1  # at least one attempt
    monkeypatch.setenv("VANILLANET_IO_TIMEOUT", "2.5")
    assert remote.timeout() == 2.5


def test_local_files_whole_in_ranges_and_sized(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(100)))
    for location in (path, f"file://{path}"):
        assert remote.read_bytes(location) == bytes(range(100))
        assert remote.read_ranges(location, [0, 10, 98], [3, 12, 100]) == [b"\x00\x01\x02", b"\n\x0b", b"bc"]
        assert remote.size(location) == 100 and remote.exists(location)
    assert remote.size(tmp_path / "missing") is None and not remote.exists(tmp_path)


def test_a_missing_local_file_is_one_line(tmp_path):
    missing = tmp_path / "gone.tar"
    with pytest.raises(DataError, match=f"{missing} does not exist; check the URL or path, or re-run"):
        remote.read_bytes(missing)
    with pytest.raises(DataError, match="does not exist"):
        remote.read_ranges(missing, [0], [1])


@pytest.mark.parametrize(("err", "message"), [
    (PermissionError("Access Denied"), r"access to s3://b/k was refused \(Access Denied\); check the credentials"),
    (OSError("Connect timeout on endpoint URL"), "cannot reach s3://b/k .*; check the URL, the network and the "
                                                 "endpoint .*VANILLANET_IO_TIMEOUT"),
    (ValueError("truncated"), r"cannot read s3://b/k \(truncated\); check the URL or path and that the file is "
                              "complete"),
    (FileNotFoundError("NoSuchKey"), "s3://b/k does not exist"),
])
def test_failures_are_described_with_their_fix(err, message):
    assert "\n" not in remote.describe(err, "s3://b/k")
    with pytest.raises(DataError, match=message):
        raise DataError(remote.describe(err, "s3://b/k"))


def test_s3_round_trip_and_its_errors(s3_bucket, tmp_path):
    local = tmp_path / "x.bin"
    local.write_bytes(b"0123456789")
    url = remote.join(s3_bucket, "dir/x.bin")
    remote.upload(local, url)
    assert remote.read_bytes(url) == b"0123456789" and remote.size(url) == 10 and remote.exists(url)
    assert remote.read_ranges(url, [0, 7], [2, 10]) == [b"01", b"789"]
    missing = remote.join(s3_bucket, "nothing.bin")
    assert remote.size(missing) is None
    with pytest.raises(DataError, match=f"{missing} does not exist"):
        remote.read_bytes(missing)
    fs, path = remote.filesystem(url)
    assert path == url.removeprefix("s3://") and remote.filesystem(url)[0] is fs  # one per process and scheme

"""data/remote.py: reading by path or fsspec URL. Locations (scheme, join, parent), whole files, byte ranges and
sizes, locally and on a loopback S3 store; a server that accepts and never answers ends in a one-line error within
the timeout (never a hang), failures are described with their fix, local reads need no fsspec; shards
over HTTP (ranged reads) read as locally."""

from __future__ import annotations

import functools
import re
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import make_image_tree

from vanillanet.data import remote
from vanillanet.data.shard_writer import WriteSettings, write_shards
from vanillanet.data.shards import ShardDataset
from vanillanet.util.errors import DataError


@pytest.fixture
def silent_server():
    """A TCP server on the loopback that accepts connections and never sends a byte; its port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("scheme", ["http", "s3"])
def test_a_server_that_never_answers_is_a_one_line_error_within_the_timeout(silent_server, monkeypatch, scheme):
    pytest.importorskip("s3fs" if scheme == "s3" else "aiohttp")
    for name, value in {"VANILLANET_IO_TIMEOUT": "1", "VANILLANET_IO_RETRIES": "1", "AWS_ACCESS_KEY_ID": "AKIAX",
                        "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent_server}"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    remote._FILESYSTEMS.clear()
    url = f"http://127.0.0.1:{silent_server}/shards" if scheme == "http" else "s3://bucket/shards"
    started = time.monotonic()
    with pytest.raises(DataError, match=rf"cannot reach {url}/manifest.json .*VANILLANET_IO_TIMEOUT") as info:
        ShardDataset(url)
    assert time.monotonic() - started < 10 and "\n" not in str(info.value)  # one attempt of 1 s (plus set-up)
    remote._FILESYSTEMS.clear()


def test_failures_are_described_with_their_fix():
    where = "s3://b/k"
    assert "does not exist" in remote.describe(FileNotFoundError("k"), where)
    assert "create the bucket" in remote.describe(OSError("NoSuchBucket"), where, writing=True)
    assert "check the credentials" in remote.describe(PermissionError("An error occurred (AccessDenied)"), where)
    assert "check the credentials" in remote.describe(OSError("InvalidAccessKeyId"), where)
    assert "cannot reach" in remote.describe(ConnectionError("Could not connect to the endpoint URL"), where)
    # numbers and words inside the URL are not the error's: a bucket named vn-a0404403 is neither a 404 nor a 403
    odd = "s3://vn-a0404403-not found/k"
    refused = ConnectionError('Could not connect to the endpoint URL: "http://127.0.0.1:9/vn-a0404403/k"')
    assert remote.describe(refused, odd).startswith(f"cannot reach {odd}")
    assert remote.describe(OSError("Forbidden"), odd).startswith(f"access to {odd} was refused")
    assert remote.describe(ValueError("odd"), where).startswith("cannot read s3://b/k (odd)")


def test_local_paths_and_file_urls(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"0123456789")
    for where in (str(tmp_path / "a.bin"), f"file://{tmp_path / 'a.bin'}"):
        assert not remote.is_remote(where) and remote.size(where) == 10
        assert remote.read_ranges(where, [2, 5], [4, 9]) == [b"23", b"5678"]
    assert remote.size(tmp_path / "none") is None
    with pytest.raises(DataError, match="none does not exist"):
        remote.read_bytes(tmp_path / "none")
    assert remote.join("s3://b/dir/", "x.tar") == "s3://b/dir/x.tar" and remote.parent("s3://b/dir/m.json") == "s3://b/dir"


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


class RangeHandler(SimpleHTTPRequestHandler):
    """A static file server that answers ``Range: bytes=a-b`` with 206 (as nginx, S3 and CDNs do)."""

    def do_GET(self) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if match is None:
            return super().do_GET()
        data = open(self.translate_path(self.path), "rb").read()
        start, end = int(match[1]), min(int(match[2]), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start:end + 1])

    def log_message(self, *args) -> None:
        pass


def test_shards_over_http_read_as_locally(tmp_path, monkeypatch):
    pytest.importorskip("aiohttp")
    monkeypatch.setenv("VANILLANET_IO_TIMEOUT", "10")
    write_shards(str(make_image_tree(tmp_path / "src", train=4, val=2)), str(tmp_path / "out"),
                 WriteSettings(shard_size=5), progress=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote._FILESYSTEMS.clear()
        url = f"http://127.0.0.1:{server.server_address[1]}/out"
        local, web = ShardDataset(str(tmp_path / "out")), ShardDataset(url)
        assert len(web) == 12 and web.classes == local.classes
        assert web.raw_many(list(range(12))) == local.raw_many(list(range(12)))  # ranged reads, several shards
        (tmp_path / "out" / "train-000001.tar").unlink()
        with pytest.raises(DataError, match=f"{url}/train-000001.tar is listed in the manifest but missing"):
            ShardDataset(url)
    finally:
        server.shutdown()
        server.server_close()
        remote._FILESYSTEMS.clear()

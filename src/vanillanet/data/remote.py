"""Reading (and writing) files by local path or fsspec URL (``s3://``, ``gs://``, ``http(s)://``, ``file://``), with
timeouts, a bounded number of retries, and every failure turned into a one-line ``DataError`` naming the cause and
the fix (unreachable endpoint, refused credentials, missing object, missing fsspec driver).

Local paths (and ``file://`` URLs) are read with plain ``os`` calls and need nothing beyond the standard library;
URLs need the ``shards`` extra (``pip install 'vanillanet[shards]'``: fsspec and s3fs; ``gcsfs`` for ``gs://``,
``aiohttp`` for ``http(s)://``). S3 endpoints and credentials come from the usual AWS settings
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ...). The timeouts are
``VANILLANET_IO_TIMEOUT`` seconds (default 60) per request and ``VANILLANET_IO_RETRIES`` attempts (default 3).

A filesystem object is made once per process (DataLoader workers get their own after the fork), so the async
clients of s3fs/gcsfs are never shared across processes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..util.errors import DataError, first_line

REMOTE_SCHEMES = ("s3", "gs", "gcs", "http", "https")

_DRIVERS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}

_FILESYSTEMS: dict[tuple[int, str], Any] = {}


def scheme(location: str | Path) -> str:
    """The URL scheme of ``location`` ('' for a plain path)."""
    text = str(location)
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isalnum() else ""


def is_remote(location: str | Path) -> bool:
    """True for an fsspec URL this package reads remotely (s3, gs, http(s))."""
    return scheme(location) in REMOTE_SCHEMES


def is_url(location: str | Path) -> bool:
    """True for any URL this package reads (remote ones and ``file://``)."""
    return scheme(location) in (*REMOTE_SCHEMES, "file")


def local_path(location: str | Path) -> Path:
    """``location`` as a local path (``file://`` stripped)."""
    text = str(location)
    return Path(text[len("file://"):]) if scheme(text) == "file" else Path(text)


def join(base: str | Path, name: str) -> str:
    """``name`` inside the folder ``base`` (a path or a URL)."""
    text = str(base)
    return f"{text.rstrip('/')}/{name}" if is_remote(text) else str(local_path(text) / name)


def parent(location: str | Path) -> str:
    """The folder holding ``location`` (a path or a URL)."""
    text = str(location)
    return text.rstrip("/").rsplit("/", 1)[0] if is_remote(text) else str(local_path(text).parent)


def timeout() -> float:
    """Seconds a remote request may take (``VANILLANET_IO_TIMEOUT``, default 60)."""
    return float(os.environ.get("VANILLANET_IO_TIMEOUT", "60"))


def retries() -> int:
    """Attempts per remote request (``VANILLANET_IO_RETRIES``, default 3)."""
    return max(1, int(os.environ.get("VANILLANET_IO_RETRIES", "3")))


def _storage_options(proto: str) -> dict[str, Any]:
    t = timeout()
    if proto == "s3":
        # s3fs retries each call itself (``fs.retries``, set in ``filesystem``, with backoff, SlowDown included);
        # botocore's own retries would multiply the attempts
        opts: dict[str, Any] = {"config_kwargs": {"connect_timeout": t, "read_timeout": t,
                                                  "retries": {"max_attempts": 1, "mode": "standard"}}}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        return opts
    if proto in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, connect=t, sock_read=t)}}
    if proto in ("gs", "gcs"):
        return {"timeout": t, "retries": retries()}
    return {}


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a remote URL; one filesystem per process and scheme."""
    proto = scheme(url)
    try:
        import fsspec
    except ImportError:
        raise DataError(f"reading {url} needs fsspec: pip install 'vanillanet[shards]'") from None
    key = (os.getpid(), proto)
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        try:
            fs = fsspec.filesystem(proto, skip_instance_cache=True, **_storage_options(proto))
        except ImportError:
            raise DataError(f"reading {proto}:// URLs needs {_DRIVERS.get(proto, 'its fsspec driver')}: pip "
                            f"install 'vanillanet[shards]' {_DRIVERS.get(proto, '')}".rstrip()) from None
        if proto == "s3":
            fs.retries = retries()  # s3fs's class default is 5 attempts of up to VANILLANET_IO_TIMEOUT each
        _FILESYSTEMS[key] = fs
    return fs, fs._strip_protocol(url) if proto not in ("http", "https") else url


def describe(err: BaseException, location: str, *, writing: bool = False) -> str:
    """Why reading (``writing``: writing) ``location`` failed, and the fix, in one line."""
    text = first_line(err, 300)
    # the words of the error without its URLs and paths: a bucket named vn-a04044... must not read as an HTTP 404
    low = re.sub(r"\S*[/\\]\S*", " ", f"{type(err).__name__} {text}".replace(str(location), " ")).lower()
    missing = isinstance(err, FileNotFoundError) or any(w in low for w in ("nosuchkey", "nosuchbucket", "not found",
                                                                           "404"))
    if missing and writing:
        return (f"cannot write {location}: its bucket or folder does not exist ({text}); create the bucket, or "
                "check the URL")
    if missing:
        return f"{location} does not exist; check the URL or path, or re-run `vanillanet shards` to write it"
    if any(w in low for w in ("accessdenied", "access denied", "forbidden", "403", "invalidaccesskeyid",
                              "signaturedoesnotmatch", "nocredentials", "unable to locate credentials",
                              "permission", "credentials")):
        return (f"access to {location} was refused ({text}); check the credentials (AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://)")
    if any(w in low for w in ("connect", "timeout", "timed out", "unreachable", "name or service",
                              "temporary failure", "refused", "endpoint")):
        return (f"cannot reach {location} ({text}); check the URL, the network and the endpoint (AWS_ENDPOINT_URL "
                "for S3-compatible stores); the timeout is VANILLANET_IO_TIMEOUT seconds")
    return f"cannot read {location} ({text}); check the URL or path and that the file is complete"


def _remote_call(location: str, call: Any, *, writing: bool = False) -> Any:
    try:
        return call()
    except DataError:
        raise
    except Exception as err:  # every driver has its own exception types: all end in one line
        raise DataError(describe(err, location, writing=writing)) from None


def read_bytes(location: str | Path) -> bytes:
    """The whole file at ``location``."""
    text = str(location)
    if not is_remote(text):
        try:
            return local_path(text).read_bytes()
        except OSError as err:
            raise DataError(describe(err, text)) from None
    fs, path = filesystem(text)
    return _remote_call(text, lambda: fs.cat_file(path))


def read_ranges(location: str | Path, starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """The byte ranges ``[start, end)`` of one file, fetched concurrently for a URL (one request each)."""
    text = str(location)
    if not is_remote(text):
        try:
            fd = os.open(local_path(text), os.O_RDONLY)
        except OSError as err:
            raise DataError(describe(err, text)) from None
        try:
            return [os.pread(fd, e - s, s) for s, e in zip(starts, ends)]
        finally:
            os.close(fd)
    fs, path = filesystem(text)
    out = _remote_call(text, lambda: fs.cat_ranges([path] * len(starts), list(starts), list(ends),
                                                    on_error="raise"))
    bad = next((o for o in out if isinstance(o, BaseException)), None)
    if bad is not None:
        raise DataError(describe(bad, text))
    return out


def size(location: str | Path) -> int | None:
    """The size in bytes of ``location``, or None if it does not exist."""
    text = str(location)
    if not is_remote(text):
        p = local_path(text)
        return p.stat().st_size if p.is_file() else None
    fs, path = filesystem(text)
    try:
        return int(fs.info(path)["size"])
    except FileNotFoundError:
        return None
    except Exception as err:
        raise DataError(describe(err, text)) from None


def upload(local: Path, url: str) -> None:
    """Copy the finished local file ``local`` to ``url`` (an object appears whole or not at all)."""
    fs, path = filesystem(url)
    _remote_call(url, lambda: fs.put_file(str(local), path), writing=True)


def exists(location: str | Path) -> bool:
    """True if ``location`` is an existing file."""
    return size(location) is not None

"""util/safe_open.py: special files refused with what they are, no symbolic link followed where we write, and the
readers that use it (checkpoints, predict's inputs, images, the output writers)."""

from __future__ import annotations

import os
import socket
import threading

import pytest
import torch

from vanillanet.data.images import open_image
from vanillanet.model.checkpoint_files import load_checkpoint_file, read_training_checkpoint
from vanillanet.predict import collect_images
from vanillanet.util.errors import CheckpointError, ConfigError, DataError, OutputError
from vanillanet.util.fileio import append_line, write_text
from vanillanet.util.safe_open import open_output, read_head, read_text, special_kind


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.pth"
    os.mkfifo(path)
    return path


def _in_time(fn, seconds=10.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) when it blocks."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 (handed to the test)
            out["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked on a special file"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_special_kind_names_each_kind(tmp_path, fifo):
    sock_path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    try:
        assert special_kind(fifo) == "a FIFO (named pipe)"
        assert special_kind("/dev/zero") == "a character device"
        assert special_kind(sock_path) == "a socket"
        assert special_kind(tmp_path) is None and special_kind(tmp_path / "missing") is None
        (tmp_path / "f").write_text("x")
        assert special_kind(tmp_path / "f") is None
    finally:
        s.close()


def test_readers_refuse_special_files_without_blocking(tmp_path, fifo):
    with pytest.raises(CheckpointError, match=r"is a FIFO \(named pipe\), not a regular file"):
        _in_time(lambda: read_head(fifo, 16, "checkpoint", CheckpointError))
    with pytest.raises(DataError, match="is a character device, not a regular file"):
        read_text("/dev/zero", "the labels", DataError)
    (tmp_path / "ok.txt").write_text("hello")
    assert read_text(tmp_path / "ok.txt", "x", DataError) == "hello"
    assert read_head(tmp_path / "ok.txt", 2, "x", DataError) == b"he"


def test_a_fifo_or_device_as_checkpoint_is_named_not_blocked_on(fifo):
    with pytest.raises(CheckpointError, match=r"checkpoint .*pipe.pth is a FIFO \(named pipe\)"):
        _in_time(lambda: load_checkpoint_file(fifo))
    with pytest.raises(CheckpointError, match="checkpoint /dev/zero is a character device"):
        _in_time(lambda: load_checkpoint_file("/dev/zero"))
    with pytest.raises(CheckpointError, match="is a FIFO"):
        _in_time(lambda: read_training_checkpoint(fifo))


def test_predict_names_special_inputs_and_images_refuse_them(fifo):
    files, errors = collect_images([fifo, "/dev/zero", fifo.parent / "missing.png"])
    assert files == []
    assert [e.error.split(",")[0] for e in errors] == ["a FIFO (named pipe)", "a character device",
                                                        "no such file or folder"]
    with pytest.raises(ValueError, match="is a FIFO"):
        _in_time(lambda: open_image(fifo, "RGB"))


def test_output_writers_follow_no_planted_link_and_refuse_special_files(tmp_path, fifo):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "metrics.jsonl"
    link.symlink_to(victim)
    with pytest.raises(OutputError, match="is a symbolic link: refusing to follow it"):
        append_line(link, '{"a": 1}')
    assert victim.read_text() == "precious\n"
    with pytest.raises(OutputError, match=r"the log .*pipe.pth is a FIFO"):
        _in_time(lambda: append_line(fifo, "x"))
    with pytest.raises(OutputError, match=r"the output .*pipe.pth is a FIFO"):
        write_text(fifo, "x")
    with pytest.raises(ConfigError, match="the lock file .* is a character device"):
        open_output("/dev/null", os.O_RDWR, "the lock file", ConfigError)
    fd = open_output(tmp_path / "new.log", os.O_WRONLY | os.O_CREAT, "the log")
    os.close(fd)
    assert (tmp_path / "new.log").stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_a_regular_checkpoint_still_loads_through_a_link_the_user_chose(tmp_path):
    from conftest import build_variant

    from vanillanet.model.checkpoint_files import save_weights

    model = build_variant("vanillanet_5", deploy=True)
    save_weights(model, tmp_path / "w.pth")
    (tmp_path / "link.pth").symlink_to(tmp_path / "w.pth")
    loaded = load_checkpoint_file(tmp_path / "link.pth")["state_dict"]
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())

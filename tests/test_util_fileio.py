"""``util.fileio``: atomic writes keep the old file on failure."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from vanillanet.util.errors import OutputError
from vanillanet.util.fileio import save_atomic


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_atomic({"epoch": 1}, path)

    def broken_save(obj, f):
        open(f, "wb").write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match=r"cannot write .*ckpt.pth \(No space left on device\); nothing was written"):
        save_atomic({"epoch": 2}, path)
    assert os.listdir(tmp_path) == ["ckpt.pth"]
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_outputs_are_checked_before_any_work(tmp_path):
    """check_output_file / check_output_folder: the causes a write would fail for, found before the first byte."""
    import re

    from vanillanet.util.errors import ConfigError
    from vanillanet.util.fileio import check_output_file, check_output_folder

    (tmp_path / "f").write_text("x")
    assert check_output_file(tmp_path / "new" / "deeper" / "m.onnx", "--output", (".onnx",)).name == "m.onnx"
    assert check_output_folder(tmp_path / "new" / "deeper", "--output") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    cases = [
        (lambda: check_output_file(tmp_path, "--json"), f"--json {tmp_path} is a folder; give a file name"),
        (lambda: check_output_file(f"{tmp_path}/out/", "--json"), "out/ is a folder; give a file name"),
        (lambda: check_output_file(tmp_path / "x.pth", "--output", (".onnx",)),
         "x.pth must end in .onnx (it says what the file holds); e.g. x.onnx"),
        (lambda: check_output_file(tmp_path / "f" / "x.json", "--json"),
         f"--json: a file is in the way of the folder {tmp_path / 'f'} ({tmp_path / 'f'} is a file)"),
        (lambda: check_output_folder(tmp_path / "f", "--results"), "--results .*f is a file, not a folder"),
        (lambda: check_output_folder(tmp_path / "f" / "sub", "--output"), "a file is in the way of the folder"),
    ]
    for call, message in cases:
        with pytest.raises(OutputError, match=message if ".*" in message else re.escape(message)):
            call()
    with pytest.raises(ConfigError, match="must end in .onnx"):  # a Python API's argument: a ValueError
        check_output_file(tmp_path / "x.pth", "output", (".onnx",), error=ConfigError)
    if os.geteuid() != 0:  # root may write anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(OutputError, match="is not writable; choose a writable path"):
            check_output_file(tmp_path / "ro" / "x.json", "--json")

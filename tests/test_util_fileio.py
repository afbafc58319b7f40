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

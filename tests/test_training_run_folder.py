"""training/run_folder.py's lock: no symbolic link followed, a special file named, released by its holder, never
kept alive by a forked data-loading worker after the holder is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vanillanet.training.run_folder import RunFolder
from vanillanet.util.errors import ConfigError


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    with pytest.raises(ConfigError, match="the lock file .*.lock is a symbolic link: refusing to follow it"):
        with RunFolder(out).lock():
            pass
    assert victim.read_text() == "precious\n"


def test_a_fifo_as_lock_is_one_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / ".lock")
    with pytest.raises(ConfigError, match=r"the lock file .*.lock is a FIFO \(named pipe\), not a regular file"):
        with RunFolder(out).lock():
            pass


def test_the_holder_releases_the_lock_and_a_second_holder_is_refused(tmp_path):
    folder = RunFolder(tmp_path / "out")
    with folder.lock():
        assert f"pid {os.getpid()}" in (tmp_path / "out" / ".lock").read_text()
        with pytest.raises(ConfigError, match=r"in use by another training run \(pid"):
            with RunFolder(tmp_path / "out").lock():
                pass
    assert not (tmp_path / "out" / ".lock").exists()
    with RunFolder(tmp_path / "out").lock():  # released: taken again at once
        pass


def test_a_forked_child_does_not_inherit_the_lock(tmp_path):
    folder = RunFolder(tmp_path / "out")
    with folder.lock():
        fd = folder._lock_fd
        pid = os.fork()
        if pid == 0:  # the child: its copy of the lock descriptor is closed already
            try:
                os.fstat(fd)
                os._exit(1)
            except OSError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with pytest.raises(ConfigError, match="in use by another training run"):  # the parent still holds it
            with RunFolder(tmp_path / "out").lock():
                pass


_HOLDER = textwrap.dedent("""
    import sys, time, torch
    from torch.utils.data import DataLoader, Dataset
    from vanillanet.training.run_folder import RunFolder

    class Slow(Dataset):
        def __len__(self):
            return 10_000
        def __getitem__(self, i):
            time.sleep(0.05)
            return torch.zeros(1)

    with RunFolder(sys.argv[1]).lock():
        loader = iter(DataLoader(Slow(), batch_size=1, num_workers=2, multiprocessing_context="fork"))
        next(loader)
        print("ready", flush=True)
        time.sleep(120)
""")


def test_kill_9_with_workers_running_lets_an_immediate_rerun_in(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        workers = subprocess.run(["pgrep", "-P", str(holder.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) >= 2  # the data-loading workers are running
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        alive = [w for w in workers if os.path.exists(f"/proc/{w}")]
        assert alive, "the workers outlive their killed parent for a while (that is the case tested)"
        start = time.monotonic()
        with RunFolder(out).lock():  # accepted at once, although the orphaned workers still run
            pass
        assert time.monotonic() - start < 1.0
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()

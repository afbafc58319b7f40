"""The training loop under faults: a full disk (with data workers alive), exceptions in the loop, divergence of
the weights and of the EMA, two runs into one folder, a finished run without checkpoints, a partial metrics line,
temporaries of killed writes, truncated and altered checkpoints, changed settings on resume, and the resume soak.

Each test reproduces a case of docs/faults.md. Tiny widths, synthetic data, one thread: the runs take seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_flags, tiny_sets

import vanillanet  # noqa: F401
from vanillanet import cli
from vanillanet.train import train
from vanillanet.training.builders import build_optimizer, build_scheduler
from vanillanet.training.checkpointing import Checkpointing
from vanillanet.training.config import resolve_config
from vanillanet.training.run_folder import RunFolder
from vanillanet.util.errors import NonFiniteLossError, OutputError
from vanillanet.util.integrity import digest, unsound

ROOT = Path(__file__).resolve().parents[1]
# conftest's tiny run (16 images, batch 4: 4 steps per epoch, 2 epochs; mixup/cutmix, LAMB and the EMA on) with
# dropout.
BASE = tiny_sets(drop_rate=0.2)
FLAGS = [*tiny_flags(workers=None, log_every=None), "--threads", "1"]
TIMING = ("seconds", "img_per_s")


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(out: Path, *extra: str):
    return resolve_config(None, {}, [*BASE, f"output={out}", *extra])


def straight_config(out: Path):
    """The run conftest's ``straight`` fixture trains once."""
    return cfg(out)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def state_of(path: Path) -> dict:
    """What an exact resume must reproduce, as digests."""
    ckpt = load(path)
    return dict(model=digest(ckpt["model"]), ema=digest(ckpt["model_ema"]), opt=digest(ckpt["optimizer"]["state"]),
                position=(ckpt["step"], ckpt["epoch"], ckpt["act_learn"]))


def rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


# ---- case 1: a full disk, and any exception in the loop, end the run (data workers included) ---------------------
DRIVER = """
import errno, sys, torch, vanillanet.train as t
fault = sys.argv[1]
if fault == "enospc":
    def full(obj, f, *a, **k):
        open(f, "wb").write(b"PK\\x03\\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")
    torch.save = full
else:
    def bug(*a, **k):
        raise RuntimeError("injected fault")
    t.end_epoch = bug
if fault == "api":  # the exception escapes to the interpreter, as in a user's script
    from vanillanet.training.config import config_from_args
    from vanillanet.cli import build_parser
    t.train(config_from_args(build_parser("train").parse_args(sys.argv[2:])))
from vanillanet.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("fault", ["enospc", "bug", "api"])
def test_a_fault_in_the_loop_with_workers_ends_in_one_line(tmp_path, fault):
    """Persistent data workers ignore SIGTERM (the main process handles it); an exception that reached the
    interpreter's exit with them alive used to hang it, waiting for them. Now the run ends: one line and exit 2
    from the CLI, the usual traceback from the Python API, and no worker left behind."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, fault, "train", *FLAGS, "--workers", "2", "--output",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)  # the bug this guards against was a hang
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    with pytest.raises(ProcessLookupError, match="No such process"):  # no data worker outlives the run
        os.killpg(proc.pid, 0)
    if fault == "api":
        assert proc.returncode == 1 and err.rstrip().endswith("RuntimeError: injected fault"), err[-3000:]
        return
    assert proc.returncode == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vanillanet train: error: "), err[-3000:]
    assert not list(out.glob(".*.tmp")) and not list(out.glob("checkpoint-*"))
    if fault == "enospc":
        assert f"cannot write {out / 'checkpoint-00000004.pth'} (No space left on device)" in lines[0]
    else:
        assert "RuntimeError: injected fault (full traceback: " in lines[0]
        log = Path(lines[0].split("full traceback: ")[1].rstrip(")"))
        assert log.parent == out and "Traceback" in log.read_text() and "injected fault" in log.read_text()


def test_a_real_full_disk(tmp_path):
    """A 1 MB tmpfs (needs root): torch.save reports ENOSPC as a RuntimeError about stream positions."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    try:
        with pytest.raises(OutputError, match=r"No space left on device.*training stopped at step 4") as info:
            train(cfg(mnt / "run"))
        assert "\n" not in str(info.value)
        assert not list((mnt / "run").glob(".*.tmp")) and not list((mnt / "run").glob("checkpoint-*"))
        del info
        # no file stays open: the failed writer was released with the error (else "target is busy")
        assert subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---- case 2: divergence keeps the last verified checkpoint; a changed lr takes effect on resume ------------------
def test_divergence_sets_aside_the_checkpoint_that_gave_it(tmp_path, capsys):
    out = tmp_path / "run"
    sgd = ["opt=sgd", "lr_base_scale=none", "warmup_epochs=0", "checkpoint_every=1"]
    with pytest.raises(NonFiniteLossError, match="^loss is nan at step") as info:
        train(cfg(out, *sgd, "lr=1e6"))
    msg = str(info.value)
    step = int(msg.split("at step ")[1].split()[0])
    assert msg.startswith(f"loss is nan at step {step}") and "\n" not in msg
    good = out / f"checkpoint-{step - 2:08d}.pth"
    assert f"renamed diverged-{step - 1:08d}.pth" in msg and f"last good checkpoint: {good}" in msg
    assert (out / f"diverged-{step - 1:08d}.pth").is_file() and sorted(out.glob("checkpoint-*")) == [good]
    assert not unsound(("", load(good)["model"]))
    # following the advice: --resume auto starts from the verified checkpoint, with the new lr
    capsys.readouterr()
    try:
        result = train(cfg(out, *sgd, "lr=0.01", "resume=auto"))
    except NonFiniteLossError as err:  # the weights of that step may be beyond repair: still one line, exit 2
        assert "\n" not in str(err)
        result = None
    log = capsys.readouterr().out
    assert f"resumed from {good}" in log and "lr 1000000.0 -> 0.01" in log
    assert all(r["lr"] <= 0.01 for r in rows(out) if r["step"] > step - 2)
    for path in [*out.glob("checkpoint-*.pth"), *out.glob("*.safetensors")]:  # nothing unsound was written
        assert not unsound(("", load(path)["model"] if path.suffix == ".pth" else {}))
    assert result is None or result["status"] == "completed"


def test_resume_follows_the_new_schedule_settings(tmp_path, capsys):
    out = tmp_path / "run"

    def stop_at_3(info):
        if info["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train(cfg(out, "opt=adamw", "weight_decay=0.05"), on_step=stop_at_3)["status"] == "interrupted"
    new = cfg(out, "opt=adamw", "weight_decay=0.05", "lr=0.02", "min_lr=0.001", "warmup_epochs=0",
              "resume=auto")
    capsys.readouterr()
    train(new)
    assert "lr 0.0035 -> 0.02, min_lr 1e-06 -> 0.001, warmup_epochs 1.0 -> 0.0" in capsys.readouterr().out
    # the lr of every step after the resume is the new schedule's (a fresh optimizer and scheduler at that step)
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, new.optim, 0.02 * (4 / 1024) ** 0.5)
    sched = build_scheduler(opt, new.optim, 4, 2)
    logged = {r["step"]: r["lr"] for r in rows(out) if r["type"] == "step"}
    for step in range(5, 9):  # step 4's row was logged before the interruption
        sched.step_update(step)
        assert logged[step] == max(g["lr"] for g in opt.param_groups), step
    assert load(out / "checkpoint-00000008.pth")["optimizer"]["param_groups"][0]["initial_lr"] == opt.param_groups[
        0]["initial_lr"]


# ---- case 3: a diverging EMA is an error naming it, and nothing is written --------------------------------------
def test_a_diverging_ema_stops_the_run_naming_it(tmp_path, monkeypatch):
    from timm.utils import ModelEmaV3

    monkeypatch.setattr(ModelEmaV3, "get_decay", lambda self, step=None: 1e9)  # what a decay > 1 does, faster
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="the EMA weights became unusable by step 4 .*model_ema_decay") as info:
        train(cfg(out, "checkpoint_every=2"))
    assert "\n" not in str(info.value) and "model's are fine" in str(info.value)
    assert not (out / "model_deploy.safetensors").exists() and not (out / "summary.json").exists()
    kept = sorted(out.glob("checkpoint-*.pth"))
    assert [p.name for p in kept] == ["checkpoint-00000002.pth"]
    assert not unsound(("", load(kept[0])["model_ema"]))
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))


def test_model_ema_decay_above_one_is_refused(tmp_path, capsys):
    assert cli.main(["train", *FLAGS, "--model-ema-decay", "2", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "vanillanet train: error: model_ema_decay must be less than 1, got 2.0\n"


# ---- case 4: one run at a time ------------------------------------------------------------------------------------
def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from vanillanet.training.run_folder import RunFolder\n"
                               "with RunFolder(sys.argv[1]).lock():\n    print('locked', flush=True)\n"
                               "    time.sleep(300)\n", str(out)], stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--resume", "auto"]):
            assert cli.main(["train", *FLAGS, "--workers", "0", "--output", str(out), *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"{out} is in use by another training run (pid {holder.pid} on " in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of the refused runs
    finally:
        holder.kill()
        holder.wait()
    with RunFolder(out).lock():  # the kernel released the dead owner's lock
        pass


# ---- case 5: a finished run is never overwritten, with or without its checkpoints -------------------------------
def test_a_finished_run_without_checkpoints_is_kept(tmp_path, straight, capsys):
    out = tmp_path / "done"
    shutil.copytree(straight[0], out)
    for p in out.glob("checkpoint-*.pth"):
        p.unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra, msg in (([], "already holds a run"), (["--resume", "auto"], "without a checkpoint to resume")):
        assert cli.main(["train", *FLAGS, "--workers", "0", "--output", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---- cases 8, 9 and 12: partial metrics line, stale temporaries, damaged newest checkpoints ----------------------
def _flip_a_tensor_byte(path: Path) -> None:
    """Overwrite one byte inside the largest tensor record of a torch zip file (which torch would load silently)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + name_len + extra_len + info.file_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_resume_after_partial_metrics_stale_temporaries_and_damaged_checkpoints(tmp_path, straight, capsys):
    out = tmp_path / "run"

    def stop_at_6(info):
        if info["step"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    res = train(cfg(out, "checkpoint_every=1", "keep_last=4"), on_step=stop_at_6)
    assert res["status"] == "interrupted" and res["checkpoint"] == str(out / "checkpoint-00000007.pth")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-0000000{s}.pth" for s in (4, 5, 6, 7)]
    first_part = load(out / "checkpoint-00000005.pth")["seconds"]
    newest = out / "checkpoint-00000007.pth"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    _flip_a_tensor_byte(out / "checkpoint-00000006.pth")  # bit rot inside a tensor
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"type": "step", "step": 8, "lo')  # a crash during an append
    live = os.getppid()  # a PID in use by another process: the lock proves the temporary is stale anyway
    stale = [out / f".checkpoint-00000008.pth.{pid}.0badf00d.tmp" for pid in (live, 4_000_000)]
    for p in stale:
        p.write_bytes(b"PK\x03\x04 half")
    capsys.readouterr()
    summary = train(cfg(out, "checkpoint_every=1", "keep_last=4", "resume=auto"))
    log = capsys.readouterr().out
    assert all(f"removed {p.name}, left by an interrupted write" in log for p in stale)
    assert "skipping checkpoint-00000007.pth: checkpoint" in log and "truncated or corrupt" in log
    assert "skipping checkpoint-00000006.pth: checkpoint" in log and "does not match the SHA-256 digest" in log
    assert f"resumed from {out / 'checkpoint-00000005.pth'}: epoch 1, batch 1, step 5" in log
    assert not list(out.glob(".*.tmp"))
    # bit-exact: weights, EMA, optimizer, every metrics row (the interrupted epoch's train_loss included)
    assert state_of(out / "checkpoint-00000008.pth") == state_of(straight[0] / "checkpoint-00000008.pth")
    assert rows(out) == rows(straight[0])
    assert summary["test_top1"] == straight[1]["test_top1"] and summary["best_epoch"] == straight[1]["best_epoch"]
    assert summary["seconds"] > first_part  # the time before the interruption counts


def test_a_stop_at_the_last_batch_still_evaluates_that_epoch(tmp_path, straight):
    """SIGTERM at an epoch's last step saves before the epoch's evaluation; the resume evaluates it first."""
    out = tmp_path / "run"

    def stop_at_3(info):
        if info["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train(cfg(out), on_step=stop_at_3)["checkpoint"] == str(out / "checkpoint-00000004.pth")
    assert load(out / "checkpoint-00000004.pth")["epoch_done"] is False
    train(cfg(out, "resume=auto"))
    assert rows(out) == rows(straight[0]) and state_of(out / "best.pth") == state_of(straight[0] / "best.pth")
    assert state_of(out / "checkpoint-00000008.pth") == state_of(straight[0] / "checkpoint-00000008.pth")


def test_a_kill_between_an_epochs_metrics_row_and_its_checkpoint(tmp_path, straight, monkeypatch):
    """Found by the soak: the epoch's row was logged and the step checkpoint of its last batch written, but not the
    epoch-end checkpoint; the resume evaluates the epoch again and must not log its row twice."""
    real = Checkpointing.save

    def killed_before_the_epoch_checkpoint(self, state, epoch, batch, epoch_done=False):
        if epoch_done:
            raise KeyboardInterrupt  # the process dies here
        return real(self, state, epoch, batch, epoch_done)

    out = tmp_path / "run"
    monkeypatch.setattr(Checkpointing, "save", killed_before_the_epoch_checkpoint)
    with pytest.raises(KeyboardInterrupt, match="^$"):  # raised bare, as a kill
        train(cfg(out, "checkpoint_every=1"))
    monkeypatch.undo()
    assert [r["type"] for r in rows(out)][-2:] == ["step", "epoch"]
    assert load(out / "checkpoint-00000004.pth")["epoch_done"] is False
    train(cfg(out, "checkpoint_every=1", "resume=auto"))
    assert rows(out) == rows(straight[0])
    assert state_of(out / "checkpoint-00000008.pth") == state_of(straight[0] / "checkpoint-00000008.pth")


# ---- the soak: random kills, bit-exact resumes ------------------------------------------------------------------
@pytest.mark.slow
def test_soak_script_survives_a_kill(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak_resume.py"), "--trials", "2", "--max-kills",
                          "2", "--quick", "--json", str(tmp_path / "soak.json"), "--workdir", str(tmp_path / "w")],
                         capture_output=True, text=True, env=env(), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    stats = json.loads((tmp_path / "soak.json").read_text())
    assert stats["kills"] >= 1 and stats["bit_exact"] == stats["trials"] == 2 and not stats["failures"]

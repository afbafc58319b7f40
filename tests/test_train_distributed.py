"""DDP on the CPU: two processes under torchrun (gloo) train in lock-step and end with bit-identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import tiny_flags

from vanillanet.util.integrity import state_hash

VENV_BIN = Path(sys.executable).parent


def test_torchrun_two_processes_hold_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    cmd = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--standalone", "-m", "vanillanet", "train",
           *tiny_flags(synthetic_size=64, batch_size=8, drop_rate=0.2, seed=None, log_every=None),
           "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8  # 64 images / (2 x 8) per step x 2 epochs
    # every rank hashed all of its weights and buffers (live model + EMA) after training; rank 0 gathered them
    hashes = summary["rank_weight_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1] and summary["ranks_in_sync"]
    # ... and the hash is that of the saved final checkpoint: the ranks hold exactly what was written
    ckpt = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert state_hash(ckpt["model"], ckpt["model_ema"]) == hashes[0]
    assert len(ckpt["rng"]) == 2  # one RNG state per process
    assert summary["deploy_agreement"] == 1.0
    assert res.stdout.count("epoch 2/2") == 1  # only rank 0 logs


def test_sync_bn_on_cpu_is_a_one_line_error(tmp_path):
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "vanillanet", "train",
           *tiny_flags(synthetic_size=32, batch_size=8, img_size=None, progress=None, seed=None, log_every=None),
           "--sync-bn", "--output", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode != 0
    assert "sync_bn needs CUDA devices" in res.stderr

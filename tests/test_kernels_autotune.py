"""``kernels.autotune``: launch configurations round-trip and chosen configurations are cached."""

from __future__ import annotations

import torch
from conftest import (
    kernel_device,
)

DEV = kernel_device()  # skips without Triton; cpu in Triton's interpreter, else cuda

from vanillanet.kernels import autotune  # noqa: E402
from vanillanet.kernels.autotune import Config  # noqa: E402


def test_config_round_trip_and_cached_choices(monkeypatch):
    cfg = Config.make(num_warps=8, num_stages=3, TH=4, TW=8, BC=64)
    assert Config.from_json(cfg.to_json()) == cfg and cfg["BC"] == 64
    assert cfg.launch_kwargs() == {"TH": 4, "TW": 8, "BC": 64, "num_warps": 8, "num_stages": 3}
    runs = []
    cands = [Config.make(BC=16), Config.make(BC=32)]
    # off CUDA nothing is timed: the first candidate, not remembered
    assert autotune.pick("test-key", cands, runs.append, torch.device("cpu")) == cands[0] and not runs
    monkeypatch.setitem(autotune._CHOICES, "test-key", cands[1])
    assert autotune.pick("test-key", cands, runs.append, torch.device("cpu")) == cands[1]
    # a remembered choice that is not among the candidates (e.g. a forced plan) is ignored
    assert autotune.pick("test-key", ["gemm"], runs.append, torch.device("cpu")) == "gemm" and not runs
    assert autotune.cache_key("act", 2, torch.float16, True) == "act|2|float16|True"

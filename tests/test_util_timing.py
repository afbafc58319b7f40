"""Side-by-side timing: rounds interleave the functions, each round after one untimed settling call."""

from __future__ import annotations

import torch

from vanillanet.util.timing import time_interleaved


def test_rounds_interleave_the_functions_after_a_settling_call():
    calls: list[str] = []
    fns = [lambda x, n=name: calls.append(n) for name in ("a", "b", "c")]
    rounds, counts = time_interleaved(fns, [None] * 3, torch.device("cpu"), repeats=3, iters=2, warmup=1)
    assert counts == [2, 2, 2] and [len(r) for r in rounds] == [3, 3, 3]
    assert all(t >= 0 for r in rounds for t in r)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, one call each
    timed = calls[3:]  # per round and function: one settling call, then the 2 timed calls
    assert timed == [n for _ in range(3) for n in ("a", "b", "c") for _ in range(3)]

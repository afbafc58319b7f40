"""Timing that holds up on shared machines: warm-up, rounds sized to a target duration, rounds interleaved across
the things compared (so load from other processes hits each alike), medians. Used by ``fast_inference``'s
``backend="auto"``, ``vanillanet bench`` and ``vanillanet quantize``. CUDA work is timed with CUDA events.

Each round starts with one untimed call: a function that follows another one finds the cores still busy with the
previous runtime's spinning threads (torch's OpenMP pool, onnxruntime's pool) for a few milliseconds, which would
otherwise be charged to whichever function comes next."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["round_ms", "sync", "time_interleaved"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_ms(fn: Callable[[Any], Any], x: Any, device: torch.device, iters: int, sync_each: bool = False) -> float:
    """Mean milliseconds per call of ``fn(x)`` over ``iters`` calls (``sync_each``: wait for the device after every
    call, as the paper's latency protocol does)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn(x)
            if sync_each:
                torch.cuda.synchronize(device)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return (time.perf_counter() - t0) * 1e3 / iters


def time_interleaved(fns: Sequence[Callable[[Any], Any]], inputs: Sequence[Any], device: torch.device, *,
                     repeats: int = 5, iters: int | Sequence[int] | None = None, round_s: float = 0.5,
                     warmup: int = 2, sync_each: Sequence[bool] | None = None) -> tuple[list[list[float]], list[int]]:
    """Per function, the mean ms per call of each of ``repeats`` rounds, the rounds interleaved across functions
    (each round after one untimed call); and the calls per round used (``iters``, or sized so that one round takes
    about ``round_s`` seconds, at most 200 calls)."""
    sync_each = list(sync_each) if sync_each is not None else [False] * len(fns)
    counts: list[int] = []
    for k, (fn, x) in enumerate(zip(fns, inputs)):
        for _ in range(warmup):
            fn(x)
        sync(device)
        if iters is None:
            single = round_ms(fn, x, device, 1, sync_each[k])
            counts.append(max(1, min(200, round(round_s * 1e3 / max(single, 1e-3)))))
        else:
            counts.append(iters if isinstance(iters, int) else iters[k])
    rounds: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, (fn, x) in enumerate(zip(fns, inputs)):
            fn(x)  # settle: absorb the previous function's spinning threads
            sync(device)
            rounds[k].append(round_ms(fn, x, device, counts[k], sync_each[k]))
    return rounds, counts

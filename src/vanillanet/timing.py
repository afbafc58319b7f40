"""Side-by-side timing of callables on a shared, noisy machine: interleaved rounds and medians.

One candidate timed after another sees different load from other processes; timing them round by round (A, B,
C, A, B, C, ...) lets load hit every candidate alike, and the median over rounds ignores the odd slow round. Each
round starts with one untimed call, because a candidate that follows another one finds the cores busy with the
previous runtime's spinning threads (OpenMP, onnxruntime) for a few milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

__all__ = ["interleaved_ms", "pick_fastest"]


def interleaved_ms(fns: Mapping[str, Callable[[], object]], *, rounds: int = 5, round_s: float = 0.25,
                   iters: int | None = None, warmup: int = 2, sync: Callable[[], None] | None = None
                   ) -> dict[str, list[float]]:
    """Mean milliseconds per call of each ``fns[name]()``, one value per round; rounds interleave the candidates.

    Each candidate is called ``warmup`` times, then its calls per round are sized to about ``round_s`` seconds
    (at least 1, at most 200) unless ``iters`` is given. ``sync`` (e.g. ``torch.cuda.synchronize``) runs after
    each round's calls, inside the timed span."""
    sync = sync or (lambda: None)
    n_iters: dict[str, int] = {}
    for name, fn in fns.items():
        for _ in range(max(warmup, 1)):
            fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        single = time.perf_counter() - t0
        n_iters[name] = iters or max(1, min(200, round(round_s / max(single, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()  # settle: absorb the previous candidate's spinning threads
            sync()
            t0 = time.perf_counter()
            for _ in range(n_iters[name]):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3 / n_iters[name])
    return times


def pick_fastest(medians: Mapping[str, float], simplest_first: Sequence[str], tie: float = 0.03) -> str:
    """The simplest candidate whose median is within ``tie`` (relative) of the fastest one: a difference smaller
    than the timing noise is no reason to take the more complex path. Names missing from ``simplest_first``
    rank after it, in the order of ``medians``."""
    if not medians:
        raise ValueError("no timings to pick from")
    best = min(medians.values())
    rank = {name: i for i, name in enumerate(simplest_first)}
    close = [name for name, ms in medians.items() if ms <= best * (1 + tie)]
    return min(close, key=lambda name: (rank.get(name, len(rank)), list(medians).index(name)))


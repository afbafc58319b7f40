"""Side-by-side timing: rounds interleave the candidates; ties go to the simpler path."""

from __future__ import annotations

import pytest

from vanillanet.timing import interleaved_ms, pick_fastest


def test_rounds_interleave_the_candidates():
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = interleaved_ms(fns, rounds=3, iters=2, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    rounds = calls[-3 * 3 * 3:]  # per round and candidate: one settling call, then 2 timed calls
    assert rounds == [n for _ in range(3) for n in ("a", "b", "c") for _ in range(3)]


def test_pick_fastest_prefers_the_simpler_path_within_the_tie_margin():
    order = ("eager", "onnxruntime", "compile")
    assert pick_fastest({"compile": 10.0, "onnxruntime": 10.2, "eager": 30.0}, order) == "onnxruntime"
    assert pick_fastest({"compile": 10.0, "onnxruntime": 10.5, "eager": 30.0}, order) == "compile"
    assert pick_fastest({"compile": 10.0, "onnxruntime": 10.5}, order, tie=0.1) == "onnxruntime"
    assert pick_fastest({"x": 5.0, "y": 5.0}, order) == "x"  # unknown names: their given order
    with pytest.raises(ValueError):
        pick_fastest({}, order)

"""``util.integrity``: what makes a state unsound (NaN/inf, overflowing weights, negative BN variances), stride-0
views, and the digest that sees every byte, name and dtype."""

from __future__ import annotations

import torch

from vanillanet.util.integrity import MAX_ABS, digest, expanded, nonfinite, state_hash, unsound


def test_unsound_names_each_kind_of_bad_value():
    sd = {"a.weight": torch.ones(3), "b.running_var": torch.ones(3), "c.running_mean": torch.zeros(2),
          "n": torch.tensor([1.0, float("nan")]), "i": torch.tensor([float("-inf")]),
          "big": torch.tensor([MAX_ABS * 2]), "v.running_var": torch.tensor([1.0, -1e-3]),
          "steps": torch.tensor(5), "empty": torch.zeros(0)}
    assert unsound(("m", sd)) == ["m.n (NaN)", "m.i (inf)", "m.big (|value| up to 3.7e+19)",
                                  "m.v.running_var (negative variance)"]
    # a variance is a square: large running statistics are fine, a zero variance (dead channel) too
    assert not unsound(("m", {"x.running_var": torch.tensor([1e30, 0.0]), "x.running_mean": torch.tensor([1e25])}))
    assert nonfinite(("opt", {0: {"exp_avg_sq": torch.tensor([1e30])}})) == []
    assert nonfinite(("opt", {0: {"exp_avg": torch.tensor([float("nan")])}})) == ["opt.0.exp_avg"]


def test_expanded_tensors_are_found():
    real = torch.zeros(4, 4)
    assert expanded({"a": real, "b": real[1:], "c": torch.zeros(1).expand(1000, 1000)}) == ["c"]


def test_digest_sees_every_byte_name_and_dtype_but_not_mapping_order():
    a = {"w": torch.arange(6.0).reshape(2, 3), "meta": {"step": 3, "names": ["x", "y"]}}
    assert digest(a) == digest({"meta": {"names": ["x", "y"], "step": 3}, "w": torch.arange(6.0).reshape(2, 3)})
    assert digest(a) == digest({**a, "w": torch.arange(6.0).reshape(3, 2).t().contiguous().t().reshape(2, 3)})
    for changed in ({**a, "w": a["w"].clone().index_fill_(1, torch.tensor([2]), 1e-30)},
                    {**a, "w": a["w"].double()}, {**a, "w": a["w"].reshape(3, 2)},
                    {**a, "meta": {"step": 4, "names": ["x", "y"]}}, {"v": a["w"], "meta": a["meta"]}):
        assert digest(changed) != digest(a)
    assert state_hash({"w": torch.zeros(2, dtype=torch.bfloat16)}) != state_hash({"w": torch.zeros(2)})

"""``model.geometry``: the smallest input each variant takes, its one-line refusal, and feature-map sides with
adaptive pools."""

from __future__ import annotations

import torch
from conftest import build_variant

from vanillanet.model.geometry import feature_map_sides, min_input_size
from vanillanet.model.variants import VARIANTS


def test_min_input_size():
    assert min_input_size(build_variant("vanillanet_5")) == 32
    assert min_input_size(build_variant("vanillanet_13")) == 32
    assert min_input_size(build_variant("vanillanet_13_x1_5_ada_pool")) == 2


def test_ada_pool_geometry():
    """The ada_pool design: stem stride 3, padding 1 (224 -> 75), then adaptive max pools to ceil(side / 2): the
    original's fixed 38, 19, 10 at 224 px, and the same strides at any other size (320 px: 107, 54, 27, 14)."""
    model = build_variant("vanillanet_13_x1_5_ada_pool", deploy=True).eval()
    spec = VARIANTS["vanillanet_13_x1_5_ada_pool"]
    for size, expected in ((224, [75, 38, 19, 10]), (320, [107, 54, 27, 14])):
        with torch.device("meta"):
            _, inter = model.to("meta").forward_intermediates(torch.empty(1, 3, size, size), indices=[0, 1, 2, 9])
        assert [t.shape[-1] for t in inter] == expected
        assert [feature_map_sides(size, spec.strides, spec.ada_pool)[i + 1] for i in (0, 1, 2, 9)] == expected
    assert [model.feature_info[i]["reduction"] for i in (0, 1, 2, 9)] == [3, 6, 12, 24]

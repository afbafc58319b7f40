"""model/variants.py: the table of the paper's 11 variants, their published numbers, and naming a model by its
widths (``match_variants``, ``describe_dims``, ``variant_of``)."""

from __future__ import annotations

import pytest
from conftest import build_variant

from vanillanet.model.variants import (
    PUBLISHED,
    PUBLISHED_TRAIN,
    VARIANTS,
    check_model_name,
    default_out_indices,
    describe_dims,
    match_variants,
    variant_names,
    variant_of,
)
from vanillanet.util.errors import ConfigError


def test_the_table_holds_the_papers_eleven_variants():
    assert variant_names() == ["vanillanet_5", "vanillanet_6", "vanillanet_7", "vanillanet_8", "vanillanet_9",
                               "vanillanet_10", "vanillanet_11", "vanillanet_12", "vanillanet_13",
                               "vanillanet_13_x1_5", "vanillanet_13_x1_5_ada_pool"]
    assert set(PUBLISHED) == set(VARIANTS) and set(PUBLISHED_TRAIN) <= set(VARIANTS)
    for name, spec in VARIANTS.items():
        assert len(spec.dims) == len(spec.strides) + 1, name  # the stem's width, then one per block
        assert spec.ada_pool is None or len(spec.ada_pool) == len(spec.strides), name
        assert 2 ** sum(s == 2 for s in spec.strides) == 8, name  # stem /4, then /8 in the blocks: /32


def test_the_deep_variants_grow_by_one_2048_block():
    assert VARIANTS["vanillanet_13"].dims == (512, 512, 1024) + (2048,) * 7 + (4096, 4096)
    assert VARIANTS["vanillanet_13"].strides == (1, 2, 2) + (1,) * 6 + (2, 1)
    assert VARIANTS["vanillanet_8"].dims == (512, 512, 1024, 2048, 2048, 4096, 4096)
    assert VARIANTS["vanillanet_13_x1_5"].dims[0] == 768
    assert VARIANTS["vanillanet_13_x1_5_ada_pool"].ada_pool == (0, 38, 19, 0, 0, 0, 0, 0, 0, 10, 0)


def test_published_numbers_are_kept_as_printed():
    assert PUBLISHED["vanillanet_5"].params_m == "15.5" and PUBLISHED["vanillanet_5"].top1 == 72.49
    assert PUBLISHED["vanillanet_13_x1_5_ada_pool"].gmacs == "48.98"
    top1 = [PUBLISHED[n].top1 for n in variant_names()]
    assert top1 == sorted(top1)  # every larger variant is more accurate


def test_unknown_names_list_the_valid_ones():
    check_model_name("vanillanet_9")
    with pytest.raises(ConfigError, match=r"unknown model 'vanillanet_4': choose one of vanillanet_5, .*"
                                          r"vanillanet_13_x1_5_ada_pool \(see `vanillanet list`\)"):
        check_model_name("vanillanet_4")


def test_widths_name_their_variant():
    assert match_variants((64, 128, 256, 512)) == [("vanillanet_5", 0.125)]
    assert describe_dims((512, 1024, 2048, 4096)) == "vanillanet_5"
    assert describe_dims((64, 128, 256, 512)) == "vanillanet_5 with width_mult 0.125"
    assert describe_dims((3, 5, 7)) == "a custom VanillaNet with dims [3, 5, 7]"
    both = {name for name, mult in match_variants(VARIANTS["vanillanet_13_x1_5"].dims)}
    assert both == {"vanillanet_13_x1_5", "vanillanet_13_x1_5_ada_pool", "vanillanet_13"}
    assert describe_dims(VARIANTS["vanillanet_13_x1_5"].dims).startswith("vanillanet_13_x1_5 or ")


@pytest.mark.parametrize("name", ["vanillanet_5", "vanillanet_13", "vanillanet_13_x1_5_ada_pool"])
def test_variant_of_a_built_model(name):
    model = build_variant(name)
    assert variant_of(model) == name
    model.pretrained_cfg = {}  # without timm's config: found by widths, strides and pooling
    assert variant_of(model) == name


def test_out_indices_are_the_last_block_of_each_resolution():
    assert default_out_indices(VARIANTS["vanillanet_13"].strides) == (0, 1, 8, 10)
    assert default_out_indices(VARIANTS["vanillanet_5"].strides) == (0, 1, 2)

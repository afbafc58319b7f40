"""Input geometry: the stem's stride, feature-map sides and the smallest input a model takes."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..util.errors import ConfigError
from .variants import VariantSpec

# ---- input geometry -------------------------------------------------------------------------------------------
REFERENCE_INPUT = 224  # the published input size (ImageNet-1k evaluation)


def stem_stride_padding(ada_pool: Sequence[int] | None) -> tuple[int, int]:
    """The 4x4 stem conv's (stride, padding): (4, 0), or (3, 1) for the ada_pool design (224 -> 75)."""
    return (3, 1) if ada_pool is not None else (4, 0)


def feature_map_sides(img_size: int, strides: Sequence[int], ada_pool: Sequence[int] | None = None) -> list[int]:
    """Side of the stem's output and of each block's output (one axis) for an ``img_size`` input; <= 0: none.

    A stride-s block pools by max pooling (floor(side / s)), or adaptively to ceil(side / s) where ada_pool is set.
    """
    stride, padding = stem_stride_padding(ada_pool)
    side = (img_size + 2 * padding - 4) // stride + 1
    sides = [side]
    for i, s in enumerate(strides):
        if s != 1:
            side = -(-side // s) if ada_pool is not None and ada_pool[i] else side // s
        sides.append(side)
    return sides


def min_input_side(strides: Sequence[int], ada_pool: Sequence[int] | None = None) -> int:
    """The smallest input side (pixels) for which every map has at least one pixel (sides grow with the input)."""
    n = 1
    while min(feature_map_sides(n, strides, ada_pool)) < 1:
        n += 1
    return n


def _check_ada_pool(strides: Sequence[int], ada_pool: Sequence[int]) -> None:
    """Adaptive pools output ceil(side / stride) (see ``StridedAdaptiveMaxPool2d``), so the original's fixed
    sizes are accepted where they are exactly that at the reference input (e.g. 38, 19, 10 at 224 px)."""
    if len(ada_pool) != len(strides):
        raise ConfigError(f"ada_pool needs one entry per block ({len(strides)}), got {len(ada_pool)}")
    sides = feature_map_sides(REFERENCE_INPUT, strides, ada_pool)
    expected = tuple(sides[i + 1] if a and s != 1 else a for i, (a, s) in enumerate(zip(ada_pool, strides)))
    if tuple(ada_pool) != expected:
        raise ConfigError(f"ada_pool={tuple(ada_pool)} cannot be kept at every input size: adaptive pools here output "
                         f"ceil(side / stride), which at {REFERENCE_INPUT} px gives ada_pool={expected}")


def input_cfg(spec: VariantSpec) -> dict:
    """timm pretrained-cfg keys that follow from a variant's geometry: ``pool_size`` (the last map at the
    reference input) and ``min_input_size``. No variant has a fixed input size."""
    side = feature_map_sides(REFERENCE_INPUT, spec.strides, spec.ada_pool)[-1]
    smallest = min_input_side(spec.strides, spec.ada_pool)
    return {"pool_size": (side, side), "min_input_size": (3, smallest, smallest)}


def min_input_size(model: nn.Module) -> int:
    """The smallest square input (pixels) for which every pooling of a VanillaNet still has an output (1 for other
    models, which are not checked)."""
    if getattr(model, "strides", None) is None or not hasattr(model, "ada_pool"):
        return 1
    return min_input_side(model.strides, model.ada_pool)


def check_min_input_size(model: nn.Module, img_size: int) -> None:
    """Raise ConfigError (one line) when ``img_size`` is too small for ``model``."""
    need = min_input_size(model)
    if img_size < need:
        raise ConfigError(f"input size {img_size} px is too small for this model (its stem and pooling need at least "
                          f"{need} px); use an image size of {need} or more")

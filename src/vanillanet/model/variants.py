"""The variant table (architectures of the paper's 11 models) and their published numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..util.errors import ConfigError


@dataclass(frozen=True)
class VariantSpec:
    """Architecture of one published variant: block widths (``dims[0]`` is the stem's), block strides and, for the
    ada_pool variant, the output size of each block's adaptive max pool (0 = the usual pool)."""

    dims: tuple[int, ...]
    strides: tuple[int, ...]
    ada_pool: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Published:
    """What the paper reports for a variant's deploy form at 224x224 on ImageNet-1k. ``params_m`` and ``gmacs`` are
    kept as printed (the precision is part of the claim); latency is A100, batch 1, fp32 eager."""

    params_m: str
    gmacs: str
    top1: float
    real_top1: float
    a100_ms: float


def _deep(n_mid: int) -> VariantSpec:
    """vanillanet_{7+n_mid}: 512,512,1024, 2048 x (n_mid+1), 4096,4096 with strides 1,2,2,1 x n_mid,2,1."""
    return VariantSpec((512, 512, 1024) + (2048,) * (n_mid + 1) + (4096, 4096), (1, 2, 2) + (1,) * n_mid + (2, 1))


_X15 = tuple(int(d * 1.5) for d in _deep(6).dims)


# The variant table: a new variant is one line here (and its published numbers in PUBLISHED below).
VARIANTS: dict[str, VariantSpec] = {
    "vanillanet_5": VariantSpec((512, 1024, 2048, 4096), (2, 2, 2)),
    "vanillanet_6": VariantSpec((512, 1024, 2048, 4096, 4096), (2, 2, 2, 1)),
    "vanillanet_7": VariantSpec((512, 512, 1024, 2048, 4096, 4096), (1, 2, 2, 2, 1)),
    **{f"vanillanet_{7 + n}": _deep(n) for n in range(1, 7)},
    "vanillanet_13_x1_5": VariantSpec(_X15, _deep(6).strides),
    "vanillanet_13_x1_5_ada_pool": VariantSpec(_X15, _deep(6).strides, (0, 38, 19, 0, 0, 0, 0, 0, 0, 10, 0)),
}


# Published deploy-form numbers (paper / official README), one line per variant.
PUBLISHED: dict[str, Published] = {
    "vanillanet_5": Published("15.5", "5.2", 72.49, 79.66, 1.61),
    "vanillanet_6": Published("32.5", "6.0", 76.36, 82.86, 2.01),
    "vanillanet_7": Published("32.8", "6.9", 77.98, 84.16, 2.27),
    "vanillanet_8": Published("37.1", "7.7", 79.13, 85.14, 2.56),
    "vanillanet_9": Published("41.4", "8.6", 79.87, 85.66, 2.91),
    "vanillanet_10": Published("45.7", "9.4", 80.57, 86.25, 3.24),
    "vanillanet_11": Published("50.0", "10.3", 81.08, 86.54, 3.59),
    "vanillanet_12": Published("54.3", "11.1", 81.55, 86.81, 3.82),
    "vanillanet_13": Published("58.6", "11.9", 82.05, 87.15, 4.26),
    "vanillanet_13_x1_5": Published("127.8", "26.5", 82.53, 87.48, 7.83),
    "vanillanet_13_x1_5_ada_pool": Published("127.8", "48.98", 83.11, 87.85, 9.72),
}


# Published train-form numbers (params M, GMACs).
PUBLISHED_TRAIN: dict[str, tuple[str, str]] = {"vanillanet_5": ("22.3", "8.45"), "vanillanet_13": ("107.7", "21.8")}


def variant_names() -> list[str]:
    return list(VARIANTS)


def check_model_name(name: str) -> None:
    """One-line ``ConfigError`` listing the valid names unless ``name`` is a registered variant."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(VARIANTS)} (see `vanillanet list`)")


def match_variants(dims: Sequence[int]) -> list[tuple[str, float]]:
    """Registered variants whose widths, scaled uniformly (``width_mult``), give ``dims``: [(name, width_mult)]."""
    found = []
    for name, spec in VARIANTS.items():
        if len(spec.dims) != len(dims):
            continue
        mult = dims[0] / spec.dims[0]
        if all(max(1, int(round(d * mult))) == got for d, got in zip(spec.dims, dims)):
            found.append((name, mult))
    return found


def describe_dims(dims: Sequence[int]) -> str:
    """'vanillanet_5', 'vanillanet_5 with width_mult 0.125' or 'a custom VanillaNet with dims [...]'."""
    matches = match_variants(dims)
    if not matches:
        return f"a custom VanillaNet with dims {list(dims)}"
    exact = [name for name, mult in matches if mult == 1]
    if exact:
        return " or ".join(exact)
    name, mult = matches[0]
    return f"{name} with width_mult {mult:g}"


def variant_of(model: nn.Module) -> str:
    """The registered variant ``model`` is (its timm config's name, else the variant with its widths, strides and
    pooling), or 'custom'."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if name in VARIANTS:
        return name
    fits = [n for n, _ in match_variants(model.dims)
            if (VARIANTS[n].strides, VARIANTS[n].ada_pool) == (tuple(model.strides), model.ada_pool)]
    return fits[0] if fits else "custom"


def default_out_indices(strides: Sequence[int]) -> tuple[int, ...]:
    """The last block at each resolution (for vanillanet_13: blocks 0, 1, 8, 10, as the detection configs use)."""
    n = len(strides)
    return tuple(i for i in range(n) if i == n - 1 or strides[i + 1] != 1)

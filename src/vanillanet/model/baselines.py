"""Baselines for the ablation study, trained by the same ``train(cfg)`` as VanillaNet (same data, budget, recipe).

- ``resnet18``: timm's ResNet-18 (BasicBlock x [2, 2, 2, 2], 3x3 convs, identity shortcuts). ``width_mult`` scales
  its four stage widths 64-128-256-512 (timm keeps its 7x7 stem at 64 channels whatever the stages are).
- ``plain_cnn_6`` (registered with timm here): a conventional plain CNN with the depth, widths and strides of
  vanillanet_6 (six layers: stem, four blocks, classifier). Stem: 4x4 stride-4 conv + BN + ReLU; each block: one
  3x3 conv (padding 1) + BN, max-pool(stride) at stride 2, ReLU; head: global average pool, dropout, 1x1 conv.
  It is VanillaNet's "neither trick" network (``deep_training=False, series_act=False``) with 3x3 instead of 1x1
  convs in the blocks: spatial mixing by the conv kernel rather than by the series activation.

Neither has deep training (no act_learn) nor a deploy form: the trainer evaluates their train form only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from ..util.errors import ConfigError
from .layers import BN_EPS, make_pool
from .variants import VARIANTS

__all__ = ["BASELINES", "PlainCNN", "baseline_kwargs", "create_baseline", "is_baseline"]

BASELINES = ("resnet18", "plain_cnn_6")
_RESNET18_WIDTHS = (64, 128, 256, 512)


def is_baseline(name: str) -> bool:
    return name in BASELINES


def baseline_kwargs(name: str, *, num_classes: int, in_chans: int, drop_rate: float,
                    width_mult: float) -> dict[str, Any]:
    """The ``timm.create_model(name, **kwargs)`` arguments of a baseline for the training settings."""
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if name == "resnet18":
        kwargs["channels"] = [max(1, int(round(c * width_mult))) for c in _RESNET18_WIDTHS]
    elif name == "plain_cnn_6":
        kwargs["width_mult"] = width_mult
    else:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return kwargs


def create_baseline(name: str, **settings: Any) -> tuple[nn.Module, dict[str, Any]]:
    """(model, its ``timm.create_model`` kwargs) for the training settings (see ``baseline_kwargs``)."""
    import timm

    kwargs = baseline_kwargs(name, **settings)
    return timm.create_model(name, **kwargs), kwargs


def _conv_bn_relu_pool(in_chs: int, out_chs: int, kernel: int, stride: int) -> nn.Sequential:
    """conv (kernel 4: stride 4, no padding; kernel 3: padding 1) + BN, the block's pool, ReLU."""
    if kernel == 4:
        conv, pool = nn.Conv2d(in_chs, out_chs, 4, stride=stride), nn.Identity()
    else:
        conv, pool = nn.Conv2d(in_chs, out_chs, kernel, padding=kernel // 2), make_pool(stride)
    return nn.Sequential(conv, nn.BatchNorm2d(out_chs, eps=BN_EPS), pool, nn.ReLU())


class PlainCNN(nn.Module):
    """A plain CNN of 3x3 convs with vanillanet_6's depth, widths and strides (see the module docstring)."""

    def __init__(self, in_chans: int = 3, num_classes: int = 1000,
                 dims: Sequence[int] = VARIANTS["vanillanet_6"].dims,
                 strides: Sequence[int] = VARIANTS["vanillanet_6"].strides, drop_rate: float = 0.0,
                 width_mult: float = 1.0, kernel_size: int = 3):
        super().__init__()
        if len(dims) != len(strides) + 1:
            raise ConfigError(f"need len(dims) == len(strides) + 1, got {len(dims)} dims and {len(strides)} strides")
        if width_mult <= 0:
            raise ConfigError(f"width_mult must be positive, got {width_mult}")
        dims = [max(1, int(round(d * width_mult))) for d in dims]
        self.in_chans, self.num_classes, self.drop_rate = in_chans, num_classes, drop_rate
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = _conv_bn_relu_pool(in_chans, dims[0], 4, 4)  # kernel_size=1 gives VanillaNet's "neither" net
        self.stages = nn.Sequential(*(_conv_bn_relu_pool(dims[i], dims[i + 1], kernel_size, s)
                                      for i, s in enumerate(strides)))
        self.pool, self.drop = nn.AdaptiveAvgPool2d(1), nn.Dropout(drop_rate)
        self.head = nn.Conv2d(dims[-1], num_classes, 1) if num_classes else nn.Identity()
        for m in self.modules():  # VanillaNet's initialisation, so that only the kernel size differs
            if isinstance(m, nn.Conv2d):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pool(x))
        return x.flatten(1) if pre_logits else self.head(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Conv2d(self.num_features, num_classes, 1) if num_classes else nn.Identity()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)")


default_cfgs = generate_default_cfgs({"plain_cnn_6.untrained": dict(
    url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation="bicubic",
    first_conv="stem.0", classifier="head", license="mit")})


@register_model
def plain_cnn_6(pretrained: bool = False, **kwargs: Any) -> PlainCNN:
    """A plain CNN with 3x3 convs and the depth, widths and strides of vanillanet_6 (ablation baseline)."""
    return build_model_with_cfg(PlainCNN, "plain_cnn_6", pretrained, **kwargs)

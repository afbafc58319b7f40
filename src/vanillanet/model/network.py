"""VanillaNet (Chen et al., 2023): the model class, in train form (deep training, BN everywhere) or deploy form (plain
convs).

Train form (``deploy=False``) and deploy form (``deploy=True``) use the original state_dict key names, so
original checkpoints load with ``strict=True``. ``reparameterize()`` converts the train form to the deploy form
in place and exactly (see ``layers.py`` for the maths). timm registration lives in ``registry.py``.
"""

import math
import numbers
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..util.errors import ConfigError, ConversionError
from .ablation import (
    SHORTCUT_REFUSAL,
    ConversionHook,
    ResidualBlock,
    ResidualSingleConvBlock,
    SingleConvBlock,
    _residual_blocks,
)
from .blocks import Block, DeepTrainingSlope, _check_slope
from .geometry import _check_ada_pool, stem_stride_padding
from .layers import BN_EPS, conv_bn, fold_conv_bn, make_activation, merge_convs, new_conv


def _check_global_pool(global_pool: str) -> None:
    if global_pool not in ("avg", ""):
        raise ConfigError(f"VanillaNet pools by average or not at all: global_pool must be 'avg' or '', "
                          f"got {global_pool!r}")


def _init_weights(m: nn.Module) -> None:
    from timm.layers import trunc_normal_  # timm's, as the original (its draws differ from torch's)

    if isinstance(m, (nn.Conv2d, nn.Linear)):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_types(**values: object) -> None:
    wanted = {"in_chans": "an integer", "num_classes": "an integer", "dims": "a sequence of integers",
              "strides": "a sequence of integers", "ada_pool": "None or a sequence of integers",
              "drop_rate": "a number", "width_mult": "a number", "drop_path_rate": "a number"}
    for name, value in values.items():
        if wanted[name] == "an integer":
            ok = _is_int(value)
        elif wanted[name] == "a number":
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        else:
            ok = (value is None and name == "ada_pool") or (
                isinstance(value, Sequence) and not isinstance(value, str) and all(_is_int(v) for v in value))
        if not ok:
            raise TypeError(f"VanillaNet: {name} must be {wanted[name]}, got {type(value).__name__} {value!r:.60}")


def _check_arguments(in_chans: int, num_classes: int, dims: Sequence[int], strides: Sequence[int], drop_rate: float,
                     act_num: int, ada_pool: Sequence[int] | None, width_mult: float, global_pool: str,
                     drop_path_rate: float, deploy: bool = False, shortcut: bool = False) -> None:
    """One-line ConfigErrors for constructor arguments that cannot build a VanillaNet (TypeErrors for values of the
    wrong kind, naming the argument)."""
    _check_types(in_chans=in_chans, num_classes=num_classes, dims=dims, strides=strides, drop_rate=drop_rate,
                 width_mult=width_mult, drop_path_rate=drop_path_rate, ada_pool=ada_pool)
    problems = [
        (len(dims) != len(strides) + 1, f"need len(dims) == len(strides) + 1, got {len(dims)} dims and "
                                        f"{len(strides)} strides"),
        (bool(drop_path_rate), "VanillaNet has no residual branches, so drop_path_rate must be 0"),
        (not width_mult > 0 or not math.isfinite(width_mult), f"width_mult must be a positive number, got "
                                                               f"{width_mult}"),
        (isinstance(act_num, bool) or not isinstance(act_num, int) or not 0 <= act_num <= 16,
         f"act_num must be an integer between 0 and 16 (kernel 2*act_num+1), got {act_num!r}"),
        (shortcut and deploy, "shortcut=True has no deploy form (a shortcut network is not a plain network): build "
                              "it with deploy=False"),
        (not 0 <= drop_rate < 1, f"drop_rate must lie in [0, 1), got {drop_rate}"),
        (in_chans < 1, f"in_chans must be at least 1, got {in_chans}"),
        (num_classes < 0, f"num_classes must be 0 (no head) or more, got {num_classes}"),
        (any(d < 1 for d in dims) or any(s < 1 for s in strides), f"dims and strides must be positive, got dims "
                                                                   f"{list(dims)} and strides {list(strides)}"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(message)
    if ada_pool is not None:
        _check_ada_pool(strides, ada_pool)
    _check_global_pool(global_pool)


class VanillaNet(nn.Module):
    """VanillaNet (Chen et al., 2023) in train form (deep training, BN everywhere) or deploy form (plain convs).

    Args mirror the original: ``in_chans``, ``num_classes``, ``dims``, ``strides``, ``drop_rate`` (head dropout),
    ``act_num`` (activation kernel 2n+1), ``deploy``, ``ada_pool``. ``width_mult`` scales every width (narrow
    models for CPU training). timm's head conventions: ``num_classes=0`` removes the classifier (pooled features
    (N, C)), ``global_pool=""`` removes the pooling too (NCHW out; with classes, per-position logits).

    Graph capture (FX, TorchScript, torch.export, ONNX): the forward methods branch only on attributes fixed at
    construction or conversion (``single_conv``, ``num_classes``, ``global_pool``, ``grad_checkpointing``), which
    tracers read once; ``single_conv`` is a TorchScript constant, so only the modules of the model's form are
    compiled. The only shape-dependent code is in ``layers.series_taps`` (kernel trimming on tiny maps) and
    ``layers.StridedAdaptiveMaxPool2d``; their docstrings say what each capture sees. A captured graph keeps the
    act_learn value it was captured with. The modules with ``forward`` methods (here, ``blocks``, ``layers``,
    ``ablation``) keep real annotations (no ``from __future__ import annotations``): an FX graph copies the root
    ``forward``'s annotations into its code, and string annotations become names (``_torch_Tensor_``) that
    ``torch.jit.script`` of the graph (timm's FX-then-script route) cannot resolve.

    Ablation options (the defaults are the paper's network, with the original keys):

    - ``deep_training=False``: every layer is trained as the single conv it becomes at deploy time, from the start:
      stem = 4x4 conv + BN + activation, block = 1x1 conv + BN, pool, activation, head = pool, dropout, one 1x1 conv;
      no slope and no act_learn. Keys ``stem.0.0.*`` (conv), ``stem.0.1.*`` (BN), ``stem.1.*``,
      ``stages.{i}.conv.{0,1}.*``, ``stages.{i}.act.*``, ``cls.2.*``; it converts to the usual deploy form.
    - ``series_act=False``: a plain ReLU instead of the series activation (no depthwise conv, no ``act.*`` keys in
      either form). ``act_num`` is then unused.
    - ``shortcut=True``: an identity shortcut around every block whose input and output shapes match (stride 1 and
      dim == dim_out; in vanillanet_6 only the last block); the other blocks, the stem and the head are unchanged.
      Same keys, but not a plain network: conversion refuses (``ConversionError``).
    """

    __constants__ = ["single_conv"]  # the deploy form, or the train form without deep training
    __jit_unused_properties__ = ["act_learn"]  # a training control, not part of the scripted graph

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        dims: Sequence[int] = (512, 1024, 2048, 4096),
        strides: Sequence[int] = (2, 2, 2),
        drop_rate: float = 0.0,
        act_num: int = 3,
        deploy: bool = False,
        ada_pool: Sequence[int] | None = None,
        width_mult: float = 1.0,
        global_pool: str = "avg",
        drop_path_rate: float = 0.0,
        deep_training: bool = True,
        series_act: bool = True,
        shortcut: bool = False,
    ):
        super().__init__()
        _check_arguments(in_chans, num_classes, dims, strides, drop_rate, act_num, ada_pool, width_mult,
                         global_pool, drop_path_rate, deploy, shortcut)
        dims = [max(1, int(round(d * width_mult))) for d in dims]
        self.deep_training, self.series_act, self.shortcut = bool(deep_training), bool(series_act), bool(shortcut)
        residual = _residual_blocks(dims, strides, self.shortcut)
        # True when each layer is one conv (the deploy form, or the train form without deep training): the stem and
        # head then have the deploy form's layout.
        self.single_conv = deploy or not deep_training
        self.in_chans, self.num_classes, self.drop_rate = in_chans, num_classes, drop_rate
        self.dims, self.strides = tuple(dims), tuple(strides)
        self.act_num, self.deploy = act_num, deploy
        self.ada_pool = tuple(ada_pool) if ada_pool is not None else None
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False
        stem_stride, stem_pad = stem_stride_padding(ada_pool)

        if deploy:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, dims[0], 4, stride=stem_stride, padding=stem_pad),
                make_activation(dims[0], act_num, True, series_act),
            )
        elif not deep_training:
            self.convert_hook = ConversionHook(self)
            self.stem = nn.Sequential(conv_bn(in_chans, dims[0], 4, stride=stem_stride, padding=stem_pad),
                                      make_activation(dims[0], act_num, series=series_act))
        else:
            self.slope = DeepTrainingSlope()
            object.__setattr__(self.slope, "_owner", self)
            self.stem1 = conv_bn(in_chans, dims[0], 4, stride=stem_stride, padding=stem_pad)
            self.stem2 = nn.Sequential(*conv_bn(dims[0], dims[0]), make_activation(dims[0], act_num, series=series_act))
        self.stages = nn.ModuleList(
            self._make_block(dims[i], dims[i + 1], strides[i], ada_pool[i] if ada_pool is not None else None,
                             residual[i])
            for i in range(len(strides))
        )
        self.feature_info = []
        reduction = stem_stride
        for i, stride in enumerate(strides):
            reduction *= stride
            self.feature_info.append(dict(num_chs=dims[i + 1], reduction=reduction, module=f"stages.{i}"))
        self._build_head(num_classes, global_pool)
        self.apply(_init_weights)

    def _make_block(self, dim: int, dim_out: int, stride: int, ada_pool: int | None, residual: bool) -> nn.Module:
        """Block i in the form and with the options chosen at construction."""
        if self.deep_training or self.deploy:
            cls = ResidualBlock if residual else Block
            return cls(dim, dim_out, self.act_num, stride, self.deploy, ada_pool, None if self.deploy else self.slope,
                       self.series_act)
        cls = ResidualSingleConvBlock if residual else SingleConvBlock
        return cls(dim, dim_out, self.act_num, stride, ada_pool, self.series_act)

    # ---- head -------------------------------------------------------------------------------------------------
    def _build_head(self, num_classes: int, global_pool: str) -> None:
        c = self.num_features
        pool = nn.AdaptiveAvgPool2d((1, 1)) if global_pool == "avg" else nn.Identity()  # no parameters: same keys
        pool_drop = [pool, nn.Dropout(self.drop_rate)]
        if self.single_conv:
            self.cls = nn.Sequential(*pool_drop, nn.Conv2d(c, num_classes, 1) if num_classes else nn.Identity())
        elif num_classes:
            self.cls1 = nn.Sequential(*pool_drop, nn.Conv2d(c, num_classes, 1), nn.BatchNorm2d(num_classes, eps=BN_EPS))
            self.cls2 = nn.Sequential(nn.Conv2d(num_classes, num_classes, 1))
        else:
            self.cls1 = nn.Sequential(*pool_drop, nn.Identity(), nn.Identity())
            self.cls2 = nn.Sequential(nn.Identity())
        self.num_classes, self.global_pool = num_classes, global_pool

    def get_classifier(self) -> nn.Module:
        return self.cls[2] if self.single_conv else self.cls2[0]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a freshly initialised one for ``num_classes`` (0 = no classifier), in the current
        form. ``global_pool``: "avg" or "" (no pooling: NCHW out, timm's rule); None keeps the current one."""
        global_pool = self.global_pool if global_pool is None else global_pool
        _check_global_pool(global_pool)
        ref = next(self.parameters())
        self._build_head(num_classes, global_pool)
        head = [self.cls] if self.single_conv else [self.cls1, self.cls2]
        for m in head:
            m.apply(_init_weights)
            m.to(device=ref.device, dtype=ref.dtype)

    # ---- act_learn (deep training) ------------------------------------------------------------------------------
    @property
    def act_learn(self) -> float:
        """Slope between each pair of convs: 0 = ReLU (start of deep training), 1 = identity (mergeable); 1 when
        each layer is a single conv (deploy form, or ``deep_training=False``)."""
        return 1.0 if self.single_conv else self.slope.value

    @act_learn.setter
    def act_learn(self, value: float) -> None:
        self.set_act_learn(value)

    @torch.no_grad()
    def set_act_learn(self, value: float) -> None:
        """The one setter: stem, every block and head share one slope, so this reaches all of them."""
        value = float(value)
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ConfigError(f"act_learn must lie in [0, 1], got {value}; 0 = ReLU, 1 = identity")
        if not self.deploy and not self.deep_training:
            if value != 1.0:
                raise ConfigError("this model trains without deep training (deep_training=False): each layer is one "
                                  "conv, there is no act_learn to set; build it with deep_training=True to use it")
            return
        if self.deploy:
            if value != 1.0:
                raise ConversionError("this model is in deploy form: its layers are merged and act_learn is fixed "
                                      "at 1; build it with deploy=False to train with deep training")
            return
        self.slope.value = value

    change_act = set_act_learn  # name used by the original code

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.single_conv:
            return self.stem(x)
        return self.stem2(self.slope(self.stem1(x)))

    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and torch.is_grad_enabled()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            if not torch.jit.is_scripting() and self._checkpointing():
                x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling and dropout, then (unless ``pre_logits``) the classifier; flattened to (N, C) when pooled."""
        if self.single_conv:
            x = self.cls[1](self.cls[0](x))
            if not pre_logits:
                x = self.cls[2](x)
        else:
            x = self.cls1[1](self.cls1[0](x))
            if not pre_logits and self.num_classes > 0:
                x = self.cls2(self.slope(self.cls1[3](self.cls1[2](x))))
        return x.flatten(1) if self.global_pool == "avg" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs at ``indices`` (timm's feature API; index i = output of block i, see ``feature_info``)."""
        from timm.models._features import feature_take_indices

        if output_fmt != "NCHW":
            raise ConfigError(f"VanillaNet features are NCHW only, got output_fmt={output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.forward_stem(x)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        for i, stage in enumerate(stages):
            x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False) if self._checkpointing() else stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last wanted index (and the head), for feature extraction."""
        from timm.models._features import feature_take_indices

        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        self.feature_info = self.feature_info[: max_index + 1]
        self.num_features = self.head_hidden_size = self.feature_info[-1]["num_chs"]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    # ---- timm conveniences --------------------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay: stem, then each block, then the head."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    # ---- conversion ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reparameterize(self) -> None:
        """Convert to the deploy form in place, exactly (eval-mode BN statistics). Idempotent.

        Raises ConversionError when act_learn != 1 (the layers are not yet linear and cannot be merged) and for a
        network with shortcuts (not a plain network).
        """
        if self.deploy:
            return
        if self.shortcut:
            raise ConversionError(SHORTCUT_REFUSAL)
        if not self.deep_training:
            self._reparameterize_single_conv()
            return
        _check_slope(self.slope)
        stride, padding = self.stem1[0].stride, self.stem1[0].padding
        w, b = merge_convs(*fold_conv_bn(self.stem1), *fold_conv_bn(self.stem2[:2]))
        stem_act = self.stem2[2]
        stem_act.reparameterize()
        for block in self.stages:
            block.reparameterize()
        pool_drop = [self.cls1[0], self.cls1[1]]
        if self.num_classes:
            hw, hb = merge_convs(*fold_conv_bn(self.cls1[2:]), self.cls2[0].weight, self.cls2[0].bias)
            head = nn.Sequential(*pool_drop, new_conv(hw, hb))
        else:
            head = nn.Sequential(*pool_drop, nn.Identity())
        object.__setattr__(self.slope, "_owner", None)  # break the back-reference; later calls are no-ops
        # A fresh module dict (not an in-place edit) so that a caller iterating our children, as timm's
        # reparameterize_model does, is not disturbed.
        self._modules = OrderedDict(
            stem=nn.Sequential(new_conv(w, b, stride=stride, padding=padding), stem_act),
            stages=self.stages,
            cls=head,
        )
        self.deploy = self.single_conv = True

    @torch.no_grad()
    def _reparameterize_single_conv(self) -> None:
        """``deep_training=False``: fold every BN into its conv; the layout already is the deploy form's."""
        conv = self.stem[0][0]
        self.stem[0] = new_conv(*fold_conv_bn(self.stem[0]), stride=conv.stride, padding=conv.padding)
        self.stem[1].reparameterize()
        for block in self.stages:
            block.reparameterize()
        object.__setattr__(self.convert_hook, "_owner", None)  # break the back-reference; later calls are no-ops
        # a fresh module dict without the hook (see reparameterize), in the deploy form's key order
        self._modules = OrderedDict(stem=self.stem, stages=self.stages, cls=self.cls)
        self.deploy = True

    switch_to_deploy = reparameterize

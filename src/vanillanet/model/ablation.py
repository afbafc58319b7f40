"""The ablation options of VanillaNet (not the paper's network): layers trained without deep training, shortcut
blocks, and the conversion hook of a model without a slope.
"""

from collections.abc import Sequence

import torch
from torch import nn

from ..util.errors import ConfigError, ConversionError
from .blocks import Block
from .layers import conv_bn, fold_conv_bn, make_activation, make_pool, new_conv

# The ablation options of VanillaNet (constructor arguments) and their values in the paper's network.
MODEL_OPTIONS = {"deep_training": True, "series_act": True, "shortcut": False}


class SingleConvBlock(nn.Module):
    """A layer trained without deep training (``VanillaNet(deep_training=False)``): conv(1x1)+BN, pool, activation.

    It is the deploy-form Block with a BN after its conv, trained as such from the start (no second conv, no slope).
    Conversion folds the BNs, giving exactly the keys of ``Block(deploy=True)``: ``conv.{weight,bias}``, ``act.*``.
    """

    def __init__(self, dim: int, dim_out: int, act_num: int = 3, stride: int = 2, ada_pool: int | None = None,
                 series_act: bool = True):
        super().__init__()
        self.deploy = False
        self.conv = conv_bn(dim, dim_out)
        self.pool = make_pool(stride, ada_pool)
        self.act = make_activation(dim_out, act_num, series=series_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.pool(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the conv's BN and the activation's BN. Idempotent."""
        if self.deploy:
            return
        self.conv = new_conv(*fold_conv_bn(self.conv))
        self.act.reparameterize()
        self.deploy = True

    switch_to_deploy = reparameterize


SHORTCUT_REFUSAL = ("this network has shortcuts (shortcut=True): a residual connection adds the input to the output, "
                    "so a shortcut network is not a plain network and has no deploy form; evaluate its train form")


class _Shortcut:
    """Refuses conversion for a block with an identity shortcut (``VanillaNet(shortcut=True)``): such a network is not
    a plain network. Mixed into the residual block classes, which keep their plain block's keys."""

    def reparameterize(self) -> None:
        raise ConversionError(SHORTCUT_REFUSAL)

    switch_to_deploy = reparameterize


class ResidualBlock(_Shortcut, Block):
    """A deep-training Block with an identity shortcut around it, activation included (input and output shapes
    must match). Never in deploy form, so its forward is the train path (written out: TorchScript has no super())."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.pool(self.conv2(self.slope(self.conv1(x)))))


class ResidualSingleConvBlock(_Shortcut, SingleConvBlock):
    """A SingleConvBlock with an identity shortcut around it, activation included (input and output shapes must
    match)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.pool(self.conv(x)))


class ConversionHook(nn.Module):
    """A parameterless first child whose ``reparameterize()`` converts its owner model.

    ``timm.utils.reparameterize_model`` only visits children, so a model whose conversion is more than its
    children's needs such a hook (in the deep-training form, the shared ``DeepTrainingSlope`` is it). Never called
    in the forward pass; not a state_dict key.
    """

    def __init__(self, owner: nn.Module):
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # plain back-reference, not a submodule

    def reparameterize(self) -> None:
        if self._owner is not None:
            self._owner.reparameterize()


def _residual_blocks(dims: Sequence[int], strides: Sequence[int], shortcut: bool) -> list[bool]:
    """Which blocks get an identity shortcut with ``shortcut=True``: those whose input and output shapes match."""
    residual = [shortcut and s == 1 and dims[i] == dims[i + 1] for i, s in enumerate(strides)]
    if shortcut and not any(residual):
        raise ConfigError("shortcut=True, but no block keeps its input shape (stride 1 and dim == dim_out), so there "
                          "is nowhere to add an identity shortcut; use a variant with a stride-1 block")
    return residual

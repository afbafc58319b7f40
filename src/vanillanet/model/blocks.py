"""The paper's layer: the shared deep-training slope and the Block (train and deploy form)."""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..util.errors import ConversionError
from .layers import conv_bn, fold_conv_bn, make_activation, make_pool, merge_convs, new_conv


class DeepTrainingSlope(nn.Module):
    """The deep-training slope ``act_learn``: one module shared by the stem, every block and the head.

    ``forward`` is leaky_relu with slope ``act_learn`` (0 = ReLU, 1 = identity). The value is a plain float: not a
    state_dict key (the original layout is kept), no device sync, and torch.compile treats a changing float
    attribute as dynamic after one recompile (a tensor slope would need prelu, whose backward is ~25x slower on
    CPU). Being the model's first child, it is also the hook through which ``timm.utils.reparameterize_model``
    (which only visits children) converts the whole model.
    """

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.value = float(value)
        object.__setattr__(self, "_owner", None)  # plain back-reference, not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.value)

    def reparameterize(self) -> None:
        if self._owner is not None:
            self._owner.reparameterize()

    def extra_repr(self) -> str:
        return f"act_learn={self.value:.6g}"


class Block(nn.Module):
    """One VanillaNet layer. Train: conv1(1x1)+BN, slope, conv2(1x1)+BN, pool, activation. Deploy: conv, pool, act.

    The pool is max pooling by ``stride``, or adaptive max pooling to ceil(side / stride) when ``ada_pool`` is
    non-zero (the ada_pool design), or nothing at stride 1.
    """

    __constants__ = ["deploy"]  # lets TorchScript compile only the branch of this form

    def __init__(
        self,
        dim: int,
        dim_out: int,
        act_num: int = 3,
        stride: int = 2,
        deploy: bool = False,
        ada_pool: int | None = None,
        slope: DeepTrainingSlope | None = None,
        series_act: bool = True,
    ):
        super().__init__()
        self.deploy = deploy
        if deploy:
            self.conv = nn.Conv2d(dim, dim_out, 1)
        else:
            self.slope = slope if slope is not None else DeepTrainingSlope()
            self.conv1 = conv_bn(dim, dim)
            self.conv2 = conv_bn(dim, dim_out)
        self.pool = make_pool(stride, ada_pool)
        self.act = make_activation(dim_out, act_num, deploy, series_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            x = self.conv(x)
        else:
            x = self.conv2(self.slope(self.conv1(x)))
        return self.act(self.pool(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge conv1+BN, the (identity) slope and conv2+BN into one 1x1 conv; fold the activation's BN."""
        if self.deploy:
            return
        _check_slope(self.slope)
        w, b = merge_convs(*fold_conv_bn(self.conv1), *fold_conv_bn(self.conv2))
        self.act.reparameterize()
        self._modules = OrderedDict(conv=new_conv(w, b), pool=self.pool, act=self.act)  # deploy key order
        self.deploy = True

    switch_to_deploy = reparameterize


def _check_slope(slope: DeepTrainingSlope) -> None:
    value = slope.value
    if value != 1.0:
        raise ConversionError(
            f"act_learn is {value:.6g}, not 1: the two convs of each layer are separated by a nonlinearity and "
            "cannot be merged (the deploy model would give different outputs). Finish the deep-training schedule "
            "(decay_epochs) or set model.act_learn = 1.0 only if the weights were trained to that point."
        )

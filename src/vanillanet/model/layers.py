"""Building blocks of VanillaNet and the pure re-parameterisation maths.

The maths (``fold_bn``, ``merge_convs``) lives in pure functions on tensors so that it can be tested on its own;
the modules only call them. Merges are computed in float64 and cast back, so an fp32 conversion loses nothing
beyond the final rounding.

Graph capture (FX, TorchScript, torch.export, ONNX): the network's only shape-dependent code lives here, in
``series_taps`` (kernel trimming on tiny maps) and ``StridedAdaptiveMaxPool2d`` (output size from the input);
their docstrings say what each capture sees.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..util.errors import ConversionError

__all__ = ["BN_EPS", "ReLUActivation", "SeriesActivation", "StridedAdaptiveMaxPool2d", "fold_bn", "make_activation",
           "make_pool", "merge_convs", "series_taps"]

BN_EPS = 1e-6


def fold_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the conv before it: returns (W', b') with W' = W*s, b' = beta + (b-mean)*s."""
    dtype = weight.dtype
    w, mean, var = weight.double(), running_mean.double(), running_var.double()
    gamma = torch.ones_like(mean) if gamma is None else gamma.double()
    beta = torch.zeros_like(mean) if beta is None else beta.double()
    b = torch.zeros_like(mean) if bias is None else bias.double()
    scale = gamma / torch.sqrt(var + eps)
    w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    b = beta + (b - mean) * scale
    return w.to(dtype).contiguous(), b.to(dtype).contiguous()


def fold_bn_module(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, ...]:
    """``fold_bn`` with the statistics taken from a BatchNorm module (which must track running statistics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ConversionError("BatchNorm without running statistics cannot be folded: build it with "
                              "track_running_stats=True")
    return fold_bn(weight, bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)


def merge_convs(
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge conv1 (any kernel) followed by a 1x1 conv2 with nothing between them into one conv.

    W = W2 @ W1 over the shared channel axis, b = b2 + W2 @ b1. Valid because a 1x1 conv is pointwise.
    Returns plainly laid-out (NCHW-contiguous) tensors.
    """
    if w2.shape[2:] != (1, 1):
        raise ValueError(f"the second conv must be 1x1, got kernel {tuple(w2.shape[2:])}")
    dtype = w1.dtype
    m2 = w2.double().flatten(1)  # [C2, C1]
    w = torch.einsum("oc,cikl->oikl", m2, w1.double())
    b = b2.double() + m2 @ b1.double()
    return w.to(dtype).contiguous(), b.to(dtype).contiguous()


def conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """Conv (with bias) + BatchNorm(eps 1e-6): keys ``0.{weight,bias}`` and ``1.*`` as in the original."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, bias=True),
        nn.BatchNorm2d(out_chs, eps=BN_EPS),
    )


def fold_conv_bn(seq: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') of a ``conv_bn`` pair with its BN folded."""
    conv, bn = seq[0], seq[1]
    return fold_bn_module(conv.weight, conv.bias, bn)


def new_conv(weight: torch.Tensor, bias: torch.Tensor, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """A Conv2d holding the given weight and bias (copied into fresh, contiguous parameters)."""
    out_chs, in_chs, kh, kw = weight.shape
    conv = nn.Conv2d(in_chs, out_chs, (kh, kw), stride=stride, padding=padding, bias=True,
                     device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


class StridedAdaptiveMaxPool2d(nn.Module):
    """Adaptive max pooling to ceil(H / stride) x ceil(W / stride): the ada_pool variant's pooling.

    The original pools that variant's maps to fixed sizes (38, 19, 10), which are ceil(side / 2) at its 224 px
    input; there this module is the same operation (same output size, same windows). Deriving the size from the
    input keeps every block's stride, and so ``feature_info``'s reductions, true at any input size. The size is
    plain shape arithmetic that every graph capture records (FX traces it, TorchScript and torch.export see ints).
    """

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        return -(-h // self.stride), -(-w // self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_max_pool2d(x, self.output_hw(x.shape[-2], x.shape[-1]))

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def series_taps(weight: torch.Tensor, act_num: int, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The depthwise kernel and padding that the series activation applies to ``x``.

    On maps smaller than the (2n+1)x(2n+1) kernel the outer taps only ever see zero padding: dropping them gives
    the same output and gradients and saves most of the time on tiny maps (on the 2x2 maps at the end of a 64 px
    input, 3x3 of the 7x7 taps remain). This function holds the activation's only shape-dependent branch, written
    for each graph capture:

    - eager, TorchScript (``torch.jit.script``: its graph trims for whatever shape it is given) and torch.export /
      torch.compile (concrete or guarded sizes) run it as written;
    - FX symbolic tracing records it as one call (``torch.fx.wrap`` below), so an FX graph trims at run time for
      any input size, bitwise like eager;
    - ``torch.jit.trace``, which the legacy ONNX exporter runs (it records one shape and cannot take a sliced conv
      weight), gets the plain full kernel: exact at every input size.
    """
    n = act_num
    if torch.jit.is_tracing():
        return weight, [n, n]
    ph, pw = min(n, x.shape[-2] - 1), min(n, x.shape[-1] - 1)
    if ph == n and pw == n:
        return weight, [n, n]
    return weight[:, :, n - ph : n + ph + 1, n - pw : n + pw + 1], [ph, pw]


torch.fx.wrap("series_taps")  # an FX leaf: FX graphs call it with real tensors (its sizes are unknown when tracing)


class SeriesActivation(nn.Module):
    """Series-informed activation: ReLU, then a depthwise (2n+1)x(2n+1) conv, then BN (train form).

    Deploy form: the BN is folded into the depthwise weight and a bias. Keys: ``weight`` [C,1,k,k] and ``bn.*``
    (train) or ``bias`` (deploy), as in the original. The kernel is trimmed on tiny maps (``series_taps``).
    """

    __constants__ = ["deploy"]  # lets TorchScript compile only the branch of this form

    def __init__(self, dim: int, act_num: int = 3, deploy: bool = False):
        super().__init__()
        self.dim = dim
        self.act_num = act_num
        self.deploy = deploy
        k = 2 * act_num + 1
        self.weight = nn.Parameter(torch.empty(dim, 1, k, k))
        nn.init.trunc_normal_(self.weight, std=0.02)
        if deploy:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.bias = None
            self.bn = nn.BatchNorm2d(dim, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # (TorchScript skips this block)
            if not self.deploy and kernels.fused_train_act(x):  # fused Triton forward + backward on CUDA
                return self.bn(kernels.dwconv_relu(x, self.weight))
        weight, padding = series_taps(self.weight, self.act_num, x)
        x = F.conv2d(F.relu(x), weight, self.bias, padding=padding, groups=self.dim)
        if self.deploy:
            return x
        return self.bn(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN into the depthwise weight and a bias. Idempotent."""
        if self.deploy:
            return
        weight, bias = fold_bn_module(self.weight, None, self.bn)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        del self.bn
        self.deploy = True

    switch_to_deploy = reparameterize

    def extra_repr(self) -> str:
        return f"dim={self.dim}, act_num={self.act_num}, deploy={self.deploy}"


class ReLUActivation(nn.ReLU):
    """The activation without its series part (the ablation ``series_act=False``): a plain ReLU, no depthwise conv
    and no parameters, so neither form has ``act.*`` keys. ``reparameterize`` is a no-op, so that the layers convert
    the same way whichever activation they hold."""

    def reparameterize(self) -> None:
        """Nothing to fold."""

    switch_to_deploy = reparameterize


def make_activation(dim: int, act_num: int, deploy: bool = False, series: bool = True) -> nn.Module:
    """The activation after each layer: the series activation (default) or, with ``series=False``, a plain ReLU."""
    return SeriesActivation(dim, act_num, deploy=deploy) if series else ReLUActivation()


def make_pool(stride: int, ada_pool: int | None = None) -> nn.Module:
    """A layer's downsampling after its conv: none at stride 1, adaptive max pooling to ceil(side / stride)
    (``StridedAdaptiveMaxPool2d``) when ``ada_pool`` is non-zero (the ada_pool design), else MaxPool2d(stride)."""
    if stride == 1:
        return nn.Identity()
    if ada_pool:
        return StridedAdaptiveMaxPool2d(stride)
    return nn.MaxPool2d(stride)

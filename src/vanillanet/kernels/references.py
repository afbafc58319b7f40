"""Plain PyTorch references of every fused kernel: the same maths, op by op, computed in fp32.

Each kernel in this package is tested against the function of the same name here. Inputs may be fp16/bf16/fp32
and NCHW or channels_last; the result is returned in the input's dtype (the kernels accumulate in fp32 and round
once at the end, as these references do).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["conv_gemm", "dwconv_relu", "pack_taps", "series_act", "unpack_taps"]


def pack_taps(weight: torch.Tensor) -> torch.Tensor:
    """Depthwise weight [C, 1, k, k] -> [k*k, C] fp32 (tap-major, channels contiguous: the kernels' layout)."""
    c, _, kh, kw = weight.shape
    return weight.detach().reshape(c, kh * kw).t().float().contiguous()


def unpack_taps(taps: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of ``pack_taps``: [k*k, C] -> [C, 1, k, k]."""
    return taps.t().reshape(-1, 1, k, k)


def series_act(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, pool: int = 1,
               mean: bool = False, relu: bool = True) -> torch.Tensor:
    """Deploy activation of one layer: max-pool (kernel = stride = ``pool``), ReLU, depthwise k x k conv with zero
    padding k//2, plus ``bias``; with ``mean`` also the global average over the map (returns [N, C]). ``relu=False``
    skips the ReLU (for inputs that are non-negative already)."""
    k = int(round(taps.shape[0] ** 0.5))
    z = x.float()
    if pool > 1:
        z = F.max_pool2d(z, pool)
    z = F.relu(z) if relu else z
    y = F.conv2d(z, unpack_taps(taps.float(), k), None if bias is None else bias.float(), padding=k // 2,
                 groups=z.shape[1])
    if mean:
        return y.mean((2, 3)).to(x.dtype)
    return y.to(x.dtype).contiguous(memory_format=torch.channels_last)


def dwconv_relu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Train-form activation conv without its BN: depthwise conv (weight [C, 1, k, k], padding k//2) of ReLU(x)."""
    k = weight.shape[-1]
    y = F.conv2d(F.relu(x.float()), weight.float(), padding=k // 2, groups=x.shape[1])
    return y.to(x.dtype)


def conv_gemm(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor, patch: int = 1, pool: int = 1,
              relu: bool = False) -> torch.Tensor:
    """Patchify conv (kernel = stride = ``patch``, no padding) as a GEMM: ``w2d`` is [Cout, patch*patch*Cin] with
    the K axis ordered (kh, kw, cin); plus ``bias``; then max-pool (kernel = stride = ``pool``), then ReLU if
    ``relu``."""
    cin = x.shape[1]
    w = w2d.float().reshape(w2d.shape[0], patch, patch, cin).permute(0, 3, 1, 2)
    y = F.conv2d(x.float(), w, bias.float(), stride=patch)
    if pool > 1:
        y = F.max_pool2d(y, pool)
    if relu:
        y = F.relu(y)
    return y.to(x.dtype).contiguous(memory_format=torch.channels_last)

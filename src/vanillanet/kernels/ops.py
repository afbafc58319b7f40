"""The kernels registered as PyTorch custom ops (``torch.ops.vanillanet.*``), so that autograd, torch.compile
(fullgraph) and CUDA-graph capture see them as single opaque ops. Each op has a fake (meta) implementation for
tracing; ``dwconv_relu`` has autograd through its fused backward op.

Ops (all tensors channels_last NCHW unless noted):
- ``series_act(x, taps, bias?, pool, mean, relu)``: max-pool + ReLU + depthwise conv + bias (+ global mean ->
  [N, C]); ``relu=False`` when the GEMM before applied it.
- ``conv_gemm(x, w2d, bias, patch, pool, relu)``: 1x1 / patchify conv as a GEMM with bias, 2x2 max-pool and ReLU in
  its epilogue.
- ``dwconv_relu(x, weight)`` / ``dwconv_relu_backward(grad, x, weight)``: the train form's ReLU + depthwise conv.

Not using ``from __future__ import annotations``: ``torch.library`` reads the schema from real annotations.
"""

import math
from typing import Optional

import torch
import triton

from . import act, gemm

__all__ = ["INTERPRETED", "conv_gemm", "dwconv_relu", "dwconv_relu_backward", "series_act"]


def _interpret_flag() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


INTERPRETED: bool = _interpret_flag()  # fixed when the kernels above were defined


def _check_device(t: torch.Tensor, op: str) -> None:
    want = "cpu" if INTERPRETED else "cuda"
    if t.device.type != want:
        how = ("set TRITON_INTERPRET=1 before importing triton to run them on the CPU" if want == "cuda"
               else "this process runs them in Triton's interpreter, on CPU tensors only")
        raise RuntimeError(f"vanillanet::{op}: the fused kernels run on {want} tensors here, got a "
                           f"{t.device.type} tensor ({how})")


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _kernel_size(taps: torch.Tensor) -> int:
    k = math.isqrt(taps.shape[0])
    if k * k != taps.shape[0] or k % 2 == 0:
        raise ValueError(f"expected k*k taps with odd k, got {taps.shape[0]}")
    return k


# ---------------------------------------------------------------------------------------------- inference
@torch.library.custom_op("vanillanet::series_act", mutates_args=())
def series_act(x: torch.Tensor, taps: torch.Tensor, bias: Optional[torch.Tensor], pool: int,  # noqa: UP045
               mean: bool, relu: bool = True) -> torch.Tensor:
    """ReLU(maxpool(x)) convolved depthwise with ``taps`` ([k*k, C] fp32) plus ``bias`` (fp32 or None); without
    the ReLU for ``relu=False`` (inputs already non-negative)."""
    _check_device(x, "series_act")
    _kernel_size(taps)
    return act.series_act(_cl(x), taps.contiguous().float(), None if bias is None else bias.contiguous().float(),
                          pool, mean, INTERPRETED, relu=relu)


@series_act.register_fake
def _(x, taps, bias, pool, mean, relu=True):
    n, c, h, w = x.shape
    if mean:
        return x.new_empty((n, c))
    return torch.empty((n, c, h // pool, w // pool), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


@torch.library.custom_op("vanillanet::conv_gemm", mutates_args=())
def conv_gemm(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor, patch: int, pool: int,
              relu: bool = False) -> torch.Tensor:
    """Patchify (``patch`` x ``patch``, stride ``patch``) or 1x1 conv as a GEMM, + bias, then max-pool ``pool``,
    then ReLU with ``relu``."""
    _check_device(x, "conv_gemm")
    return gemm.conv_gemm(_cl(x), w2d.contiguous().to(x.dtype), bias.contiguous().float(), patch, pool, INTERPRETED,
                          relu=relu)


@conv_gemm.register_fake
def _(x, w2d, bias, patch, pool, relu=False):
    n, _, h, w = x.shape
    s = patch * pool
    return torch.empty((n, w2d.shape[0], h // s, w // s), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------- training
def _taps(weight: torch.Tensor) -> torch.Tensor:
    c, _, kh, kw = weight.shape
    return weight.reshape(c, kh * kw).t().float().contiguous()


@torch.library.custom_op("vanillanet::dwconv_relu", mutates_args=())
def dwconv_relu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise conv (weight [C, 1, k, k], padding k//2, no bias) of ReLU(x), in x's dtype, channels_last."""
    _check_device(x, "dwconv_relu")
    return act.dwconv_relu_forward(_cl(x), _taps(weight), INTERPRETED)


@dwconv_relu.register_fake
def _(x, weight):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op("vanillanet::dwconv_relu_backward", mutates_args=())
def dwconv_relu_backward(grad: torch.Tensor, x: torch.Tensor,
                         weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight) of ``dwconv_relu``; grad_x in x's dtype, grad_weight in weight's dtype."""
    _check_device(x, "dwconv_relu_backward")
    c, _, k, _ = weight.shape
    gx, gtaps = act.dwconv_relu_backward(_cl(grad.to(x.dtype)), _cl(x), _taps(weight), INTERPRETED)
    return gx, gtaps.t().reshape(c, 1, k, k).to(weight.dtype).contiguous()


@dwconv_relu_backward.register_fake
def _(grad, x, weight):
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return gx, torch.empty_like(weight, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, weight = inputs
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    gx, gw = dwconv_relu_backward(grad, x, weight)
    return (gx if ctx.needs_input_grad[0] else None), (gw if ctx.needs_input_grad[1] else None)


dwconv_relu.register_autograd(_backward, setup_context=_setup_context)

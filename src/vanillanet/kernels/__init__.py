"""Fused Triton kernels for VanillaNet, their PyTorch references, and the switch that turns them on and off.

What is here (see README.md beside this file for the maths and layouts):

- ``build_fused(model, example)``: the deploy form run by fused kernels (patchify-GEMM stem, 1x1-conv GEMMs with
  bias and 2x2 max-pool in the epilogue, one kernel for pool + ReLU + depthwise conv + bias, average pool fused
  into the last activation), block sizes tuned per shape on the spot, the whole forward captured in a CUDA graph.
- ``dwconv_relu(x, weight)``: the train form's activation conv (ReLU + depthwise k x k) as a custom op with a fused
  Triton backward; ``SeriesActivation`` calls it on CUDA channels_last inputs while the switch is on.
- The switch, modelled on timm's fused-attention switch: ``use_fused_kernels(x)`` says whether a fast path may run
  on ``x``. Off when the environment variable ``VANILLANET_FUSED_KERNELS=0`` is set, after
  ``set_fused_kernels(False)``, inside ``with fused_kernels(False):`` / ``with reference():`` (the fp32 reference
  that every fast path is checked against), while TorchScript, torch.fx, torch.jit.trace, ONNX or torch.export
  trace the model (they must see plain ops), where Triton is missing, and for tensors the kernels cannot run on.
  torch.compile keeps it on: the kernels are registered custom ops (``torch.ops.vanillanet.*``) it can trace.

Devices: the kernels run on CUDA tensors, and on CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1``
set before Triton is first imported; that is how the tests check every kernel without a GPU). Triton decides
interpreted or compiled once per process, when a kernel is defined, so one process serves one of the two.
Importing this package never fails: where Triton cannot be imported the switch simply stays off.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.fx._symbolic_trace as _fx

from ..util.errors import first_line
from ..util.validation import env_flag

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ENV_VAR", "available", "available_on", "build_fused", "disabled", "dwconv_relu", "fused_kernels",
           "fused_train_act", "interpreted", "reference", "set_fused_kernels", "unavailable_reason",
           "use_fused_kernels"]

_log = logging.getLogger(__name__)

ENV_VAR = "VANILLANET_FUSED_KERNELS"


def _env_enabled() -> bool:
    """The switch's initial value: on unless the environment variable says 0/false/no/off; ConfigError for a value
    that is not a switch (through the validation layer, ``util.validation.env_flag``)."""
    return env_flag(ENV_VAR, True)


_enabled: bool = _env_enabled()

try:  # the kernels need Triton; everything else in the package does not
    from . import ops as _ops
except Exception as err:  # ImportError where Triton is missing; anything else from a Triton that does not fit
    _ops = None
    _REASON = f"Triton kernels unavailable ({type(err).__name__}: {first_line(err, 160)})"
    _log.debug(_REASON)
else:
    _REASON = ""


def available() -> bool:
    """True when the kernels could be defined (Triton importable and compatible)."""
    return _ops is not None


def unavailable_reason() -> str:
    """Why ``available()`` is False (empty when it is True)."""
    return _REASON


def interpreted() -> bool:
    """True when the kernels were defined under Triton's interpreter (they then run on CPU tensors only)."""
    return _ops is not None and _ops.INTERPRETED


def available_on(device: torch.device | str) -> bool:
    """Whether fused kernels can run on ``device`` now: switch on, and a CUDA device (or the CPU when the kernels
    were defined under Triton's interpreter)."""
    return use_fused_kernels() and torch.device(device).type == ("cpu" if _ops.INTERPRETED else "cuda")


def set_fused_kernels(enabled: bool) -> None:
    """Turn the fused kernels on or off for this process (the environment variable sets the initial value)."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def fused_kernels(enabled: bool = True) -> Iterator[None]:
    """Context manager: fused kernels on (or off) inside the block, the previous setting restored after it."""
    global _enabled
    saved, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = saved


def reference() -> contextlib.AbstractContextManager[None]:
    """Context for computing a reference output: every fused path off (plain PyTorch ops only)."""
    return fused_kernels(False)


disabled = reference


_is_fx_tracing = getattr(_fx, "is_fx_symbolic_tracing", None) or _fx.is_fx_tracing  # the latter warns on torch 2.14


def _tracing() -> bool:
    """True while a tracer that must see plain ops is running (TorchScript, FX, jit.trace, ONNX, torch.export)."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    if _is_fx_tracing():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def use_fused_kernels(x: torch.Tensor | None = None) -> bool:
    """Whether a fused kernel may run now (and on ``x``, when given: a CUDA tensor, or a CPU tensor under the
    interpreter). Cheap and traceable by torch.compile, which keeps it on."""
    if not _enabled or _ops is None or _tracing():
        return False
    if x is None:
        return True
    if not isinstance(x, torch.Tensor):  # e.g. an FX proxy
        return False
    return x.device.type == ("cpu" if _ops.INTERPRETED else "cuda")


_TRAIN_DEVICES: tuple[str, ...] = ("cuda",)  # the CPU (interpreter) joins only in tests


def fused_train_act(x: torch.Tensor) -> bool:
    """Whether the train form's activation conv should run the fused ``dwconv_relu`` op on ``x``: switch on, a
    channels_last CUDA tensor, no tracer watching (``SeriesActivation.forward`` asks this)."""
    return (use_fused_kernels(x) and x.device.type in _TRAIN_DEVICES and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last))


def dwconv_relu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ReLU then depthwise k x k conv (weight [C, 1, k, k], zero padding k//2, no bias) by the fused kernel, with
    autograd; channels_last output in ``x``'s dtype. Check ``use_fused_kernels(x)`` first."""
    if _ops is None:
        raise RuntimeError(_REASON)
    return _ops.dwconv_relu(x, weight)


def build_fused(model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits of a deploy-form VanillaNet computed by the fused kernels, for inputs shaped like ``example``.

    ``model``: deploy form, eval mode, on the target device, in the target dtype (channels_last). ``example``: an
    input of the fixed shape, dtype and layout. On CUDA the block sizes are tuned on the spot (cached per shape)
    and the whole forward is captured in a CUDA graph; under the interpreter it runs eagerly. Raises
    ``ConversionError`` (one line) for what it cannot run. Cheap to call again for the same shapes.
    """
    from .fused_net import build_fused as _build

    return _build(model, example)

"""OpenVINO on the CPU: a compiled model of an ONNX export (``openvino_compiled``) and the one way to call it
(``openvino_runner``).

OpenVINO reads the ONNX graph, fuses it and compiles it for the CPU it runs on (oneDNN's kernels: AVX-512, AMX).
Its ``INFERENCE_PRECISION_HINT`` says what the layers compute in: ``f32`` is the exact path; on a CPU with native
bf16 (AVX512_BF16 or AMX) OpenVINO's own default is ``bf16`` (inputs and outputs stay fp32, the convolutions run in
bf16), which is why a plain ``compile_model`` call there is not an fp32 result. We always pass the hint explicitly.
As with onnxruntime (``onnx_graph.onnx_runner``), no torch op runs around the call: torch's OpenMP threads would
spin on the cores OpenVINO's threads need.

OpenVINO's CPU plugin (2026.4) installs alternate signal stacks on the calling thread (``sigaltstack``) and can
leave one installed that it later frees; Python runs its signal handlers on that stack (``SA_ONSTACK``), so the next
Python-level signal (a DataLoader worker's SIGCHLD, for one) kills the process with SIGSEGV. Every OpenVINO call
here is therefore wrapped in ``kept_signal_stack``, which puts back the thread's alternate stack as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..util.errors import ConfigError, ConversionError, first_line

__all__ = ["PRECISION_HINTS", "kept_signal_stack", "openvino_compiled", "openvino_runner"]

PRECISION_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16"}  # dtype -> INFERENCE_PRECISION_HINT


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """The calling thread's alternate signal stack put back after the block as it was before (Linux; elsewhere a
    no-op). See the module docstring for why."""
    if _LIBC is None:
        yield
        return
    before = _StackT()
    _LIBC.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        _LIBC.sigaltstack(ctypes.byref(before), None)


def openvino_compiled(onnx: bytes, dtype: torch.dtype = torch.float32, threads: int | None = None,
                      shape: tuple[int, ...] | None = None):
    """An OpenVINO model compiled for the CPU from ONNX bytes: latency mode (one stream), ``threads`` inference
    threads (default: torch's), layers computed in ``dtype`` (``PRECISION_HINTS``; inputs and outputs are fp32);
    for one input ``shape`` when given (static: OpenVINO plans its kernels and memory for it), else for the
    export's own (a dynamic batch)."""
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("openvino is not installed; run pip install 'vanillanet[openvino]'") from None
    if dtype not in PRECISION_HINTS:
        raise ConfigError(f"OpenVINO computes in fp32 or bf16 here, not {dtype}; use dtype=torch.float32")
    config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[dtype], "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
    try:
        with kept_signal_stack():
            model = ov.convert_model(io.BytesIO(onnx))
            if shape is not None:
                model.reshape(list(shape))
            return ov.Core().compile_model(model, "CPU", config)
    except Exception as err:  # OpenVINO raises its own RuntimeError subtypes for graphs it cannot take
        raise ConversionError(f"OpenVINO cannot compile the ONNX model ({first_line(err, 200)}); use another "
                              "backend") from None


def openvino_runner(compiled, other_shapes: Callable[[], Any] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``compiled`` as a function: image batch (any layout, on the CPU) -> fp32 logits, a CPU tensor the caller
    owns. A model compiled for one shape (``openvino_compiled(shape=...)``) runs that shape; other shapes run on
    ``other_shapes()``, a dynamic-shape model compiled on the first such call. Only numpy runs around the call (see
    the module docstring); OpenVINO copies its output into a fresh array, which is wrapped without a copy."""
    request = compiled.create_infer_request()
    partial = compiled.input(0).get_partial_shape()
    fixed = tuple(partial.to_shape()) if partial.is_static else None
    dynamic: list[Any] = []  # the request of ``other_shapes()``, made on first use

    def run(x: torch.Tensor) -> torch.Tensor:
        a = np.ascontiguousarray((x if x.dtype == torch.float32 else x.float()).detach().cpu().numpy())
        req = request
        if fixed is not None and a.shape != fixed:
            if other_shapes is None:
                raise ConfigError(f"this OpenVINO model was compiled for input shape {fixed}, not {a.shape}; "
                                  "build it for that shape")
            if not dynamic:
                dynamic.append(other_shapes().create_infer_request())
            req = dynamic[0]
        with kept_signal_stack():
            out = req.infer(a, share_inputs=True, share_outputs=False)
        return torch.from_numpy(out[0])

    run.compiled = compiled  # for inspection (precision, threads, shape)
    return run

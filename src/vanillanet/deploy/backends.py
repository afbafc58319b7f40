"""The backend table: every way vanillanet runs a model for inference, and the named bench modes built from it.

A **backend** is how a model is executed (plain eager calls, torch.compile, a CUDA graph, onnxruntime, ...). Each
entry declares what it supports (devices, dtypes, any batch size or only the shape it was built for, exact or an
approximation) and a builder ``build(request) -> runner`` that returns a callable images -> logits for one prepared
model. ``fast_inference`` (``inference.py``) verifies every runner against the fp32 eager output and, for
``backend="auto"``, times the exact candidates side by side; ``vanillanet bench`` measures named **modes**, which
are (backend, dtype, layout) combinations: ``paper`` (the published protocol), ``nchw`` (the eager backend in fp32
NCHW), ``channels_last``, ``fp16``, ``bf16``, or any backend name, optionally with a dtype suffix (``compile:bf16``).
One word, one meaning: ``eager`` is the backend (plain PyTorch calls, channels_last like every backend that needs a
layout), so the mode ``eager`` is the same as ``channels_last``; ``nchw`` is the mode that keeps the default layout.

``int8`` and ``openvino_int8`` are the approximate entries (``exact=False``): onnxruntime's static int8
(``int8.py``), and the same quantization (QDQ format) run by OpenVINO. They are never ``auto`` candidates nor part
of ``--modes best``; asked for by name they calibrate their activation ranges on the ``calibration`` batches given,
or on noise (right for speed, not for accuracy: ``vanillanet quantize`` calibrates on real images and measures
both). bf16 is a dtype, not an entry: ``openvino`` (and ``compile``, ``eager``) in ``dtype=torch.bfloat16`` is
chosen only when the caller asks for bf16 (docs/inference.md: bf16 on CPUs).

Adding a backend is one entry in ``BACKENDS`` (and its test); it is then a ``fast_inference`` backend, an
``auto`` candidate (unless ``auto=False``) and a bench mode.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .. import kernels
from ..util.cudagraph import capture
from ..util.errors import ConfigError
from .int8 import Int8Config, noise_batches, quantize_bytes
from .onnx_graph import onnx_bytes, onnx_runner, onnx_session, relu_before_maxpool
from .openvino_model import openvino_compiled, openvino_runner

__all__ = ["BACKENDS", "DTYPES", "EXACT_BACKENDS", "MODES", "Backend", "BuildRequest", "Mode", "best_modes",
           "dtype_supported", "exact_fp32", "parse_modes", "prepare_input", "prepare_model"]

Runner = Callable[[torch.Tensor], torch.Tensor]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class BuildRequest:
    """What a builder gets: ``model`` in eval mode on ``device``, already in ``dtype`` and the layout of
    ``example`` (a zero input of the fixed shape); ``calibration`` batches for backends that need them (int8)."""

    model: nn.Module
    example: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    calibration: Iterable[torch.Tensor] | None = None


@dataclass(frozen=True)
class Backend:
    """One way to execute a model; see the module docstring."""

    name: str
    summary: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    build: Callable[[BuildRequest], Runner]
    any_batch: bool = False  # serves any batch size; otherwise only the built shape (others run eagerly)
    input_dtype: torch.dtype | None = None  # what the runner takes (None: the requested dtype)
    any_layout: bool = False  # takes inputs in any memory layout (else channels_last is prepared for it)
    fresh_output: bool = False  # every call returns a new tensor (else outputs are copied: buffers may be reused)
    exact: bool = True  # False: approximates the model (int8), so it is never chosen by ``auto``
    tol: float | None = None  # fast_inference's default gate for this backend (None: by dtype)
    computes_in: str | None = None  # what it computes in, where that is not the requested dtype (bench records)
    auto: bool = True  # a candidate of ``backend="auto"``
    requires: tuple[str, ...] = ()  # modules that must be importable
    extra: str = "export"  # the optional dependency set that installs them: pip install 'vanillanet[extra]'
    check: Callable[[torch.device, torch.dtype], str | None] | None = None  # more conditions: why not, or None
    auto_devices: tuple[str, ...] = ("cpu", "cuda")  # where ``auto`` (and ``--modes best``) considers it

    def unavailable(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """Why this backend cannot run here (a one-line reason with the fix), or None."""
        reason = self.check(device, dtype) if self.check is not None else None
        if reason:
            return reason
        if device.type not in self.devices:
            return f"the {self.name} backend runs on {' or '.join(self.devices)} only, not {device.type}"
        if dtype not in self.dtypes:
            names = ", ".join(DTYPE_NAMES[d] for d in self.dtypes)
            return f"the {self.name} backend runs in {names} only, not {DTYPE_NAMES.get(dtype, dtype)}"
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"the {self.name} backend needs {' and '.join(missing)}; run pip install 'vanillanet[{self.extra}]'"
        return None

    def default_dtype(self, device: torch.device) -> torch.dtype:
        if device.type == "cuda" and torch.float16 in self.dtypes:
            return torch.float16
        return torch.float32 if torch.float32 in self.dtypes else self.dtypes[0]


# ---- builders ---------------------------------------------------------------------------------------------------
def _eager(req: BuildRequest) -> Runner:
    return req.model


def _compile(req: BuildRequest) -> Runner:
    """torch.compile with frozen weights (constant-folded, pre-packed for oneDNN on the CPU); on CUDA inductor also
    wraps the graph in CUDA graphs. Output buffers may be reused, so callers copy them (``FastClassifier`` does)."""
    options = {"freezing": True}
    if req.device.type == "cuda":
        options["triton.cudagraphs"] = True
    return torch.compile(req.model, options=options, dynamic=False, fullgraph=True)


def _cudagraph(req: BuildRequest) -> Runner:
    """The forward pass captured in a CUDA graph; calls copy the input in and replay."""
    return capture(req.model, req.example)


def _fused(req: BuildRequest) -> Runner:
    """The deploy form run by vanillanet's fused Triton kernels (``kernels/``), in a CUDA graph on a GPU."""
    return kernels.build_fused(req.model, req.example)


def _onnx_fp32(req: BuildRequest) -> bytes:
    return onnx_bytes(req.model, req.example.shape[-1], in_chans=req.example.shape[1],
                      deploy=getattr(req.model, "deploy", True))


def _onnxruntime(req: BuildRequest) -> Runner:
    """The model exported to ONNX (fp32, dynamic batch) in an onnxruntime CPU session, called with no torch op
    around it (``onnx_graph.onnx_runner``)."""
    return onnx_runner(onnx_session(_onnx_fp32(req)))


def _int8(req: BuildRequest) -> Runner:
    """The ONNX export quantized to static int8 (``int8.quantize_bytes``) in an onnxruntime CPU session; ranges
    from ``req.calibration``, else from noise shaped like the example."""
    calibration = req.calibration if req.calibration is not None else noise_batches(req.example.shape)
    return onnx_runner(onnx_session(quantize_bytes(_onnx_fp32(req), calibration)))


def _openvino(req: BuildRequest) -> Runner:
    """The model exported to ONNX (fp32) and compiled by OpenVINO for this CPU and the built input shape
    (``_openvino_for_shape``), computing in ``req.dtype`` (fp32, or bf16 on CPUs with native bf16; fp32 in and out
    either way), called with no torch op around it (``openvino_model.openvino_runner``). The graph gets the exact
    ReLU-before-max-pool rewrite first (``onnx_graph.relu_before_maxpool``): OpenVINO then fuses each ReLU into its
    conv (same outputs to the bit)."""
    fp32 = req.model if req.dtype == torch.float32 else copy.deepcopy(req.model).float()
    onnx = _onnx_fp32(dataclasses.replace(req, model=fp32))
    return _openvino_for_shape(_relu_first(onnx), req.dtype, tuple(req.example.shape))


def _openvino_for_shape(onnx: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> Runner:
    """The runner of ``onnx`` compiled for the built input shape (static shapes run ~2.5 % faster in bf16 at batch
    32 than the dynamic-batch graph, two compiled copies of each, interleaved; equal at batch 1), other batch sizes
    on a dynamic-batch model compiled when first needed."""
    return openvino_runner(openvino_compiled(onnx, dtype, shape=shape),
                           other_shapes=lambda: openvino_compiled(onnx, dtype))


def _relu_first(onnx_data: bytes) -> bytes:
    """ONNX bytes with ``onnx_graph.relu_before_maxpool`` applied."""
    import onnx

    return relu_before_maxpool(onnx.load_from_string(onnx_data)).SerializeToString()


def _openvino_int8(req: BuildRequest) -> Runner:
    """The ONNX export quantized to static int8 like ``int8`` (``int8.quantize_bytes``, ranges from
    ``req.calibration`` or noise) but in the QDQ format, which OpenVINO reads and runs with the CPU's int8
    instructions (VNNI, AMX); fp32 in and out."""
    calibration = req.calibration if req.calibration is not None else noise_batches(req.example.shape)
    int8 = quantize_bytes(_onnx_fp32(req), calibration, Int8Config(format="qdq"))
    return _openvino_for_shape(int8, torch.float32, tuple(req.example.shape))


def _openvino_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type == "cpu" and dtype == torch.bfloat16 and not dtype_supported(device, dtype):
        return ("the openvino backend runs bf16 only on CPUs with native bf16 (AVX512_BF16 or AMX), which this one "
                "lacks; use dtype=torch.float32")
    return None


def _fused_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    if kernels.available_on(device):
        return None
    if not kernels.available():
        return f"the fused backend needs Triton ({kernels.unavailable_reason()})"
    return ("the fused backend runs on CUDA devices (on the CPU only in Triton's interpreter, TRITON_INTERPRET=1 set "
            "before triton is imported), with the kernels switched on (VANILLANET_FUSED_KERNELS)")


_ALL = (torch.float32, torch.float16, torch.bfloat16)
# The table, simplest first (``auto`` prefers the simpler of two backends that time alike).
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("eager", "plain PyTorch calls", ("cpu", "cuda"), _ALL, _eager, any_batch=True, fresh_output=True),
    Backend("compile", "torch.compile with frozen weights (CUDA graphs on CUDA)", ("cpu", "cuda"), _ALL, _compile),
    Backend("cudagraph", "the forward pass captured in a CUDA graph", ("cuda",), _ALL, _cudagraph),
    Backend("onnxruntime", "onnxruntime CPU session of the ONNX export", ("cpu",), (torch.float32,), _onnxruntime,
            any_batch=True, input_dtype=torch.float32, any_layout=True, fresh_output=True,
            requires=("onnxruntime", "onnxscript")),
    Backend("openvino", "OpenVINO compiled for this CPU from the ONNX export (fp32 exactly, INFERENCE_PRECISION_HINT "
            "f32; or bf16 on CPUs with native bf16)", ("cpu",), (torch.float32, torch.bfloat16), _openvino,
            any_batch=True, input_dtype=torch.float32, any_layout=True, fresh_output=True,
            requires=("openvino", "onnxscript"), extra="openvino", check=_openvino_unavailable),
    Backend("fused", "vanillanet's fused Triton kernels in a CUDA graph (the CPU only under TRITON_INTERPRET=1)",
            ("cuda", "cpu"), _ALL, _fused, check=_fused_unavailable, auto_devices=("cuda",)),
    # tol 1.0: a gate against broken paths, not an accuracy claim (int8 is judged by its top-1 on real images)
    Backend("int8", "onnxruntime static int8 of the ONNX export (fp32 in and out; by name only)", ("cpu",),
            (torch.float32,), _int8, any_batch=True, input_dtype=torch.float32, any_layout=True, fresh_output=True,
            exact=False, auto=False, tol=1.0, computes_in="int8", requires=("onnxruntime", "onnxscript")),
    Backend("openvino_int8", "OpenVINO running the same static int8 quantization in the QDQ format (fp32 in and out; "
            "by name only)", ("cpu",), (torch.float32,), _openvino_int8, any_batch=True, input_dtype=torch.float32,
            any_layout=True, fresh_output=True, exact=False, auto=False, tol=1.0, computes_in="int8",
            requires=("openvino", "onnxruntime", "onnxscript"), extra="openvino,export"),
)}
# What ``eval`` and ``predict`` offer: an approximate backend calibrated on noise would report a wrong accuracy.
EXACT_BACKENDS = tuple(name for name, b in BACKENDS.items() if b.exact)


# ---- preparing a model and its input ----------------------------------------------------------------------------
def prepare_model(model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool) -> nn.Module:
    """An eval-mode copy of ``model`` on ``device`` in ``dtype`` and the layout (``model`` is not modified)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return copy.deepcopy(model).eval().to(device=device, dtype=dtype, memory_format=fmt)


def prepare_input(x: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device, dtype, non_blocking=True).contiguous(memory_format=fmt)


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """The fp32 reference every fast path is checked against: plain PyTorch ops (the fused kernels switched off)
    with TF32 off on CUDA (PyTorch allows it for convolutions by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with kernels.reference():
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def dtype_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``device`` has fast kernels for ``dtype`` (half precision on CPUs needs AVX-512 bf16/fp16)."""
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


# ---- bench modes ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mode:
    """A named (backend, dtype, layout) combination; ``label`` is the name as given (``compile:bf16``)."""

    label: str
    backend: str
    dtype: torch.dtype
    channels_last: bool = True
    sync_each: bool = False  # synchronise after every call (the paper's latency protocol)
    batch1_only: bool = False


# The combinations that are not just "<backend>[:dtype]" in channels_last.
MODES: dict[str, Mode] = {m.label: m for m in (
    Mode("paper", "eager", torch.float32, channels_last=False, sync_each=True, batch1_only=True),
    Mode("nchw", "eager", torch.float32, channels_last=False),
    Mode("channels_last", "eager", torch.float32),
    Mode("fp16", "eager", torch.float16),
    Mode("bf16", "eager", torch.bfloat16),
)}


def _mode(name: str, device: torch.device) -> Mode:
    if name in MODES:
        mode = MODES[name]
    else:
        kind, _, dt = name.partition(":")
        backend = BACKENDS.get(kind)
        if backend is None:
            raise ConfigError(f"unknown mode {name!r}; choose from {', '.join([*MODES, *BACKENDS])} or best "
                              "(backends take :fp32, :fp16 or :bf16)")
        if dt and dt not in DTYPES:
            raise ConfigError(f"bad mode {name!r}: the dtype suffix must be :fp32, :fp16 or :bf16")
        mode = Mode(name, kind, DTYPES[dt] if dt else backend.default_dtype(device),
                    channels_last=not backend.any_layout)
    reason = BACKENDS[mode.backend].unavailable(device, mode.dtype)
    if reason:
        raise ConfigError(f"mode {name}: {reason}; drop it or use --modes best on this machine")
    if not dtype_supported(device, mode.dtype):
        raise ConfigError(f"mode {name} needs {DTYPE_NAMES[mode.dtype]} support, which this {device.type} lacks; "
                          "drop it or use --modes best")
    return mode


def best_modes(device: torch.device) -> list[str]:
    """Every mode worth running on ``device``: the fixed combinations whose dtype has fast kernels here, then every
    exact ``auto`` backend in its default dtype (and in bf16 where supported)."""
    names = [n for n, m in MODES.items() if dtype_supported(device, m.dtype)]
    for b in BACKENDS.values():
        if b.name == "eager" or not (b.auto and b.exact) or device.type not in b.auto_devices \
                or b.unavailable(device, b.default_dtype(device)):
            continue
        names.append(b.name)
        bf16_ok = not b.unavailable(device, torch.bfloat16) and dtype_supported(device, torch.bfloat16)
        if device.type == "cpu" and bf16_ok:
            names.append(f"{b.name}:bf16")
    return names


def parse_modes(spec: str, device: torch.device) -> list[Mode]:
    """``"paper,compile:bf16,best"`` -> Modes (duplicates dropped); unknown or impossible modes raise ConfigError."""
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        names += best_modes(device) if item == "best" else [item]
    modes: list[Mode] = []
    for name in names:
        mode = _mode(name, device)
        if mode not in modes:
            modes.append(mode)
    if not modes:
        raise ConfigError("no modes given; pass e.g. --modes paper,compile or --modes best")
    return modes

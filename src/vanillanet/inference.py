"""A fast, verified inference path: ``fast_inference(model, ...)`` returns a ``FastClassifier``.

What makes the deploy form fast differs by device. The network is a 4x4 stem conv, then per layer one big 1x1
conv (a GEMM), a max pool and a depthwise 7x7 conv; at batch 1 on a CPU it is compute- and weight-bandwidth-bound.
On the CPU, what pays is not re-packing those large weights into oneDNN's blocked layout on every call:
torch.compile with frozen weights (inductor's ``freezing``) and onnxruntime both pack them once, and channels_last
helps eager's depthwise conv and pooling. On a GPU, fp16/bf16 with channels_last uses tensor cores, and a CUDA
graph removes the per-kernel launch cost that dominates at batch 1.

Every path is checked against the fp32 NCHW eager output of the deploy form on a random batch; the relative error
``max |out - ref| / max |ref|`` is kept in ``.max_rel_err``. The fast path serves the fixed shape it was built for
(``batch_size`` x ``in_chans`` x ``image_size``^2); other shapes run eagerly in the same dtype and layout
(onnxruntime also takes any batch size).

``backend="auto"`` builds every candidate, then times them side by side (interleaved rounds, median) and keeps the
simplest one within 3 % of the fastest: differences below the timing noise are no reason for more machinery. The
``int8`` backend (onnxruntime, static int8) changes the numbers, so it is used only when asked for.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, ConversionError, VanillaNetError
from .reparam import rel_err, reparameterize_model
from .timing import interleaved_ms, pick_fastest

__all__ = ["BACKENDS", "EXACT_BACKENDS", "FastClassifier", "check_input_size", "fast_inference", "load_model",
           "min_input_size", "rel_err"]

_log = logging.getLogger(__name__)

EXACT_BACKENDS = ("auto", "eager", "compile", "cudagraph", "onnxruntime")  # fp32's numbers (within the dtype)
BACKENDS = (*EXACT_BACKENDS, "int8")
SIMPLEST_FIRST = ("eager", "onnxruntime", "compile", "cudagraph")  # auto's tie-break, least machinery first
ONNX_BACKENDS = ("onnxruntime", "int8")  # fp32 NCHW numpy in, a fresh output array out, any batch size
REUSED_OUTPUT = ("compile", "cudagraph")  # outputs live in buffers that the next call overwrites
FP32_TOL = 1e-4
HALF_TOL = 1e-1  # a gate against broken paths (overflow, NaN), not an accuracy claim: bf16 keeps 8 bits
INT8_TOL = 1.0  # likewise: int8 calibrated on noise is judged by top-1 on real data (vanillanet quantize)
AUTO_ROUNDS, AUTO_ROUND_S = 5, 0.2  # auto's timing: interleaved rounds of about this many seconds per candidate


def load_model(name: str | None, checkpoint: str | Path | None = None, **kwargs) -> nn.Module:
    """A VanillaNet by variant name with random weights, or loaded from ``checkpoint`` (any supported layout, EMA
    weights by default; without ``name`` the variant is inferred from the file). ``kwargs`` go to the model."""
    from .checkpoint import create_model

    if checkpoint is None and name is None:
        raise ConfigError("no model given; pass --model NAME (random weights) or --checkpoint PATH")
    return create_model(name, checkpoint, **kwargs)


def min_input_size(model: nn.Module) -> int:
    """The smallest square input (pixels) for which every pooling of a VanillaNet still has an output (1 for
    other models, which are not checked)."""
    strides = getattr(model, "strides", None)
    if strides is None or not hasattr(model, "ada_pool"):
        return 1
    for n in range(1, 4097):
        if _spatial_ok(model, n):
            return n
    return 4097


def _spatial_ok(model: nn.Module, n: int) -> bool:
    stride, pad = (3, 1) if model.ada_pool is not None else (4, 0)
    s = (n + 2 * pad - 4) // stride + 1
    if s < 1:
        return False
    for i, st in enumerate(model.strides):
        ada = model.ada_pool[i] if model.ada_pool is not None else 0
        if st != 1:
            s = ada if ada else s // st
        if s < 1:
            return False
    return True


def check_input_size(model: nn.Module, img_size: int, in_chans: int | None = None) -> None:
    """Raise ConfigError (one line) when ``img_size`` is too small for ``model``."""
    need = min_input_size(model)
    if img_size < need:
        raise ConfigError(f"input size {img_size} px is too small for this model (its stem and pooling need at least "
                          f"{need} px); use an image size of {need} or more")


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    """Disable TF32 on CUDA while computing an fp32 reference (PyTorch allows it for convolutions by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FastClassifier:
    """A deploy-form classifier run by one backend for a fixed input shape; call it on an image batch to get fp32
    logits on ``device``. Attributes: ``backend``, ``device``, ``dtype``, ``batch_size``, ``image_size``,
    ``in_chans``, ``max_rel_err`` (vs fp32 eager), ``timings_ms`` (what ``backend="auto"`` measured)."""

    def __init__(self, eager: nn.Module, fast: Callable[[torch.Tensor], torch.Tensor] | None, *, backend: str,
                 device: torch.device, dtype: torch.dtype, batch_size: int, image_size: int, in_chans: int,
                 any_batch: bool = False):
        self.eager, self._fast, self.backend = eager, fast, backend
        self.device, self.dtype = device, dtype
        self.batch_size, self.image_size, self.in_chans = batch_size, image_size, in_chans
        self._any_batch = any_batch
        self.max_rel_err: float = float("nan")
        self.timings_ms: dict[str, float] = {}

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, self.in_chans, self.image_size, self.image_size)

    def _prepare(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        """The input as the path wants it: fp32 as given for onnxruntime (its runner makes it NCHW with numpy,
        without waking torch's threads), else on ``device`` in ``dtype`` and channels_last."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(f"expected an image batch of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}; "
                              "pass normalised images with the model's number of channels")
        if fast and self.backend in ONNX_BACKENDS:
            return x.to("cpu", torch.float32)
        return x.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def _uses_fast(self, x: torch.Tensor) -> bool:
        if self._fast is None:
            return False
        if self._any_batch:
            return tuple(x.shape[1:]) == self.input_shape[1:]
        return tuple(x.shape) == self.input_shape

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_fast(x):
            out = self._fast(self._prepare(x))
            return out.to(device=self.device, dtype=torch.float32, copy=self.backend in REUSED_OUTPUT)
        return self.eager(self._prepare(x, fast=False)).to(device=self.device, dtype=torch.float32)

    def __repr__(self) -> str:
        return (f"FastClassifier(backend={self.backend!r}, device={str(self.device)!r}, dtype={self.dtype}, "
                f"input_shape={self.input_shape}, max_rel_err={self.max_rel_err:.2e})")


def _cudagraph(model: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Capture one forward pass in a CUDA graph (warm-up on a side stream first, as torch.cuda.graph requires);
    calls copy the input into the static buffer and replay."""
    static_in = example.clone()
    stream = torch.cuda.Stream(device=example.device)
    stream.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            model(static_in)
    torch.cuda.current_stream(example.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = model(static_in)

    def run(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out

    return run


def _compiled(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile with frozen weights (constant-folded, pre-packed for oneDNN on CPU); on CUDA inductor also
    wraps the graph in CUDA graphs. Output buffers may be reused, so callers copy them (``__call__`` does)."""
    options = {"freezing": True}
    if device.type == "cuda":
        options["triton.cudagraphs"] = True
    return torch.compile(model, options=options, dynamic=False, fullgraph=True)


def _onnxruntime(model: nn.Module, image_size: int, in_chans: int, deploy: bool = True
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    from .export import onnx_bytes, onnx_runner, onnx_session

    return onnx_runner(onnx_session(onnx_bytes(model, image_size, in_chans=in_chans, deploy=deploy)))


def _available(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The backends ``backend="auto"`` builds and times (never int8: it changes the numbers)."""
    if device.type == "cuda":
        return ["cudagraph"]
    names = ["compile"]
    if dtype == torch.float32:
        try:
            import onnxruntime  # noqa: F401

            names.append("onnxruntime")
        except ImportError:
            pass
    return names + ["eager"]


@torch.no_grad()
def fast_inference(
    model: nn.Module,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 1,
    image_size: int = 224,
    backend: str = "auto",
    *,
    tol: float | None = None,
    seed: int = 0,
    deploy: bool = True,
) -> FastClassifier:
    """Build a verified ``FastClassifier`` for ``model`` (any form; converted on a copy, the original untouched).

    ``backend``: ``eager`` (channels_last), ``compile`` (torch.compile with frozen weights), ``cudagraph`` (CUDA
    only), ``onnxruntime`` (CPU, fp32 only), ``int8`` (CPU, onnxruntime static int8 with activation ranges
    calibrated on random inputs: for speed, never chosen by ``auto``; ``vanillanet quantize`` calibrates on real
    images and measures the accuracy) or ``auto``: on CUDA a CUDA graph; on the CPU each available fp32 backend is
    built, verified and timed side by side on the fixed shape (interleaved rounds, median), and the simplest one
    within 3 % of the fastest kept. The output is checked against the fp32 NCHW eager output of the deploy form on
    a random batch (TF32 off); above ``tol`` (default 1e-4 for fp32, 1e-1 for fp16/bf16 and for fp32 on CUDA while
    TF32 convolutions are allowed, 1.0 for int8: gates that catch broken paths) an explicitly chosen backend raises
    ConversionError and ``auto`` skips it. ``deploy=False`` keeps the train form (to benchmark it).
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but is not available; use device='cpu'")
    if backend == "cudagraph" and device.type != "cuda":
        raise ConfigError("the cudagraph backend needs a CUDA device; use backend='compile' or 'auto' on the CPU")
    if backend in ONNX_BACKENDS and (device.type != "cpu" or dtype != torch.float32):
        raise ConfigError(f"the {backend} backend runs on the CPU and takes fp32 inputs; use dtype=torch.float32, "
                          "device='cpu'")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if tol is None:
        tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32  # PyTorch's default for CUDA convs
        tol = INT8_TOL if backend == "int8" else FP32_TOL if dtype == torch.float32 and not tf32 else HALF_TOL

    base = reparameterize_model(model) if deploy else copy.deepcopy(model).eval()
    base = base.to(device=device, dtype=torch.float32)
    in_chans = int(getattr(base, "in_chans", 3))
    check_input_size(base, image_size, in_chans)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_chans, image_size, image_size, generator=gen).to(device)
    with _exact_fp32():
        ref = base(x)
    eager = base.to(dtype=dtype, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels

    candidates = _available(device, dtype) if backend == "auto" else [backend]
    built: dict[str, FastClassifier] = {}
    for name in candidates:
        try:
            clf = _build(name, eager, device, dtype, batch_size, image_size, in_chans)
            clf.max_rel_err = rel_err(clf(x), ref)
        except VanillaNetError as err:
            if backend != "auto":
                raise
            _log.warning("fast_inference: skipping backend %s (%s)", name, err)
            continue
        except Exception as err:  # compilers and runtimes raise many types; report one line
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            if backend != "auto":
                raise ConversionError(f"backend {name} failed here ({first}); use backend='eager' or 'auto'") from err
            _log.warning("fast_inference: skipping backend %s (%s)", name, first)
            continue
        if not clf.max_rel_err <= tol:
            msg = (f"backend {name} ({dtype}) differs from fp32 eager by {clf.max_rel_err:.3g} (relative), above "
                   f"{tol:g}; use another backend or dtype")
            if backend != "auto":
                raise ConversionError(msg)
            _log.warning("fast_inference: %s", msg)
            continue
        built[name] = clf
    if not built:
        raise ConversionError(f"no inference backend reproduced the fp32 output within {tol:g}; try dtype=float32")
    if len(built) == 1:
        return next(iter(built.values()))
    rounds = interleaved_ms({name: (lambda c=clf: c(x)) for name, clf in built.items()}, rounds=AUTO_ROUNDS,
                            round_s=AUTO_ROUND_S, sync=lambda: _sync(device))
    timings = {name: statistics.median(ms) for name, ms in rounds.items()}
    best = built[pick_fastest(timings, SIMPLEST_FIRST)]
    best.timings_ms = timings
    return best


def _build(name: str, eager: nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int,
           image_size: int, in_chans: int) -> FastClassifier:
    example = torch.zeros(batch_size, in_chans, image_size, image_size, device=device, dtype=dtype)
    example = example.contiguous(memory_format=torch.channels_last)
    kw = dict(backend=name, device=device, dtype=dtype, batch_size=batch_size, image_size=image_size,
              in_chans=in_chans)
    if name == "eager":
        return FastClassifier(eager, None, **kw)
    if name == "cudagraph":
        return FastClassifier(eager, _cudagraph(eager, example), **kw)
    if name == "compile":
        return FastClassifier(eager, _compiled(eager, device), **kw)
    if name == "int8":
        from .quantize import build_int8

        return FastClassifier(eager, build_int8(eager, example.float()), any_batch=True, **kw)
    onnx = _onnxruntime(eager, image_size, in_chans, deploy=getattr(eager, "deploy", True))
    return FastClassifier(eager, onnx, any_batch=True, **kw)

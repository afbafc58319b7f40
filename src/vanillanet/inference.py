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
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from . import kernels
from .errors import ConfigError, ConversionError, VanillaNetError
from .reparam import rel_err, reparameterize_model

__all__ = ["BACKENDS", "FastClassifier", "check_input_size", "fast_inference", "load_model",
           "min_input_size", "rel_err"]

_log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compile", "cudagraph", "onnxruntime", "fused")
FP32_TOL = 1e-4
HALF_TOL = 1e-1  # a gate against broken paths (overflow, NaN), not an accuracy claim: bf16 keeps 8 bits


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
    """Disable TF32 on CUDA and the fused kernels while computing an fp32 reference (PyTorch allows TF32 for
    convolutions by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with kernels.reference():
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device,
               warmup: int = 2, iters: int = 5) -> float:
    for _ in range(warmup):
        fn(x)
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(f"expected an image batch of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}; "
                              "pass normalised images with the model's number of channels")
        dtype = torch.float32 if self.backend == "onnxruntime" else self.dtype
        return x.to(self.device, dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)

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
        else:
            out = self.eager(self._prepare(x).to(self.dtype))
        return out.to(device=self.device, dtype=torch.float32, copy=True)

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
    from .export import onnx_bytes, onnx_session

    sess = onnx_session(onnx_bytes(model, image_size, in_chans=in_chans, deploy=deploy))
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: x.float().contiguous().cpu().numpy()})[0])

    return run


def _available(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Backends worth trying for ``backend="auto"``, best guess first."""
    if device.type == "cuda":
        return ["cudagraph"] + (["fused"] if kernels.available_on(device) else [])
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
    only), ``onnxruntime`` (CPU, fp32 only), ``fused`` (Triton kernels in a CUDA graph) or ``auto``: each available
    backend (on CUDA: cudagraph and fused) is built, verified and timed on the fixed shape, and the fastest kept.
    The output is checked against the fp32 NCHW eager output of the deploy form on a random batch (TF32 off);
    above ``tol`` (default 1e-4 for fp32, 1e-1 for fp16/bf16 and for fp32 on CUDA while TF32 convolutions are
    allowed) an explicitly chosen backend raises ConversionError and ``auto`` skips it. ``deploy=False`` keeps
    the train form (to benchmark it).
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
    if backend == "fused" and not kernels.available_on(device):
        raise ConfigError("the fused backend needs Triton and a CUDA device (or TRITON_INTERPRET=1 on the CPU); use "
                          "backend='auto'")
    if backend == "onnxruntime" and (device.type != "cpu" or dtype != torch.float32):
        raise ConfigError("the onnxruntime backend runs fp32 on the CPU only; use dtype=torch.float32, device='cpu'")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if tol is None:
        tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32  # PyTorch's default for CUDA convs
        tol = FP32_TOL if dtype == torch.float32 and not tf32 else HALF_TOL

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
    best: FastClassifier | None = None
    timings: dict[str, float] = {}
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
        if len(candidates) > 1:
            timings[name] = _median_ms(clf, x, device)
        if best is None or (timings and timings[name] < timings[best.backend]):
            best = clf
    if best is None:
        raise ConversionError(f"no inference backend reproduced the fp32 output within {tol:g}; try dtype=float32")
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
    if name == "fused":
        return FastClassifier(eager, kernels.build_fused(eager, example), **kw)
    onnx = _onnxruntime(eager, image_size, in_chans, deploy=getattr(eager, "deploy", True))
    return FastClassifier(eager, onnx, any_batch=True,
                          **{**kw, "dtype": torch.float32})

"""A fast, verified inference path: ``fast_inference(model, ...)`` returns a ``FastClassifier``.

What makes the deploy form fast differs by device. The network is a 4x4 stem conv, then per layer one big 1x1
conv (a GEMM), a max pool and a depthwise 7x7 conv; at batch 1 on a CPU it is compute- and weight-bandwidth-bound.
On the CPU, what pays is not re-packing those large weights into oneDNN's blocked layout on every call:
torch.compile with frozen weights (inductor's ``freezing``) and onnxruntime both pack them once, and channels_last
helps eager's depthwise conv and pooling. On a GPU, fp16/bf16 with channels_last uses tensor cores, and a CUDA
graph removes the per-kernel launch cost that dominates at batch 1.

The backends themselves are the table in ``backends.py``. Every path is checked against the fp32 NCHW eager output
of the deploy form on a batch: seeded noise, or the first calibration images where they are given (int8 ranges
calibrated on real images do not cover noise, so noise would judge them on inputs they were not made for); the
relative error ``max |out - ref| / max |ref|`` is kept in
``.max_rel_err``. The fast path serves the fixed shape it was built for (``batch_size`` x ``in_chans`` x
``image_size``^2); other shapes run eagerly in the same dtype and layout (backends with ``any_batch`` take any
batch size). Inputs are prepared in the layout the backend takes and outputs copied only where a backend may reuse
its buffers: the onnxruntime paths run with no torch op around the session, since a parallel torch op wakes
torch's OpenMP threads, which then spin on the cores onnxruntime's threads need.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..model.reparam import rel_err, reparameterize_model
from ..util.devices import kept_settings
from ..util.errors import ConfigError, ConversionError, VanillaNetError, first_line
from ..util.timing import time_interleaved
from .backends import BACKENDS, BuildRequest, exact_fp32, prepare_input
from .checks import check_fast_inference_args

__all__ = ["FastClassifier", "fast_inference"]

_log = logging.getLogger(__name__)

FP32_TOL = 1e-4
HALF_TOL = 1e-1  # a gate against broken paths (overflow, NaN), not an accuracy claim: bf16 keeps 8 bits
TIE = 0.03  # ``auto`` keeps the simpler backend unless another is more than 3 % faster


class FastClassifier:
    """A deploy-form classifier run by one backend for a fixed input shape; call it on an image batch to get fp32
    logits on ``device``. Attributes: ``backend``, ``device``, ``dtype``, ``batch_size``, ``image_size``,
    ``in_chans``, ``max_rel_err`` (vs fp32 eager), ``timings_ms`` (what ``backend="auto"`` measured)."""

    def __init__(self, eager: nn.Module, fast: Callable[[torch.Tensor], torch.Tensor] | None, *, backend: str,
                 device: torch.device, dtype: torch.dtype, batch_size: int, image_size: int, in_chans: int,
                 any_batch: bool = False, input_dtype: torch.dtype | None = None, any_layout: bool = False,
                 fresh_output: bool = False):
        self.eager, self._fast, self.backend = eager, fast, backend
        self.device, self.dtype = device, dtype
        self.batch_size, self.image_size, self.in_chans = batch_size, image_size, in_chans
        self._any_batch, self._any_layout, self._fresh_output = any_batch, any_layout, fresh_output
        self._input_dtype = input_dtype or dtype
        self.max_rel_err: float = float("nan")
        self.timings_ms: dict[str, float] = {}

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, self.in_chans, self.image_size, self.image_size)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(f"expected an image batch of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}; "
                              "pass normalised images with the model's number of channels")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked and moved to the device, dtype and layout the fast path takes (a backend that takes any
        layout gets ``x`` itself when it is already on the device in that dtype)."""
        self._check(x)
        if self._any_layout:
            return x.to(self.device, self._input_dtype)
        return prepare_input(x, self.device, self._input_dtype, channels_last=True)

    def _uses_fast(self, x: torch.Tensor) -> bool:
        if self._fast is None:
            return False
        if self._any_batch:
            return tuple(x.shape[1:]) == self.input_shape[1:]
        return tuple(x.shape) == self.input_shape

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return self._run(x)
        with _cudnn_benchmark(self.device):  # eager calls pick cuDNN's fastest kernels, the setting is restored
            return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_fast(x):
            out = self._fast(self.prepare(x))
            return out.to(device=self.device, dtype=torch.float32, copy=not self._fresh_output)
        self._check(x)
        return self.eager(prepare_input(x, self.device, self.dtype, channels_last=True)).to(self.device, torch.float32)

    def __repr__(self) -> str:
        return (f"FastClassifier(backend={self.backend!r}, device={str(self.device)!r}, dtype={self.dtype}, "
                f"input_shape={self.input_shape}, max_rel_err={self.max_rel_err:.2e})")


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN's autotuner on for the block on CUDA (the shapes are fixed: let it pick its fastest kernels), restored
    after; on the CPU nothing happens."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def auto_candidates(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The backends ``backend="auto"`` builds, verifies and times: the exact ones that run here, simplest first."""
    return [b.name for b in BACKENDS.values()
            if b.auto and b.exact and device.type in b.auto_devices and b.unavailable(device, dtype) is None]


@torch.no_grad()
def fast_inference(
    model: nn.Module,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 1,
    image_size: int = 224,
    backend: str | Sequence[str] = "auto",
    *,
    tol: float | None = None,
    seed: int = 0,
    deploy: bool = True,
    calibration: Iterable[torch.Tensor] | None = None,
    allow_large: bool = False,
) -> FastClassifier:
    """Build a verified ``FastClassifier`` for ``model`` (any form; converted on a copy, the original untouched).

    ``backend``: a name from ``backends.BACKENDS`` (eager = channels_last eager, compile, cudagraph, onnxruntime,
    ...) or ``auto``: every exact backend that runs here is built, verified and timed side by side on the fixed
    shape (interleaved rounds, medians) and the fastest kept, the simpler one on a near tie; a list of names does
    the same among those. The output is checked against the fp32 NCHW eager output of the deploy form (TF32 off)
    on a seeded random batch, or on the first ``batch_size`` calibration images when ``calibration`` is given;
    above ``tol`` (default: the backend's own gate, 1.0 for int8; else 1e-4 for fp32, 1e-1 for fp16/bf16 and for
    fp32 on CUDA while TF32 convolutions are allowed) an explicitly chosen backend raises ConversionError and
    ``auto`` skips it. ``deploy=False`` keeps the train form (to benchmark it). ``calibration``: image batches (N,
    in_chans, image_size, image_size), read once and kept in memory, for backends that calibrate (``int8``,
    ``openvino_int8``, which ``auto`` never picks: without them their ranges come from noise, fine for speed, not
    for accuracy).
    ``allow_large`` lifts the input-size limits (``data.images``). Every argument is checked before any work
    (``checks.check_fast_inference_args``): TypeError or ValueError naming it.
    Global settings (cuDNN, TF32, matmul precision, threads, the RNG) are left as found.
    """
    device = check_fast_inference_args(model, device, dtype, batch_size, image_size, backend, tol=tol, seed=seed,
                                       deploy=deploy, calibration=calibration, allow_large=allow_large)
    choose = not isinstance(backend, str) or backend == "auto"
    candidates = (auto_candidates(device, dtype) if backend == "auto" else [backend] if isinstance(backend, str)
                  else list(backend))
    if not candidates:
        raise ConfigError(f"no exact backend runs on {device.type} in {dtype}; use dtype=torch.float32")
    with kept_settings(), _cudnn_benchmark(device):
        request = _reference(model, device, dtype, batch_size, image_size, seed, deploy, calibration)
        built = build_verified(request, candidates, tol, skip_failures=choose)
        return choose_fastest(built, request.x)


@dataclass(frozen=True)
class _Verification:
    """What every candidate is built from and checked against: the eager model in ``dtype`` and channels_last,
    the random batch ``x`` and the fp32 NCHW eager output ``ref`` on it; ``by_dtype``: the dtype's default gate."""

    eager: nn.Module
    x: torch.Tensor
    ref: torch.Tensor
    dtype: torch.dtype
    image_size: int
    in_chans: int
    by_dtype: float
    calibration: Iterable[torch.Tensor] | None


def _reference(model: nn.Module, device: torch.device, dtype: torch.dtype, batch_size: int, image_size: int,
               seed: int, deploy: bool, calibration: Iterable[torch.Tensor] | None) -> _Verification:
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32  # PyTorch's default for CUDA convs
    by_dtype = FP32_TOL if dtype == torch.float32 and not tf32 else HALF_TOL
    base = reparameterize_model(model) if deploy else copy.deepcopy(model).eval()
    base = base.to(device=device, dtype=torch.float32)
    in_chans = int(getattr(base, "in_chans", 3))
    shape = (batch_size, in_chans, image_size, image_size)
    if calibration is not None:
        calibration = calibration_batches(calibration, shape[1:])
        x = first_images(calibration, batch_size).to(device)
    else:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    with exact_fp32():
        ref = base(x)
    eager = base.to(dtype=dtype, memory_format=torch.channels_last)
    return _Verification(eager, x, ref, dtype, image_size, in_chans, by_dtype, calibration)


def calibration_batches(batches: Iterable[torch.Tensor], image: tuple[int, int, int]) -> list[torch.Tensor]:
    """The calibration batches as a list of fp32 CPU tensors (an iterator is read once), each checked to be
    (N, *image); ConfigError naming the first that is not, or an empty set."""
    out = []
    for i, b in enumerate(batches):
        try:
            t = torch.as_tensor(b).detach()
            what = f"{tuple(t.shape)} {t.dtype}"
        except (TypeError, ValueError, RuntimeError):
            t, what = None, f"a {type(b).__name__}"
        if t is None or t.ndim != 4 or tuple(t.shape[1:]) != tuple(image) or not len(t) or not t.is_floating_point():
            raise ConfigError(f"fast_inference: calibration batch {i} is {what}, not (N, "
                              f"{', '.join(map(str, image))}) floating point images; pass preprocessed batches "
                              "of the model's input size")
        out.append(t.float().cpu())
    if not out:
        raise ConfigError("fast_inference: calibration holds no batch; pass at least one image batch or None")
    return out


def first_images(batches: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """The first ``n`` images of ``batches`` (repeated in order when they hold fewer); only the batches that hold
    them are copied, not the whole calibration set."""
    taken, count = [], 0
    for b in batches:
        taken.append(b)
        count += len(b)
        if count >= n:
            break
    images = torch.cat(taken)
    return images[torch.arange(n) % len(images)].contiguous()


def build_verified(req: _Verification, candidates: Sequence[str], tol: float | None, *,
                   skip_failures: bool) -> list[FastClassifier]:
    """Each candidate built and checked against ``req.ref``; one that fails to build or differs by more than its
    tolerance raises ConversionError, or with ``skip_failures`` is logged and left out."""
    built: list[FastClassifier] = []
    for name in candidates:
        try:
            built.append(_build_checked(name, req, tol))
        except Exception as err:  # compilers and runtimes raise many types; report one line
            if not skip_failures:
                if isinstance(err, VanillaNetError):
                    raise
                raise ConversionError(f"backend {name} failed here ({first_line(err)}); use backend='eager' or "
                                      "'auto'") from err
            _log.warning("fast_inference: skipping backend %s (%s)", name, first_line(err))
    if not built:
        raise ConversionError(f"no inference backend reproduced the fp32 output within "
                              f"{tol if tol is not None else req.by_dtype:g}; try dtype=float32")
    return built


def _build_checked(name: str, req: _Verification, tol: float | None) -> FastClassifier:
    example = prepare_input(torch.zeros_like(req.x), req.x.device, req.dtype, channels_last=True)
    clf = _build(name, req.eager, example, req.calibration, req.image_size, req.in_chans)
    clf.max_rel_err = rel_err(clf(req.x), req.ref)
    limit = _tolerance(name, tol, req.by_dtype)
    if not clf.max_rel_err <= limit:
        raise ConversionError(f"backend {name} ({clf.dtype}) differs from fp32 eager by {clf.max_rel_err:.3g} "
                              f"(relative), above {limit:g}; use another backend or dtype")
    return clf


def choose_fastest(built: Sequence[FastClassifier], x: torch.Tensor) -> FastClassifier:
    """The fastest of ``built`` on ``x`` (interleaved rounds, medians; the simpler one, earlier in the table, within
    ``TIE``), with every candidate's median in ``.timings_ms``; a single candidate is returned untimed."""
    if len(built) == 1:
        return built[0]
    rounds, _ = time_interleaved(built, [x] * len(built), x.device, repeats=5, round_s=0.2)
    timings = {clf.backend: statistics.median(r) for clf, r in zip(built, rounds)}
    best = min(built, key=lambda c: timings[c.backend])
    best = next(c for c in built if timings[c.backend] <= timings[best.backend] * (1 + TIE))  # simplest near-tie
    best.timings_ms = timings
    return best


def _tolerance(name: str, tol: float | None, by_dtype: float) -> float:
    """The caller's ``tol``, else the backend's own gate (int8's), else the dtype's."""
    if tol is not None:
        return tol
    own = BACKENDS[name].tol
    return by_dtype if own is None else own


def _build(name: str, eager: nn.Module, example: torch.Tensor, calibration: Iterable[torch.Tensor] | None,
           image_size: int, in_chans: int) -> FastClassifier:
    entry = BACKENDS[name]
    req = BuildRequest(eager, example, example.device, example.dtype, calibration)
    return FastClassifier(eager, entry.build(req), backend=name, device=example.device, dtype=example.dtype,
                          batch_size=example.shape[0], image_size=image_size, in_chans=in_chans,
                          any_batch=entry.any_batch, input_dtype=entry.input_dtype, any_layout=entry.any_layout,
                          fresh_output=entry.fresh_output)

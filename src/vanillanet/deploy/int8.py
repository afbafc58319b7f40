"""Static int8 quantization of an fp32 ONNX graph for CPUs, with onnxruntime's quantization tools: the ``int8``
backend's builder and the core of ``vanillanet quantize``.

``quantize_bytes`` turns the fp32 ONNX graph of the deploy form (``onnx_graph.onnx_bytes``) into an int8 one with
``onnxruntime.quantization.quantize_static``: weights to int8 per output channel, activations to uint8 with ranges
calibrated on image batches (real training images for deployment; noise is enough to measure speed).

What runs in int8 (onnxruntime's CPU provider): every convolution (the 4x4 stem, the 1x1 convs holding ~95 % of
the MACs, the depthwise convs of the activation, the head) becomes a ``QLinearConv`` (uint8 x int8 products,
int32 sums, NHWC) and the max pools run on uint8; only the global average pool (a ReduceMean) is fp32, between a
dequantize and a quantize. That needs one graph rewrite: the deploy block computes conv -> max pool -> ReLU; max
and ReLU commute, so the graph is turned into conv -> ReLU -> max pool (exact). The ReLU then vanishes into the
conv's output quantization (a range that starts at 0 gives all 256 levels to the values that survive the ReLU)
and the pool works on the conv's uint8 output. Without it onnxruntime 1.32's QDQ format leaves each pool in fp32
between a dequantize and a quantize, and its QOperator format drops the ReLU while the pool's input still holds
negative values (the conv's output keeps a zero point above 0): 82 % instead of 92 % top-1 on Fashion-MNIST.

Instruction sets: on x86-64 the uint8 x int8 kernels multiply pairs of bytes and add them into 16 bits
(``vpmaddubsw``) on AVX2 and AVX-512BW, which saturates when both products of a pair are large; VNNI
(``vpdpbusd``) adds four products straight into 32 bits, without saturation and in one instruction instead of
three. ``reduce_range`` (7-bit weights) avoids that saturation on machines without VNNI at the cost of one bit of
weight resolution. It is the default: on an AVX2 machine the main job's Fashion-MNIST model kept its top-1 with
7-bit weights (+0.05 points) and lost 1.8 points with 8-bit weights, whose products saturate the stem's sums (the
image's bright pixels meet the largest weights). The documentation's int8 section (``docs/inference.md``) has the
speed and accuracy of every option.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..util import validation
from ..util.errors import ConfigError, ConversionError, VanillaNetError, first_line
from ..util.validation import option
from .onnx_graph import relu_before_maxpool

__all__ = ["CALIBRATIONS", "EXCLUDABLE", "FORMATS", "Int8Config", "noise_batches", "quantize_bytes"]

FORMATS = ("qoperator", "qdq")
ACTIVATION_TYPES = ("uint8", "int8")
CALIBRATIONS = ("minmax", "entropy", "percentile")
EXCLUDABLE = ("stem", "head", "depthwise")
CALIB_BATCH = 8  # histogram calibration gets every activation of a batch back from the session: keep it small
HISTOGRAM_MEMORY = 4 << 30  # entropy/percentile keep every activation of every calibration image in memory


@dataclass(frozen=True)
class Int8Config:
    """How to quantize; every field except ``relu_before_pool`` is also a ``vanillanet quantize`` flag."""

    format: str = option("qoperator", "graph format: QLinearConv nodes in the file (qoperator), or fp32 ops between "
                         "QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses at load time (qdq)",
                         choices=FORMATS)
    per_channel: bool = option(True, "one weight scale per output channel (--no-per-channel: one per layer)")
    reduce_range: bool = option(True, "7-bit weights, which cannot saturate the 16-bit sums of CPUs without VNNI "
                                "(--no-reduce-range: 8-bit, safe on VNNI CPUs)")
    calibration: str = option("minmax", "how activation ranges are chosen: min/max, or entropy or percentile of a "
                              "histogram", choices=CALIBRATIONS)
    exclude: tuple[str, ...] = option((), "layers kept in fp32", choices=EXCLUDABLE)
    activation_type: str = option("uint8", "activations asymmetric (uint8) or symmetric around 0 (int8)",
                                  choices=ACTIVATION_TYPES)
    relu_before_pool: bool = option(True, "the exact conv -> ReLU -> max pool rewrite of the module docstring (off "
                                    "only to measure what it brings)")

    def __post_init__(self) -> None:
        validation.check_instance(self)


# ---------------------------------------------------------------------------------------------- graph
def _excluded_nodes(proto, roles: tuple[str, ...]) -> list[str]:
    """Names of the Conv nodes playing ``roles``: the stem reads the graph input, the head writes the last conv
    output, depthwise convs have ``group`` > 1."""
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    inputs = {i.name for i in proto.graph.input}
    names = []
    for k, node in enumerate(convs):
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if (("stem" in roles and node.input[0] in inputs) or ("head" in roles and k == len(convs) - 1)
                or ("depthwise" in roles and group > 1)):
            names.append(node.name)
    return names


def _activation_bytes(proto) -> int:
    """fp32 bytes of every intermediate activation for one image (what histogram calibration keeps per image)."""
    total = 0
    for v in proto.graph.value_info:
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.elem_type == 1 and dims:
            total += 4 * int(np.prod([d.dim_value or 1 for d in dims[1:]]))
    return total


# ---------------------------------------------------------------------------------------------- calibration
class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an iterable of image batches (tensors or arrays), cut
    into batches of at most ``CALIB_BATCH`` images; counts the images it handed out. With ``bytes_per_image`` (for
    histogram calibration, which keeps every activation) it refuses to hand out more than ``HISTOGRAM_MEMORY``."""

    def __init__(self, input_name: str, batches: Iterable[Any], bytes_per_image: int | None = None):
        self.name, self.images, self.per_image = input_name, 0, bytes_per_image
        self._it = self._split(batches)

    @staticmethod
    def _split(batches: Iterable[Any]) -> Iterator[np.ndarray]:
        for b in batches:
            a = b.detach().float().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float32)
            for k in range(0, len(a), CALIB_BATCH):
                yield np.ascontiguousarray(a[k:k + CALIB_BATCH], dtype=np.float32)

    def get_next(self) -> dict[str, np.ndarray] | None:
        a = next(self._it, None)
        if a is None:
            return None
        self.images += len(a)
        if self.per_image and self.images * self.per_image > HISTOGRAM_MEMORY:
            raise ConfigError(f"entropy/percentile calibration keeps every activation of every calibration image in "
                              f"memory ({self.per_image / 2**20:.0f} MiB per image here); use at most "
                              f"{HISTOGRAM_MEMORY // self.per_image} calibration images or --calibration minmax")
        return {self.name: a}

    def rewind(self) -> None:  # part of the protocol; calibration reads the data once
        pass


def noise_batches(shape: tuple[int, ...], n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """``n`` seeded batches of standard-normal noise: activation ranges good enough to measure int8's speed (the
    ranges do not change the kernels), not its accuracy (real images give other ranges)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(shape), generator=gen) for _ in range(n)]


@contextlib.contextmanager
def _no_root_handler_side_effect() -> Iterator[None]:
    """onnxruntime's quantizer logs through ``logging.warning``, which installs a handler on the root logger of
    an unconfigured process; a temporary NullHandler prevents that (configured processes see the messages)."""
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard:
        root.addHandler(guard)
    try:
        yield
    finally:
        if guard:
            root.removeHandler(guard)


def quantize_bytes(fp32: bytes, calibration: Iterable[Any], cfg: Int8Config = Int8Config()) -> bytes:
    """The int8 serialisation of an fp32 ONNX model (``onnx_graph.onnx_bytes``), activation ranges calibrated on
    the image batches in ``calibration`` (preprocessed like the model's inputs)."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ConfigError("onnx and onnxruntime are needed for int8; run pip install 'vanillanet[export]'") from None
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration]
    with tempfile.TemporaryDirectory(prefix="vanillanet-int8-") as tmp, _no_root_handler_side_effect():
        src, pre, out = (Path(tmp) / f"{n}.onnx" for n in ("fp32", "pre", "int8"))
        proto = onnx.load_from_string(fp32)
        onnx.save(relu_before_maxpool(proto) if cfg.relu_before_pool else proto, src)
        quant_pre_process(str(src), str(pre))  # shape inference + basic graph optimisation, as the tools advise
        proto = onnx.load(pre)
        reader = _Reader(proto.graph.input[0].name, calibration,
                         None if cfg.calibration == "minmax" else max(_activation_bytes(proto), 1))
        try:
            quantize_static(
                str(pre), str(out), reader, quant_format=QuantFormat.QOperator if cfg.format == "qoperator"
                else QuantFormat.QDQ, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                activation_type=QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8, calibrate_method=method,
                nodes_to_exclude=_excluded_nodes(proto, cfg.exclude))
        except VanillaNetError:  # the reader's own (ConfigError is also a ValueError)
            raise
        except ValueError as err:
            if reader.images == 0:
                raise ConfigError("no calibration images were given; pass a non-empty set of image batches") from None
            raise ConversionError(f"int8 quantization failed: {first_line(err, 200)}") from None
        return out.read_bytes()

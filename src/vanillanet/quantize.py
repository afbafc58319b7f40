"""Static int8 quantization of the deploy form for CPUs, with onnxruntime's quantization tools.

The fp32 ONNX graph of the deploy form (``export.onnx_bytes``) is quantized by ``onnxruntime.quantization.
quantize_static``: weights to int8 per output channel, activations to uint8 with ranges calibrated on real images
(the training split, never the evaluation images). ``vanillanet quantize`` does the whole job in one run: export,
quantize, top-1 of fp32 and int8 on the evaluation split with the preprocessing of ``vanillanet eval``, both
sessions timed side by side, and the file written only when int8 loses at most ``--max-drop`` points of top-1.

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
image's bright pixels meet the largest weights). The README's int8 section has the speed and accuracy of every
option.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, ConversionError
from .export import onnx_bytes, onnx_runner, onnx_session

__all__ = ["CALIBRATIONS", "EXCLUDABLE", "FORMATS", "Int8Config", "QuantizeResult", "build_int8",
           "quantize_bytes", "quantize_onnx", "relu_before_maxpool"]

_log = logging.getLogger(__name__)

FORMATS = ("qoperator", "qdq")
ACTIVATION_TYPES = ("uint8", "int8")
CALIBRATIONS = ("minmax", "entropy", "percentile")
EXCLUDABLE = ("stem", "head", "depthwise")
CALIB_BATCH = 8  # histogram calibration gets every activation of a batch back from the session: keep it small
HISTOGRAM_MEMORY = 4 << 30  # entropy/percentile keep every activation of every calibration image in memory


@dataclass(frozen=True)
class Int8Config:
    """How to quantize. ``format``: ``qoperator`` (QLinearConv nodes in the file) or ``qdq`` (fp32 ops between
    QuantizeLinear/DequantizeLinear pairs, fused by onnxruntime at load time); ``per_channel``: one weight scale per
    output channel; ``reduce_range``: 7-bit weights (no 16-bit saturation on CPUs without VNNI);
    ``calibration``: how activation ranges are chosen (min/max, entropy or percentile of a histogram);
    ``exclude``: layers kept in fp32 (``stem``, ``head``, ``depthwise``); ``activation_type``: ``uint8``
    (asymmetric) or ``int8`` (symmetric around 0); ``relu_before_pool``: the exact graph rewrite described above
    (off only to measure what it brings)."""

    format: str = "qoperator"
    per_channel: bool = True
    reduce_range: bool = True
    calibration: str = "minmax"
    exclude: tuple[str, ...] = ()
    activation_type: str = "uint8"
    relu_before_pool: bool = True

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ConfigError(f"quantization format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise ConfigError(f"activation type must be one of {', '.join(ACTIVATION_TYPES)}, got "
                              f"{self.activation_type!r}")
        bad = [e for e in self.exclude if e not in EXCLUDABLE]
        if bad:
            raise ConfigError(f"cannot exclude {bad[0]!r} from quantization; choose from {', '.join(EXCLUDABLE)}")


# ---------------------------------------------------------------------------------------------- graph
def relu_before_maxpool(proto):
    """A copy of the ONNX model with every ``MaxPool -> Relu`` pair (the pool's only consumer) swapped into
    ``Relu -> MaxPool``: the same function (max and ReLU commute), but the ReLU now follows the conv and is
    absorbed by its quantized output, and the pool runs in uint8."""
    proto = copy.deepcopy(proto)
    graph = proto.graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    swapped = set()
    for i, pool in enumerate(nodes):
        users = consumers.get(pool.output[0], []) if pool.op_type == "MaxPool" else []
        if len(users) != 1 or users[0].op_type != "Relu" or pool.output[0] in outputs or len(pool.output) != 1:
            continue
        relu = users[0]
        x, mid, y = pool.input[0], pool.output[0], relu.output[0]
        relu.input[0], relu.output[0] = x, mid  # x -> Relu -> mid -> MaxPool -> y
        pool.input[0], pool.output[0] = mid, y
        j = nodes.index(relu)
        nodes[i], nodes[j] = relu, pool  # the ReLU takes the pool's place: still topologically ordered
        swapped.add(mid)
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [v for v in graph.value_info if v.name not in swapped]  # the shape of ``mid`` changed
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return proto


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


def quantize_bytes(fp32: bytes, calibration: Iterable[Any], config: Int8Config = Int8Config()) -> bytes:
    """The int8 serialisation of an fp32 ONNX model (``export.onnx_bytes``), activation ranges calibrated on the
    image batches in ``calibration`` (preprocessed like the model's inputs)."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ConfigError("onnx and onnxruntime are needed for int8; run pip install 'vanillanet[export]'") from None
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration]
    with tempfile.TemporaryDirectory(prefix="vanillanet-int8-") as tmp, _no_root_handler_side_effect():
        src, pre, out = (Path(tmp) / f"{n}.onnx" for n in ("fp32", "pre", "int8"))
        proto = onnx.load_from_string(fp32)
        onnx.save(relu_before_maxpool(proto) if config.relu_before_pool else proto, src)
        quant_pre_process(str(src), str(pre))  # shape inference + basic graph optimisation, as the tools advise
        proto = onnx.load(pre)
        reader = _Reader(proto.graph.input[0].name, calibration,
                         None if config.calibration == "minmax" else max(_activation_bytes(proto), 1))
        try:
            quantize_static(
                str(pre), str(out), reader, quant_format=QuantFormat.QOperator if config.format == "qoperator"
                else QuantFormat.QDQ, per_channel=config.per_channel, reduce_range=config.reduce_range,
                activation_type=QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8, calibrate_method=method,
                nodes_to_exclude=_excluded_nodes(proto, config.exclude))
        except ValueError as err:
            if reader.images == 0:
                raise ConfigError("no calibration images were given; pass a non-empty set of image batches") from None
            raise ConversionError(f"int8 quantization failed: {str(err).splitlines()[0][:200]}") from None
        return out.read_bytes()


def build_int8(model: nn.Module, example: torch.Tensor, calibration: Iterable[Any] | None = None,
               config: Int8Config = Int8Config()) -> Callable[[torch.Tensor], torch.Tensor]:
    """An onnxruntime int8 session of ``model``'s deploy form for inputs shaped like ``example`` (any batch size),
    as a callable images -> fp32 logits (a CPU tensor).

    ``calibration``: image batches preprocessed like real inputs. Without it the activation ranges come from 8
    batches of standard-normal noise shaped like ``example``: good enough to measure speed, not accuracy (real
    images give other ranges); quantize with real images (``vanillanet quantize``) to deploy."""
    in_chans, img_size = int(example.shape[1]), int(example.shape[-1])
    if calibration is None:
        gen = torch.Generator().manual_seed(0)
        calibration = [torch.randn(tuple(example.shape), generator=gen) for _ in range(8)]
    fp32 = onnx_bytes(model, img_size, in_chans=in_chans, deploy=getattr(model, "deploy", True))
    return onnx_runner(onnx_session(quantize_bytes(fp32, calibration, config)))


# ---------------------------------------------------------------------------------------------- one run
@dataclass
class QuantizeResult:
    """One quantization run: the file written and the fp32 / int8 numbers measured side by side (top-1 in %,
    ``agreement`` = % of images with the same top-1 class, ms per call of a plain onnxruntime session, median over
    interleaved rounds, keyed by batch size: 1 and ``batch_size``)."""

    output: str
    config: dict[str, Any]
    img_size: int
    in_chans: int
    threads: int
    calib_images: int
    eval_images: int
    fp32_top1: float
    int8_top1: float
    agreement: float
    batch_size: int
    fp32_ms: dict[str, float] = field(default_factory=dict)
    int8_ms: dict[str, float] = field(default_factory=dict)
    fp32_bytes: int = 0
    int8_bytes: int = 0

    @property
    def drop(self) -> float:
        return self.fp32_top1 - self.int8_top1

    def speedup(self, batch: int = 1) -> float:
        return self.fp32_ms[str(batch)] / self.int8_ms[str(batch)]

    def table(self) -> str:
        """A small plain-text table of both paths."""
        batches = list(self.fp32_ms)
        head = f"{'path':<18}{'top-1 %':>9}{'same top-1':>12}" + "".join(f"{f'ms bs{b}':>11}" for b in batches)
        rows = [head, "-" * len(head)]
        for name, top1, ms, agree in (("fp32 onnxruntime", self.fp32_top1, self.fp32_ms, "-"),
                                      ("int8 onnxruntime", self.int8_top1, self.int8_ms, f"{self.agreement:.2f}%")):
            rows.append(f"{name:<18}{top1:>9.2f}{agree:>12}" + "".join(f"{ms[b]:>11.2f}" for b in batches))
        speed = ", ".join(f"{self.speedup(int(b)):.2f}x at batch {b}" for b in batches)
        rows.append(f"int8 vs fp32: top-1 {-self.drop:+.2f} points, speed {speed} ({self.threads} threads, "
                    f"{self.eval_images} evaluation / {self.calib_images} calibration images)")
        return "\n".join(rows)


@torch.no_grad()
def _top1_both(fp32: Callable, int8: Callable, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               progress: bool) -> tuple[int, int, int, int]:
    """(fp32 correct, int8 correct, same prediction, images) over ``(images, targets)`` batches."""
    from tqdm import tqdm

    counts = np.zeros(4, dtype=np.int64)
    for images, targets in tqdm(batches, desc="eval fp32+int8", disable=not progress, leave=False):
        p32, p8 = fp32(images).argmax(1), int8(images).argmax(1)
        counts += [(p32 == targets).sum().item(), (p8 == targets).sum().item(), (p32 == p8).sum().item(),
                   len(targets)]
    return tuple(int(c) for c in counts)


def quantize_onnx(model: nn.Module, calibration: Iterable[Any], output: str | Path,
                  eval_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, img_size: int,
                  in_chans: int | None = None, config: Int8Config = Int8Config(), max_drop: float = 1.0,
                  threads: int | None = None, batch_size: int = 64, rounds: int = 7, progress: bool = False
                  ) -> QuantizeResult:
    """Quantize ``model``'s deploy form and measure it against fp32 in one run; write ``output`` (atomically) only
    when int8 loses at most ``max_drop`` points of top-1 on ``eval_batches`` (else ConversionError, no file).

    ``calibration``: image batches (never the evaluation images); ``eval_batches``: (images, labels) batches;
    ``threads``: intra-op threads of both sessions (default: torch's); speed is timed at batch 1 and
    ``batch_size`` on evaluation images, ``rounds`` interleaved rounds, median."""
    from .checkpoint import write_atomic
    from .timing import interleaved_ms

    in_chans = in_chans or int(getattr(model, "in_chans", 3))
    threads = threads or torch.get_num_threads()
    fp32 = onnx_bytes(model, img_size, in_chans=in_chans)
    counter = _Counter(calibration)
    int8 = quantize_bytes(fp32, counter, config)
    sessions = {"fp32": onnx_session(fp32, threads), "int8": onnx_session(int8, threads)}
    runners = {k: onnx_runner(s) for k, s in sessions.items()}
    sample: list[torch.Tensor] = []

    def keep_first(batches):
        for images, targets in batches:
            if sum(len(s) for s in sample) < batch_size:
                sample.append(images[:batch_size])
            yield images, targets

    ok32, ok8, same, n = _top1_both(runners["fp32"], runners["int8"], keep_first(eval_batches), progress)
    if n == 0:
        raise ConfigError("no evaluation images were given; int8 accuracy cannot be checked")
    drop = 100 * (ok32 - ok8) / n
    if not drop <= max_drop:
        raise ConversionError(f"int8 top-1 {100 * ok8 / n:.2f}% is {drop:.2f} points below fp32 {100 * ok32 / n:.2f}% "
                              f"on {n} images, more than the allowed {max_drop:g} (--max-drop); {output} was not "
                              "written (try more calibration images, --calibration entropy or --exclude)")
    x = torch.cat(sample)[:batch_size].float().numpy()
    shapes = {str(b): np.ascontiguousarray(x[:b]) for b in sorted({1, len(x)})}
    fns = {(k, b): (lambda s=s, a=a: s.run(None, {s.get_inputs()[0].name: a}))
           for b, a in shapes.items() for k, s in sessions.items()}
    times = interleaved_ms({f"{k}/{b}": f for (k, b), f in fns.items()}, rounds=rounds)
    med = {key: float(np.median(v)) for key, v in times.items()}
    write_atomic(output, lambda tmp: Path(tmp).write_bytes(int8))
    return QuantizeResult(
        output=str(output), config=asdict(config), img_size=img_size, in_chans=in_chans, threads=threads,
        calib_images=counter.images, eval_images=n, fp32_top1=100 * ok32 / n, int8_top1=100 * ok8 / n,
        agreement=100 * same / n, batch_size=len(x), fp32_ms={b: med[f"fp32/{b}"] for b in shapes},
        int8_ms={b: med[f"int8/{b}"] for b in shapes}, fp32_bytes=len(fp32), int8_bytes=len(int8))


class _Counter:
    """Passes batches through and counts the images (to report how many calibrated the ranges)."""

    def __init__(self, batches: Iterable[Any]):
        self.batches, self.images = batches, 0

    def __iter__(self) -> Iterator[Any]:
        for b in self.batches:
            self.images += len(b)
            yield b


# ---------------------------------------------------------------------------------------------- CLI
def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="weights to quantize (train or deploy form, any layout)")
    parser.add_argument("--data", required=True, help="ImageFolder root (train/ calibrates, val/ evaluates), "
                        "fashion-mnist, digits or synthetic")
    parser.add_argument("--output", required=True, help="int8 .onnx file to write (only when within --max-drop)")
    parser.add_argument("--model", help="variant name (default: inferred from the checkpoint)")
    parser.add_argument("--calib-images", type=int, default=512,
                        help="training images that calibrate the activation ranges (default 512, spread evenly)")
    parser.add_argument("--eval-images", type=int, help="evaluation images (default: the whole evaluation split)")
    parser.add_argument("--max-drop", type=float, default=1.0,
                        help="largest top-1 loss (percentage points) that still writes the file (default 1.0)")
    parser.add_argument("--threads", type=int, help="intra-op threads of both sessions (default: torch's)")
    parser.add_argument("--json", help="write the measurements to this JSON file")
    parser.add_argument("--img-size", type=int, help="input size (default: from the checkpoint / model config)")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch (also timed; default 64)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median; default 7)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data-loading processes")
    parser.add_argument("--format", choices=FORMATS, default=Int8Config.format,
                        help=f"quantized graph format (default {Int8Config.format})")
    parser.add_argument("--calibration", choices=CALIBRATIONS, default=Int8Config.calibration,
                        help=f"how activation ranges are chosen (default {Int8Config.calibration})")
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per layer, not per channel")
    parser.add_argument("--full-range", action="store_true", help="8-bit weights (default: 7-bit, which cannot "
                        "saturate the 16-bit sums of CPUs without VNNI; on VNNI CPUs 8 bits are safe)")
    parser.add_argument("--exclude", default="", help=f"comma-separated layers kept in fp32: {', '.join(EXCLUDABLE)}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_main)


def _spread(dataset: Any, n: int | None) -> Any:
    """``n`` items spread evenly over ``dataset`` (every class of a class-sorted folder is represented)."""
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ConfigError(f"the number of images must be at least 1, got {n}")
    return torch.utils.data.Subset(dataset, np.linspace(0, len(dataset) - 1, n).round().astype(int).tolist())


def _main(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint_file
    from .data import build_dataset, build_loader
    from .evaluate import resolve_preprocess
    from .inference import load_model

    config = Int8Config(format=args.format, per_channel=not args.per_tensor, reduce_range=not args.full_range,
                        calibration=args.calibration,
                        exclude=tuple(e.strip() for e in args.exclude.split(",") if e.strip()))
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.checkpoint).eval()
    meta = load_checkpoint_file(args.checkpoint).get("meta", {})
    pre = resolve_preprocess(model, meta, args.data, img_size=args.img_size)
    in_chans = int(getattr(model, "in_chans", 3))
    transform = pre.transform(in_chans)
    calib = _spread(build_dataset(args.data, "train", transform, in_chans=in_chans), args.calib_images)
    evals = _spread(build_dataset(args.data, "val", transform, in_chans=in_chans), args.eval_images)
    num_classes = getattr(model, "num_classes", None)
    classes = getattr(getattr(evals, "dataset", evals), "classes", None)
    if num_classes and classes is not None and len(classes) != num_classes:
        raise ConfigError(f"the dataset has {len(classes)} classes but the model predicts {num_classes}; quantize "
                          "with the dataset the checkpoint was trained for")

    def loader(ds: Any, batch: int) -> Any:
        return build_loader(ds, batch, is_training=False, num_workers=min(args.workers, 1 + len(ds) // batch))

    calib_images = (images for images, _ in loader(calib, CALIB_BATCH))
    result = quantize_onnx(model, calib_images, args.output, loader(evals, args.batch_size), img_size=pre.img_size,
                           in_chans=in_chans, config=config, max_drop=args.max_drop, threads=args.threads,
                           batch_size=args.batch_size, rounds=args.rounds, progress=not args.no_progress)
    print(result.table())
    print(f"wrote {result.output} ({result.int8_bytes / 2**20:.1f} MiB int8, fp32 {result.fp32_bytes / 2**20:.1f} "
          f"MiB); {config.format}, per-{'channel' if config.per_channel else 'tensor'} weights, "
          f"{config.calibration} calibration" + (f", fp32: {', '.join(config.exclude)}" if config.exclude else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**asdict(result), "drop": result.drop, "checkpoint": args.checkpoint,
                                               "data": args.data, "onnxruntime": _ort_version()}, indent=1))
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__

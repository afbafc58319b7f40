"""A static int8 ONNX model for CPUs, with its accuracy and speed against fp32 measured in one run
(``vanillanet quantize``).

The deploy form is exported (``onnx_graph.onnx_bytes``) and quantized (``int8.quantize_bytes``: what runs in int8,
the exact graph rewrite it needs and why 7-bit weights are the default) with activation ranges calibrated on
training images, never the evaluation images. Both graphs are then evaluated on the evaluation split with the
preprocessing of ``vanillanet eval`` (``training.evaluation.evaluate``: fp32 as the predictor, int8 as the second
one, so the top-1 of both and their agreement come from the same images), and both onnxruntime sessions are timed
side by side (``timing.time_interleaved``) at batch 1 and at the evaluation batch size. The file is written only
when int8 loses at most ``max_drop`` points of top-1.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arguments import (
    STDOUT,
    add_data_arguments,
    add_device_arguments,
    add_input_arguments,
    add_model_arguments,
    add_output_arguments,
    check_json_path,
    check_num_classes,
    emit_json,
)
from .deploy.int8 import CALIB_BATCH, Int8Config, quantize_bytes
from .deploy.onnx_graph import onnx_bytes, onnx_runner, onnx_session
from .model.registry import create_model
from .training.evaluation import evaluate
from .util import validation
from .util.devices import num_threads
from .util.errors import ConfigError, ConversionError
from .util.fileio import check_output_file, refuse_inputs, write_atomic
from .util.tables import render
from .util.timing import time_interleaved
from .util.validation import value_type

__all__ = ["QuantizeResult", "quantize_onnx"]


@dataclass
class QuantizeResult:
    """One quantization run: the file written and the fp32 / int8 numbers measured side by side: top-1 in %,
    ``agreement`` = % of images with the same top-1 class, ms per call of each onnxruntime session (median over
    interleaved rounds) keyed by batch size (1 and ``batch_size``)."""

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
        """Both paths in a small table, and one line comparing them."""
        batches = list(self.fp32_ms)
        rows = [["path", "top-1 %", "same top-1", *(f"ms bs{b}" for b in batches)],
                ["fp32 onnxruntime", f"{self.fp32_top1:.2f}", "-", *(f"{self.fp32_ms[b]:.2f}" for b in batches)],
                ["int8 onnxruntime", f"{self.int8_top1:.2f}", f"{self.agreement:.2f}%",
                 *(f"{self.int8_ms[b]:.2f}" for b in batches)]]
        speed = ", ".join(f"{self.speedup(int(b)):.2f}x at batch {b}" for b in batches)
        return (render(rows) + f"\nint8 vs fp32: top-1 {-self.drop:+.2f} points, speed {speed} ({self.threads} "
                f"threads, {self.eval_images} evaluation / {self.calib_images} calibration images)")


class _Counter:
    """Passes batches through and counts the images (to report how many calibrated the ranges)."""

    def __init__(self, batches: Iterable[Any]):
        self.batches, self.images = batches, 0

    def __iter__(self) -> Iterator[Any]:
        for b in self.batches:
            self.images += len(b)
            yield b


def _check_arguments(output: str | Path, max_drop: float, batch_size: int, rounds: int) -> None:
    """quantize_onnx's values checked before the first conversion (the CLI's flags go through the same ranges)."""
    check_output_file(output, "output", (".onnx",), error=ConfigError)
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop <= 100:
        raise ConfigError(f"max_drop (--max-drop) must be a number of top-1 points in [0, 100], got {max_drop!r}")
    for name, value in (("batch_size", batch_size), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer of at least 1, got {value!r}")


def quantize_onnx(model: nn.Module, calibration: Iterable[Any], output: str | Path,
                  eval_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, img_size: int,
                  in_chans: int | None = None, cfg: Int8Config | None = None, max_drop: float = 1.0,
                  threads: int | None = None, batch_size: int = 64, rounds: int = 7, progress: bool = False
                  ) -> QuantizeResult:
    """Quantize ``model``'s deploy form and measure it against fp32 in one run; write ``output`` (atomically) only
    when int8 loses at most ``max_drop`` points of top-1 on ``eval_batches`` (else ConversionError, no file).

    ``calibration``: image batches (never the evaluation images); ``eval_batches``: (images, labels) batches;
    ``cfg``: how to quantize (default ``Int8Config()``); ``threads``: intra-op threads of both sessions (default:
    torch's); speed is timed on evaluation images at batch 1 and ``batch_size``, ``rounds`` interleaved rounds,
    median."""
    _check_arguments(output, max_drop, batch_size, rounds)
    in_chans = in_chans or int(getattr(model, "in_chans", 3))
    cfg = cfg or Int8Config()
    threads = threads or torch.get_num_threads()
    fp32 = onnx_bytes(model, img_size, in_chans=in_chans)
    counter = _Counter(calibration)
    int8 = quantize_bytes(fp32, counter, cfg)
    runners = {k: onnx_runner(onnx_session(data, threads)) for k, data in (("fp32", fp32), ("int8", int8))}
    sample: list[torch.Tensor] = []

    def keep_first(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, Any]]:
        for images, targets in batches:
            if sum(len(s) for s in sample) < batch_size:
                sample.append(images[:batch_size])
            yield images, targets

    res = evaluate(runners["fp32"], keep_first(eval_batches), device=torch.device("cpu"), deploy=runners["int8"],
                   progress=progress)
    n = res["images"]
    if n == 0:
        raise ConfigError("no evaluation images were given; int8 accuracy cannot be checked")
    top32, top8 = 100 * res["top1"], 100 * res["deploy_top1"]
    if not top32 - top8 <= max_drop:
        raise ConversionError(f"int8 top-1 {top8:.2f}% is {top32 - top8:.2f} points below fp32 {top32:.2f}% on {n} "
                              f"images, more than the allowed {max_drop:g} (--max-drop); {output} was not written "
                              "(try more calibration images, --calibration entropy or --exclude)")
    x = torch.cat(sample)[:batch_size].float().contiguous()
    batches = [str(b) for b in sorted({1, len(x)})]
    keys = [(k, b) for b in batches for k in runners]
    times, _ = time_interleaved([runners[k] for k, _ in keys], [x[:int(b)] for _, b in keys], torch.device("cpu"),
                                repeats=rounds, round_s=0.25)
    med = {key: statistics.median(t) for key, t in zip(keys, times)}
    write_atomic(output, lambda tmp: Path(tmp).write_bytes(int8))
    return QuantizeResult(
        output=str(output), config=asdict(cfg), img_size=img_size, in_chans=in_chans, threads=threads,
        calib_images=counter.images, eval_images=n, fp32_top1=top32, int8_top1=top8,
        agreement=100 * res["deploy_agreement"], batch_size=len(x), fp32_ms={b: med["fp32", b] for b in batches},
        int8_ms={b: med["int8", b] for b in batches}, fp32_bytes=len(fp32), int8_bytes=len(int8))


# ---------------------------------------------------------------------------------------------- CLI
def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    add_model_arguments(parser, what="weights to quantize (train or deploy form, any layout)")
    parser.add_argument("--output", required=True, help="int8 .onnx file to write (only when within --max-drop)")
    add_data_arguments(parser, data="its training split calibrates, its validation split evaluates", batch_size=64,
                       batch_help="evaluation batch, also timed")
    add_input_arguments(parser)
    parser.add_argument("--calib-images", type=value_type(int, ge=1), default=512,
                        help="training images that calibrate the activation ranges (default 512, spread evenly)")
    parser.add_argument("--eval-images", type=value_type(int, ge=1),
                        help="evaluation images (default: the whole evaluation split)")
    parser.add_argument("--max-drop", type=value_type(float, ge=0, le=100), default=1.0,
                        help="largest top-1 loss (percentage points) that still writes the file (default 1.0)")
    parser.add_argument("--rounds", type=value_type(int, ge=1, le=1000), default=7,
                        help="interleaved timing rounds (median; default 7)")
    add_device_arguments(parser, device=False)  # onnxruntime on the CPU
    add_output_arguments(parser)
    validation.add_arguments(parser, Int8Config, skip=("relu_before_pool",), prefix="int8_")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    overrides = validation.overrides_from_args(args, Int8Config, prefix="int8_")
    cfg = validation.build(Int8Config, overrides, "vanillanet quantize")
    check_output_file(args.output, "--output", (".onnx",))  # before any work: no ONNX under a .pth name
    refuse_inputs(args.output, args.checkpoint)
    check_json_path(args.json)
    if args.json != STDOUT:
        refuse_inputs(args.json, args.checkpoint, flag="--json")
    with num_threads(args.threads):
        return _quantize(args, cfg)


def _quantize(args: argparse.Namespace, cfg: Int8Config) -> int:
    from .data.datasets import spread_subset
    from .data.loaders import build_loader
    from .data.sources import build_dataset
    from .data.transforms import resolve_preprocess

    model = create_model(args.model, args.checkpoint, use_ema=not args.no_ema, allow_large=args.allow_large).eval()
    pre = resolve_preprocess(model_cfg=getattr(model, "pretrained_cfg", None), data=args.data,
                             meta=model.checkpoint_meta, img_size=args.img_size, crop_pct=args.crop_pct,
                             allow_large=args.allow_large)
    in_chans = int(getattr(model, "in_chans", 3))
    transform = pre.transform(in_chans)
    large = {"folder.allow_large": True, "shards.allow_large": True} if args.allow_large else {}
    calib = spread_subset(build_dataset(args.data, "train", transform, in_chans=in_chans, **large), args.calib_images)
    evals = spread_subset(build_dataset(args.data, "val", transform, in_chans=in_chans, **large), args.eval_images)
    check_num_classes(model, evals.classes, doing="quantize")

    def loader(ds: Any, batch: int) -> Any:
        return build_loader(ds, batch, is_training=False, num_workers=min(args.workers, 1 + len(ds) // batch))

    result = quantize_onnx(model, (images for images, _ in loader(calib, CALIB_BATCH)), args.output,
                           loader(evals, args.batch_size), img_size=pre.img_size, in_chans=in_chans, cfg=cfg,
                           max_drop=args.max_drop, threads=args.threads, batch_size=args.batch_size,
                           rounds=args.rounds, progress=not args.no_progress)
    report = {**asdict(result), "drop": result.drop, "checkpoint": args.checkpoint, "data": args.data,
              "onnxruntime": _onnxruntime_version()}
    if emit_json(args.json, report):
        return 0
    print(result.table())
    print(f"wrote {result.output} ({result.int8_bytes / 2**20:.1f} MiB int8, fp32 {result.fp32_bytes / 2**20:.1f} "
          f"MiB); {cfg.format}, per-{'channel' if cfg.per_channel else 'tensor'} weights, {cfg.calibration} "
          "calibration" + (f", fp32: {', '.join(cfg.exclude)}" if cfg.exclude else ""))
    return 0


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__

"""Latency and throughput of VanillaNet (and baselines) in named execution modes, measured side by side.

Inference modes are the (backend, dtype, layout) combinations of ``deploy/backends.py``: ``paper`` (the published
protocol: fp32, NCHW, eager, batch 1, synchronised after every call), ``nchw`` (fp32 NCHW, the eager backend
unsynchronised), ``channels_last`` (fp32: the eager backend's layout), ``fp16`` / ``bf16`` (channels_last eager in
that dtype), and every backend of the table by name with an optional dtype suffix (``compile:bf16``,
``cudagraph``, ``onnxruntime``...); ``best`` = every mode this machine runs well. ``int8`` (onnxruntime static int8,
ranges calibrated on noise) is measured only when named: its speed, not its accuracy, which ``vanillanet quantize``
measures on real images. Training modes (``--train``) time one optimiser
step: ``train-fp32`` (fp32 NCHW), ``train-amp`` (the original recipe's autocast: fp16 + gradient scaler on CUDA,
bf16 on the CPU, NCHW), ``train-best`` (channels_last + autocast, bf16 where supported, + torch.compile, fused
kernels off) and, on request, ``train-fused`` (the same with the fused Triton activation kernels of ``kernels/``, a
CUDA path).

Protocol: everything is built, compiled and warmed up before timing; then ``repeats`` rounds run interleaved
across the modes of one model and batch size (so load from other processes hits every mode alike), each round
timing about ``round_s`` seconds of calls (CUDA events on a GPU) and giving the mean ms per call; records report the
median, min and max over rounds. ``max_rel_err`` is max |out - ref| / max |ref| against the fp32 NCHW eager output
of the same model and form (null for that reference itself).
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import kernels
from .arguments import STDOUT, add_output_arguments, check_json_path, emit_json
from .data.images import check_batch_limit
from .deploy.backends import (
    BACKENDS,
    DTYPE_NAMES,
    BuildRequest,
    Mode,
    dtype_supported,
    exact_fp32,
    parse_modes,
    prepare_input,
    prepare_model,
)
from .model.geometry import check_min_input_size
from .model.registry import create_model
from .model.reparam import calibrate_bn, rel_err, reparameterize_model
from .util import validation
from .util.devices import DEVICES, choose_device, half_dtype, num_threads
from .util.errors import ConfigError
from .util.timing import time_interleaved
from .util.validation import option

__all__ = ["BASELINES", "TRAIN_MODES", "BenchConfig", "device_name", "format_table", "plot_records", "run_bench"]

_log = logging.getLogger(__name__)

BASELINES = ("resnet50", "resnet18")
TRAIN_MODES = ("train-fp32", "train-amp", "train-best", "train-fused")
DEFAULT_TRAIN_MODES = TRAIN_MODES[:3]  # train-fused only on request (it matters on CUDA only)


@dataclass(frozen=True)
class BenchConfig:
    """What ``run_bench`` measures; every field is also a ``vanillanet bench`` flag."""

    models: tuple[str, ...] = option(("vanillanet_5",), "variants to measure (resnet50/resnet18 allowed)",
                                     aliases=("--model",))
    checkpoint: str | None = option(None, "weights for the (single) model; random weights otherwise")
    batch_size: int = option(1, "throughput batch size (batch 1 is always measured too)", ge=1, le=4096)
    modes: str = option("best", "comma-separated modes, or best (backends take :fp16/:bf16/:fp32; int8 only "
                        "by name)")
    img_size: int = option(224, "input height = width", ge=1, le=4096)
    repeats: int = option(5, "timed rounds per mode (median, min, max)", ge=1, le=1000)
    iters: int | None = option(None, "calls per round (default: about --round-s seconds' worth)", ge=1,
                               le=100_000)
    round_s: float = option(0.5, "target seconds per round", gt=0, le=600)
    threads: int | None = option(None, "CPU threads (torch and onnxruntime; default: torch's)", ge=1, le=1024)
    device: str = option("auto", "where to run (auto: cuda when available)", choices=DEVICES)
    baselines: bool = option(False, "also the train form and torchvision resnet50/resnet18 (random weights)")
    train: bool = option(False, "also training-step throughput")
    train_batch_size: int | None = option(None, "batch for --train (default --batch-size)", ge=1)
    train_modes: tuple[str, ...] = option(DEFAULT_TRAIN_MODES, "training modes for --train (train-fused on request)",
                                          choices=TRAIN_MODES)
    inference: bool = option(True, "measure inference")
    width_mult: float = option(1.0, "scale the widths (quick tests)", gt=0, le=16)
    num_classes: int = option(1000, "classes of the head", ge=1)
    allow_large: bool = option(False, "lift the size limits (models 1e9 parameters, input batches 4.3 GB, see "
                               "docs/faults.md)")
    ema: bool = option(True, "--checkpoint: its EMA weights when it has them (--no-ema: the live weights)")

    def __post_init__(self) -> None:
        validation.check_instance(self)
        for batch in {self.batch_size, self.train_batch_size or self.batch_size}:  # before any model or input
            check_batch_limit(batch, self.img_size, allow_large=self.allow_large,
                              what="--batch-size/--train-batch-size and --img-size")


# ---------------------------------------------------------------------------------------------- runners
@dataclass
class _Runner:
    """A thing to time: ``fn(x)`` on a prepared input; its rounds and error are filled in by ``run_bench``."""

    mode: Mode
    batch_size: int
    fn: Callable[[torch.Tensor], Any]
    x: torch.Tensor
    rounds_ms: list[float] = field(default_factory=list)
    iters: int = 1
    max_rel_err: float | None = None


def _inference_runner(model: nn.Module, mode: Mode, x: torch.Tensor, device: torch.device) -> _Runner:
    """A runner for ``mode``; ``model`` is fp32 eval on ``device`` in the form being measured (not modified)."""
    prepared = prepare_model(model, device, mode.dtype, mode.channels_last)
    example = prepare_input(x, device, mode.dtype, mode.channels_last)
    backend = BACKENDS[mode.backend]
    if backend.input_dtype is not None:
        example = example.to(backend.input_dtype)
    fn = backend.build(BuildRequest(prepared, torch.zeros_like(example), device, mode.dtype))
    return _Runner(mode, x.shape[0], torch.no_grad()(fn), example)


def _train_runner(model: nn.Module, mode: str, batch: int, device: torch.device, img_size: int) -> _Runner:
    """One optimisation step (forward, loss, backward, LAMB step as in the paper's recipe) on random data."""
    from timm.optim import create_optimizer_v2

    m = copy.deepcopy(model).train().to(device)
    in_chans = getattr(m, "in_chans", 3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, in_chans, img_size, img_size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    bf16 = dtype_supported(device, torch.bfloat16)
    amp = {"train-fp32": None, "train-amp": half_dtype(device),
           "train-best": torch.bfloat16 if bf16 else torch.float16, "train-fused": torch.bfloat16 if bf16
           else torch.float16}[mode]
    best = mode in ("train-best", "train-fused")
    if best:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = create_optimizer_v2(m, "lamb", lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    forward = torch.compile(m) if best else m
    loss_fn = nn.CrossEntropyLoss()

    def step(inp: torch.Tensor) -> None:
        with kernels.fused_kernels(mode == "train-fused"), torch.autocast(device.type, dtype=amp or torch.float32,
                                                                          enabled=amp is not None):
            loss = loss_fn(forward(inp), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return _Runner(Mode(mode, "eager", amp or torch.float32, best), batch, step, x)


# ---------------------------------------------------------------------------------------------- models
def _resnet(name: str, num_classes: int, img_size: int) -> nn.Module:
    """torchvision's ResNet with random weights (baseline), BN statistics calibrated on random inputs."""
    import torchvision

    return calibrate_bn(getattr(torchvision.models, name)(weights=None, num_classes=num_classes).eval(),
                        (2, 3, img_size, img_size))


def _fuse_bn(model: nn.Module) -> nn.Module:
    """BN folded into the convs (torch.fx): the treatment VanillaNet's deploy form gets, for a fair baseline."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def _entries(cfg: BenchConfig) -> tuple[list[tuple[str, str, nn.Module]], list[tuple[str, nn.Module]]]:
    """(name, form, fp32 eval model) to run inference on: each model's deploy form, plus with ``baselines`` its
    train form and the ResNets; and (name, model) to train with ``train`` (train forms and unfused ResNets)."""
    if cfg.checkpoint and len(cfg.models) != 1:
        raise ConfigError("--checkpoint goes with exactly one --model")
    infer: list[tuple[str, str, nn.Module]] = []
    train: list[tuple[str, nn.Module]] = []

    def add_resnet(name: str) -> None:
        resnet = _resnet(name, cfg.num_classes, cfg.img_size)
        infer.append((name, "deploy", _fuse_bn(resnet)))
        train.extend([(name, resnet)] if cfg.train else [])

    for name in cfg.models:
        if name in BASELINES:
            add_resnet(name)
            continue
        extra = {} if cfg.checkpoint else {"num_classes": cfg.num_classes, "width_mult": cfg.width_mult}
        model = create_model(name, cfg.checkpoint, use_ema=cfg.ema, allow_large=cfg.allow_large, **extra)
        model = model.eval().float()
        check_min_input_size(model, cfg.img_size)
        if cfg.checkpoint is None:
            calibrate_bn(model, (2, model.in_chans, cfg.img_size, cfg.img_size))
        infer.append((name, "deploy", reparameterize_model(model)))
        if getattr(model, "deploy", True) is False:
            infer += [(name, "train", model)] if cfg.baselines else []
            train += [(name, model)] if cfg.train else []
    for name in BASELINES if cfg.baselines else ():
        if name not in cfg.models:
            add_resnet(name)
    return infer, train


# ---------------------------------------------------------------------------------------------- running
def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _record(r: _Runner, *, model: str, form: str, kind: str, device: torch.device, threads: int, img_size: int,
            params: int | None, macs: int | None) -> dict[str, Any]:
    med = statistics.median(r.rounds_ms)
    return {
        "model": model, "form": form, "mode": r.mode.label, "kind": kind, "backend": r.mode.backend,
        "dtype": BACKENDS[r.mode.backend].computes_in or DTYPE_NAMES[r.mode.dtype],
        "channels_last": r.mode.channels_last, "batch_size": r.batch_size,
        "img_size": img_size, "device": str(device.type), "device_name": device_name(device), "threads": threads,
        "median_ms": med, "min_ms": min(r.rounds_ms), "max_ms": max(r.rounds_ms),
        "images_per_s": r.batch_size * 1e3 / med, "max_rel_err": r.max_rel_err, "repeats": len(r.rounds_ms),
        "iters": r.iters, "params": params, "macs": macs, "torch": torch.__version__,
    }


def _measure(runners: list[_Runner], device: torch.device, cfg: BenchConfig) -> None:
    rounds, counts = time_interleaved([r.fn for r in runners], [r.x for r in runners], device, repeats=cfg.repeats,
                                      iters=cfg.iters, round_s=cfg.round_s, sync_each=[r.mode.sync_each
                                                                                      for r in runners])
    for r, ms, n in zip(runners, rounds, counts):
        r.rounds_ms, r.iters = ms, n


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure every (model, form) x mode x {1, batch_size}, then (``train``) training steps; returns records."""
    device = choose_device(cfg.device)
    with num_threads(cfg.threads) as threads:
        return _run_bench(cfg, device, threads, log)


def _run_bench(cfg: BenchConfig, device: torch.device, threads: int,
               log: Callable[[str], None]) -> list[dict[str, Any]]:
    from .complexity import count_macs, count_params

    modes = parse_modes(cfg.modes, device)
    with torch.random.fork_rng(devices=[]):  # random weights, the same in every run; the caller's RNG untouched
        torch.manual_seed(0)
        infer, train = _entries(cfg)
    records: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(0)
    for name, form, model in infer if cfg.inference else ():
        model = model.to(device)
        in_chans = getattr(model, "in_chans", 3)
        check_min_input_size(model, cfg.img_size)
        size = (in_chans, cfg.img_size, cfg.img_size)
        params, macs = count_params(model), count_macs(model, size)
        log(f"{name} ({form}): {params / 1e6:.2f} M params, {macs / 1e9:.3f} GMACs at {cfg.img_size} px")
        for batch in sorted({1, cfg.batch_size}):
            x = torch.randn(batch, *size, generator=gen).to(device)
            with torch.no_grad(), exact_fp32():
                ref = model(x)
            runners = []
            for mode in modes:
                if mode.batch1_only and batch != 1:
                    continue
                runner = _inference_runner(model, mode, x, device)
                if mode.label not in ("paper", "nchw"):  # these run the reference itself
                    with torch.no_grad():
                        runner.max_rel_err = rel_err(runner.fn(runner.x), ref)
                runners.append(runner)
            _measure(runners, device, cfg)
            records += [_record(r, model=name, form=form, kind="inference", device=device, threads=threads,
                                img_size=cfg.img_size, params=params, macs=macs) for r in runners]
    batch = cfg.train_batch_size or cfg.batch_size
    for name, model in train:
        size = (getattr(model, "in_chans", 3), cfg.img_size, cfg.img_size)
        params, macs = count_params(model), count_macs(model, size)
        runners = [_train_runner(model, m, batch, device, cfg.img_size) for m in cfg.train_modes]
        _measure(runners, device, cfg)
        records += [_record(r, model=name, form="train", kind="train", device=device, threads=threads,
                            img_size=cfg.img_size, params=params, macs=macs) for r in runners]
    return records


# ---------------------------------------------------------------------------------------------- output
def format_table(records: list[dict[str, Any]], markdown: bool = False) -> str:
    """A plain-text (or markdown) table; ``x paper`` = images/s relative to the paper-mode images/s of the same
    model's deploy form (inference records only)."""
    paper = {r["model"]: r["images_per_s"] for r in records if r["mode"] == "paper" and r["form"] == "deploy"}
    head = ["model", "form", "mode", "dtype", "batch", "median ms", "min-max ms", "img/s", "x paper", "max rel err"]
    rows = [head]
    for r in records:
        ratio = r["images_per_s"] / paper[r["model"]] if r["model"] in paper and r["kind"] == "inference" else None
        err = r["max_rel_err"]
        rows.append([r["model"], r["form"], r["mode"], r["dtype"], str(r["batch_size"]), f"{r['median_ms']:.2f}",
                     f"{r['min_ms']:.2f}-{r['max_ms']:.2f}", f"{r['images_per_s']:.1f}",
                     "-" if ratio is None else f"{ratio:.2f}x", "-" if err is None else f"{err:.1e}"])
    from .util.tables import render

    return render(rows, markdown=markdown, left=4)


def plot_records(records: list[dict[str, Any]], path: str | Path) -> None:
    """Horizontal bar chart of images/s, one bar per record, grouped by batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']} {r['form']} {r['mode']} bs{r['batch_size']}" for r in records]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(records) + 1.2))
    batches = sorted({q["batch_size"] for q in records})
    ax.barh(range(len(records)), [r["images_per_s"] for r in records],
            color=[f"C{batches.index(r['batch_size'])}" for r in records])
    ax.set_yticks(range(len(records)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images / s (higher is better)")
    first = records[0] if records else {}
    ax.set_title(f"{first.get('device_name', '')}, {first.get('threads', '')} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    validation.add_arguments(parser, BenchConfig, prefix="bench_")
    parser.add_argument("--plot", help="write a bar chart (PNG) of images/s")
    add_output_arguments(parser, progress=False)
    parser.set_defaults(func=_main)


def _split(value: Any) -> Any:
    """``--model a,b`` and ``--modes`` keep the comma-separated form of the previous CLI."""
    if isinstance(value, list):
        return [s.strip() for v in value for s in str(v).split(",") if s.strip()]
    return value


def _main(args: argparse.Namespace) -> int:
    values = {k: _split(v) for k, v in validation.overrides_from_args(args, BenchConfig, prefix="bench_").items()}
    cfg = validation.build(BenchConfig, values, "vanillanet bench")
    check_json_path(args.json)
    records = run_bench(cfg, log=(lambda line: None) if args.json == STDOUT else print)
    if not emit_json(args.json, records):
        if records:
            r = records[0]
            print(f"device: {r['device_name']} ({r['device']}), {r['threads']} threads, torch {r['torch']}")
        print(format_table(records))
    if args.plot:
        plot_records(records, args.plot)
    return 0

"""Latency and throughput of VanillaNet (and baselines) in named execution modes, measured side by side.

Modes: ``paper`` (the published protocol: fp32, NCHW, eager, batch 1, synchronised after every call), ``eager``
(fp32 NCHW), ``channels_last`` (fp32), ``fp16`` / ``bf16`` (channels_last eager in that dtype), ``cudagraph``
(CUDA graph, fp16 by default), ``compile`` (torch.compile with frozen weights; fp32 on the CPU, fp16 on CUDA by
default), ``onnxruntime`` (CPU, fp32), ``int8`` (CPU, onnxruntime static int8 calibrated on random inputs: its
speed, not its accuracy; ``vanillanet quantize`` measures both on real data). ``cudagraph`` and ``compile`` take a
dtype suffix (``compile:bf16``). ``best`` = every mode this machine runs well.

Protocol: everything is built, compiled and warmed up before timing; then ``repeats`` rounds run interleaved
across the modes of one model and batch size (so load from other processes on a shared machine hits every mode
alike), each round timing ``iters`` calls (CUDA events on a GPU, a monotonic clock on the CPU) and giving the
mean ms per call; records report the median, min and max over rounds. ``max_rel_err`` is max |out - ref| / max
|ref| against the fp32 NCHW eager output of the same model and form (null for that reference itself).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .inference import _exact_fp32, check_input_size, fast_inference, load_model, rel_err

__all__ = ["BASELINES", "MODES", "TRAIN_MODES", "BenchConfig", "Mode", "best_modes", "device_name", "format_table",
           "parse_modes", "plot_records", "run_bench"]

_log = logging.getLogger(__name__)

MODES = ("paper", "eager", "channels_last", "fp16", "bf16", "cudagraph", "compile", "onnxruntime", "int8")
TRAIN_MODES = ("train-fp32", "train-amp", "train-best")
BASELINES = ("resnet50", "resnet18")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAMES = {**{v: k for k, v in _DTYPES.items()}, torch.int8: "int8"}


@dataclass(frozen=True)
class Mode:
    """One execution mode: how a model is run (``kind``), in which dtype and memory layout; ``label`` is the name
    as given (``compile:bf16``)."""

    kind: str
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    label: str = ""


def _bf16_ok(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _fp16_ok(device: torch.device) -> bool:
    return device.type == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def best_modes(device: torch.device) -> list[str]:
    """Every mode worth running on ``device`` (half precision only where the hardware has fast kernels for it)."""
    modes = ["paper", "eager", "channels_last"]
    modes += [m for m, ok in (("fp16", _fp16_ok(device)), ("bf16", _bf16_ok(device))) if ok]
    if device.type == "cuda":
        return modes + ["cudagraph", "compile"]
    modes += ["compile"] + (["compile:bf16"] if _bf16_ok(device) else [])
    return modes + (["onnxruntime", "int8"] if _has_onnxruntime() else [])


def parse_modes(spec: str, device: torch.device) -> list[Mode]:
    """``"paper,compile:bf16,best"`` -> Modes (duplicates dropped); unknown or impossible modes raise ConfigError."""
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        names += best_modes(device) if item == "best" else [item]
    modes: list[Mode] = []
    for name in names:
        kind, _, dt = name.partition(":")
        if kind not in MODES:
            raise ConfigError(f"unknown mode {name!r}; choose from {', '.join(MODES)} or best")
        if dt and (dt not in _DTYPES or kind not in ("cudagraph", "compile")):
            raise ConfigError(f"bad mode {name!r}: only cudagraph and compile take a dtype suffix (:fp32, :fp16, "
                              ":bf16)")
        if kind == "cudagraph" and device.type != "cuda":
            raise ConfigError("mode cudagraph needs a CUDA device; drop it or use --modes best on this machine")
        if kind in ("onnxruntime", "int8") and device.type != "cpu":
            raise ConfigError(f"mode {kind} runs on the CPU only; use --device cpu for it")
        if kind in ("fp16", "bf16"):
            dtype = _DTYPES[kind]
        elif kind in ("cudagraph", "compile"):
            dtype = _DTYPES[dt] if dt else (torch.float16 if device.type == "cuda" else torch.float32)
        elif kind == "int8":
            dtype = torch.int8  # the weights' and activations' type; inputs and logits stay fp32
        else:
            dtype = torch.float32
        if dtype == torch.bfloat16 and not _bf16_ok(device):
            raise ConfigError(f"mode {name} needs bf16 support, which this {device.type} lacks; drop it")
        mode = Mode(kind, dtype, kind not in ("paper", "eager", "onnxruntime", "int8"), f"{kind}:{dt}" if dt else kind)
        if mode not in modes:
            modes.append(mode)
    if not modes:
        raise ConfigError("no modes given; pass e.g. --modes paper,compile or --modes best")
    return modes


@dataclass
class BenchConfig:
    """What ``run_bench`` measures; see ``vanillanet bench --help``."""

    models: list[str] = field(default_factory=lambda: ["vanillanet_5"])
    checkpoint: str | None = None
    batch_size: int = 1
    modes: str = "best"
    img_size: int = 224
    repeats: int = 5
    iters: int | None = None
    round_s: float = 0.5
    threads: int | None = None
    device: str | None = None
    baselines: bool = False
    train: bool = False
    train_batch_size: int | None = None
    train_modes: tuple[str, ...] = TRAIN_MODES
    inference: bool = True
    width_mult: float = 1.0
    num_classes: int = 1000


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class _Runner:
    """A thing to time: ``fn(x)`` on a prepared input, synchronised after every call or only per round."""

    mode: Mode
    batch_size: int
    fn: Callable[[torch.Tensor], Any]
    x: torch.Tensor
    sync_each: bool = False
    iters: int = 1
    rounds_ms: list[float] = field(default_factory=list)
    max_rel_err: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round_ms(r: _Runner, device: torch.device) -> float:
    """Mean ms per call over ``r.iters`` calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(r.iters):
            r.fn(r.x)
            if r.sync_each:
                torch.cuda.synchronize(device)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / r.iters
    t0 = time.perf_counter()
    for _ in range(r.iters):
        r.fn(r.x)
    return (time.perf_counter() - t0) * 1e3 / r.iters


def _measure(runners: list[_Runner], device: torch.device, repeats: int, iters: int | None, round_s: float) -> None:
    """Warm up each runner, size its rounds, then time ``repeats`` rounds interleaved across runners."""
    for r in runners:
        for _ in range(2):
            r.fn(r.x)
        _sync(device)
        r.iters = 1
        single = _round_ms(r, device)
        r.iters = iters or max(1, min(200, round(round_s * 1e3 / max(single, 1e-3))))
    for _ in range(repeats):
        for r in runners:
            r.rounds_ms.append(_round_ms(r, device))


# ---------------------------------------------------------------------------------------------- models
def _resnet(name: str, num_classes: int) -> nn.Module:
    """torchvision's ResNet with random weights (baseline)."""
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes).eval()


@torch.no_grad()
def _calibrate_bn(model: nn.Module, img_size: int) -> None:
    """Give randomly initialised weights realistic activation scales: BN running statistics from two random
    batches (cumulative average). Without this the logits of a deep random VanillaNet are ~1e-15 and underflow
    in fp16, which would make half-precision errors meaningless."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        model(torch.randn(2, getattr(model, "in_chans", 3), img_size, img_size, generator=gen))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def _fuse_bn(model: nn.Module) -> nn.Module:
    """BN folded into the convs (torch.fx): the treatment VanillaNet's deploy form gets, for a fair baseline."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def _complexity(model: nn.Module, in_chans: int, img_size: int) -> tuple[int, int]:
    from .complexity import count_macs, count_params

    return count_params(model), count_macs(model, (in_chans, img_size, img_size))


def _inference_runner(model: nn.Module, mode: Mode, batch: int, x: torch.Tensor, device: torch.device,
                      deploy: bool) -> _Runner:
    """A runner for ``mode``; ``model`` is fp32 eval on ``device`` in the form being measured (not modified)."""
    if mode.kind in ("paper", "eager"):
        return _Runner(mode, batch, torch.no_grad()(model), x, sync_each=mode.kind == "paper")
    if mode.kind in ("channels_last", "fp16", "bf16"):
        m = copy.deepcopy(model).to(dtype=mode.dtype, memory_format=torch.channels_last)
        return _Runner(mode, batch, torch.no_grad()(m), x.to(mode.dtype).contiguous(memory_format=torch.channels_last))
    dtype = torch.float32 if mode.kind == "int8" else mode.dtype
    clf = fast_inference(model, device, dtype, batch_size=batch, image_size=x.shape[-1], backend=mode.kind,
                         deploy=deploy, tol=float("inf"))  # bench reports the error, it does not gate on it
    return _Runner(mode, batch, clf, clf._prepare(x))


def _train_runner(model: nn.Module, mode: str, batch: int, device: torch.device, img_size: int) -> _Runner:
    """One optimisation step (forward, loss, backward, LAMB step as in the paper's recipe) on random data.

    ``train-fp32``: fp32 NCHW. ``train-amp``: the original recipe's autocast (fp16 + gradient scaler on CUDA,
    bf16 on the CPU), NCHW. ``train-best``: channels_last + autocast (bf16 where supported, else fp16 + scaler)
    + torch.compile.
    """
    from timm.optim import create_optimizer_v2

    m = copy.deepcopy(model).train().to(device)
    in_chans = getattr(m, "in_chans", 3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, in_chans, img_size, img_size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    if mode == "train-amp":
        amp = torch.float16 if device.type == "cuda" else torch.bfloat16
    elif mode == "train-best":
        amp = torch.bfloat16 if _bf16_ok(device) else torch.float16
    else:
        amp = None
    if mode == "train-best":
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = create_optimizer_v2(m, "lamb", lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    forward = torch.compile(m) if mode == "train-best" else m
    loss_fn = nn.CrossEntropyLoss()

    def step(inp: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(forward(inp), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    dtype = {None: torch.float32}.get(amp, amp)
    return _Runner(Mode(mode, dtype, mode == "train-best", mode), batch, step, x)


# ---------------------------------------------------------------------------------------------- running
def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was given but CUDA is not available; use --device cpu")
    return device


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
        "model": model, "form": form, "mode": r.mode.label, "kind": kind, "dtype": _DTYPE_NAMES[r.mode.dtype],
        "channels_last": r.mode.channels_last, "batch_size": r.batch_size, "img_size": img_size,
        "device": str(device.type), "device_name": device_name(device), "threads": threads,
        "median_ms": med, "min_ms": min(r.rounds_ms), "max_ms": max(r.rounds_ms),
        "images_per_s": r.batch_size * 1e3 / med, "max_rel_err": r.max_rel_err, "repeats": len(r.rounds_ms),
        "iters": r.iters, "params": params, "macs": macs, "torch": torch.__version__,
    }


def _entries(cfg: BenchConfig) -> tuple[list[tuple[str, str, nn.Module]], list[tuple[str, nn.Module]]]:
    """(name, form, fp32 eval model) to run inference on: each model's deploy form, plus with ``baselines`` its
    train form and the ResNets; and (name, model) to train with ``train`` (train forms and unfused ResNets)."""
    if cfg.checkpoint and len(cfg.models) != 1:
        raise ConfigError("--checkpoint goes with exactly one --model")
    from .reparam import reparameterize_model

    infer: list[tuple[str, str, nn.Module]] = []
    train: list[tuple[str, nn.Module]] = []

    def add_resnet(name: str) -> None:
        resnet = _resnet(name, cfg.num_classes)
        _calibrate_bn(resnet, cfg.img_size)
        infer.append((name, "deploy", _fuse_bn(resnet)))
        train.extend([(name, resnet)] if cfg.train else [])

    for name in cfg.models:
        if name in BASELINES:
            add_resnet(name)
            continue
        extra = {} if cfg.checkpoint else {"num_classes": cfg.num_classes, "width_mult": cfg.width_mult}
        model = load_model(name, cfg.checkpoint, **extra).eval().float()
        check_input_size(model, cfg.img_size)
        if cfg.checkpoint is None:
            _calibrate_bn(model, cfg.img_size)
        infer.append((name, "deploy", reparameterize_model(model)))
        if getattr(model, "deploy", True) is False:
            infer += [(name, "train", model)] if cfg.baselines else []
            train += [(name, model)] if cfg.train else []
    for name in BASELINES if cfg.baselines else ():
        if name not in cfg.models:
            add_resnet(name)
    return infer, train


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure every (model, form) x mode x {1, batch_size}, then (``train``) training steps; returns records."""
    device = _device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    if cfg.batch_size < 1 or cfg.repeats < 1:
        raise ConfigError("--batch-size and --repeats must be at least 1")
    modes = parse_modes(cfg.modes, device)
    bad = [m for m in cfg.train_modes if m not in TRAIN_MODES]
    if bad:
        raise ConfigError(f"unknown training mode {bad[0]!r}; choose from {', '.join(TRAIN_MODES)}")
    infer, train = _entries(cfg)
    records: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(0)
    for name, form, model in infer if cfg.inference else ():
        model = model.to(device)
        in_chans = getattr(model, "in_chans", 3)
        check_input_size(model, cfg.img_size, in_chans)
        params, macs = _complexity(model, in_chans, cfg.img_size)
        log(f"{name} ({form}): {params / 1e6:.2f} M params, {macs / 1e9:.3f} GMACs at {cfg.img_size} px")
        for batch in sorted({1, cfg.batch_size}):
            x = torch.randn(batch, in_chans, cfg.img_size, cfg.img_size, generator=gen).to(device)
            with torch.no_grad(), _exact_fp32():
                ref = model(x)
            runners = []
            for mode in modes:
                if mode.kind == "paper" and batch != 1:
                    continue
                runner = _inference_runner(model, mode, batch, x, device, deploy=form == "deploy")
                if mode.kind not in ("paper", "eager"):
                    with torch.no_grad():
                        runner.max_rel_err = rel_err(runner.fn(runner.x), ref)
                runners.append(runner)
            _measure(runners, device, cfg.repeats, cfg.iters, cfg.round_s)
            records += [_record(r, model=name, form=form, kind="inference", device=device, threads=threads,
                                img_size=cfg.img_size, params=params, macs=macs) for r in runners]
    batch = cfg.train_batch_size or cfg.batch_size
    for name, model in train:
        params, macs = _complexity(model, getattr(model, "in_chans", 3), cfg.img_size)
        runners = [_train_runner(model, m, batch, device, cfg.img_size) for m in cfg.train_modes]
        _measure(runners, device, cfg.repeats, cfg.iters, cfg.round_s)
        records += [_record(r, model=name, form="train", kind="train", device=device, threads=threads,
                            img_size=cfg.img_size, params=params, macs=macs) for r in runners]
    return records


# ---------------------------------------------------------------------------------------------- output
def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table; ``x paper`` = images/s relative to the paper-mode images/s of the same model's deploy
    form (inference records only)."""
    paper = {r["model"]: r["images_per_s"] for r in records if r["mode"] == "paper" and r["form"] == "deploy"}
    head = ["model", "form", "mode", "dtype", "batch", "median ms", "min-max ms", "img/s", "x paper", "max rel err"]
    rows = [head]
    for r in records:
        ratio = r["images_per_s"] / paper[r["model"]] if r["model"] in paper and r["kind"] == "inference" else None
        err = r["max_rel_err"]
        rows.append([r["model"], r["form"], r["mode"], r["dtype"], str(r["batch_size"]), f"{r['median_ms']:.2f}",
                     f"{r['min_ms']:.2f}-{r['max_ms']:.2f}", f"{r['images_per_s']:.1f}",
                     "-" if ratio is None else f"{ratio:.2f}", "-" if err is None else f"{err:.1e}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot_records(records: list[dict[str, Any]], path: str | Path) -> None:
    """Horizontal bar chart of images/s, one bar per record, grouped by batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']} {r['form']} {r['mode']} bs{r['batch_size']}" for r in records]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(records) + 1.2))
    ax.barh(range(len(records)), [r["images_per_s"] for r in records],
            color=[f"C{sorted({q['batch_size'] for q in records}).index(r['batch_size'])}" for r in records])
    ax.set_yticks(range(len(records)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images / s (higher is better)")
    first = records[0] if records else {}
    ax.set_title(f"{first.get('device_name', '')}, {first.get('threads', '')} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--model", default="vanillanet_5",
                        help="comma-separated variants, resnet50/resnet18 allowed (default vanillanet_5)")
    parser.add_argument("--checkpoint", help="weights for the (single) model; random weights otherwise")
    parser.add_argument("--batch-size", type=int, default=1, help="throughput batch size (batch 1 is always "
                        "measured too)")
    parser.add_argument("--modes", default="best", help=f"comma-separated from {', '.join(MODES)}, or best "
                        "(cudagraph/compile take :fp16/:bf16/:fp32; int8 is calibrated on random inputs)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per mode (median, min, max)")
    parser.add_argument("--iters", type=int, help="calls per round (default: about --round-s seconds' worth)")
    parser.add_argument("--round-s", type=float, default=0.5, help="target seconds per round (default 0.5)")
    parser.add_argument("--threads", type=int, help="CPU threads (torch and onnxruntime; default: torch's)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--baselines", action="store_true",
                        help="also the train form and torchvision resnet50/resnet18 (random weights)")
    parser.add_argument("--train", action="store_true", help="also training-step throughput")
    parser.add_argument("--train-batch-size", type=int, help="batch for --train (default --batch-size)")
    parser.add_argument("--train-modes", default=",".join(TRAIN_MODES),
                        help="training modes for --train (default: all): train-fp32 (fp32 NCHW), train-amp (the "
                        "original recipe: autocast NCHW), train-best (channels_last + autocast + torch.compile)")
    parser.add_argument("--width-mult", type=float, default=1.0, help="scale the widths (quick tests)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--json", help="write the records to this JSON file")
    parser.add_argument("--plot", help="write a bar chart (PNG) of images/s")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = BenchConfig(models=[m.strip() for m in args.model.split(",") if m.strip()], checkpoint=args.checkpoint,
                      batch_size=args.batch_size, modes=args.modes, img_size=args.img_size, repeats=args.repeats,
                      iters=args.iters, round_s=args.round_s, threads=args.threads, device=args.device,
                      baselines=args.baselines, train=args.train, train_batch_size=args.train_batch_size,
                      train_modes=tuple(m.strip() for m in args.train_modes.split(",") if m.strip()),
                      width_mult=args.width_mult, num_classes=args.num_classes)
    records = run_bench(cfg)
    if records:
        r = records[0]
        print(f"device: {r['device_name']} ({r['device']}), {r['threads']} threads, torch {r['torch']}")
    print(format_table(records))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=1))
    if args.plot:
        plot_records(records, args.plot)
    return 0

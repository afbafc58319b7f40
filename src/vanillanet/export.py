"""ONNX and TorchScript export of the deploy form, each checked against PyTorch before the file is kept.

The deploy form is exported (a train-form model is converted first; act_learn must be 1). The batch axis is dynamic,
the spatial size fixed (``img_size``). ONNX goes through torch's ``dynamo=True`` exporter (onnxscript), which
handles every variant once the ada_pool variant's adaptive max pools are rewritten as fixed gathers + max
(neither of torch's exporters supports adaptive max pooling whose output size does not divide the input size);
``exporter="legacy"`` selects the TorchScript-based exporter, deprecated since torch 2.9. The exported file is
run in onnxruntime (or reloaded with ``torch.jit.load``) on random inputs of two batch sizes and compared with
the PyTorch model; above ``tol`` relative error the file is not written.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import write_atomic
from .errors import ConfigError, ConversionError
from .inference import check_input_size, load_model, rel_err
from .reparam import reparameterize_model

__all__ = ["ExportResult", "StaticAdaptiveMaxPool2d", "export_onnx", "export_torchscript", "make_exportable",
           "onnx_runner", "onnx_session"]

_log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "legacy")


@dataclass(frozen=True)
class ExportResult:
    """What was written and how closely it matches PyTorch (max |out - ref| / max |ref| over the check batches)."""

    path: Path
    format: str
    exporter: str
    opset: int | None
    input_shape: tuple[int, int, int, int]
    max_rel_err: float


class StaticAdaptiveMaxPool2d(nn.Module):
    """``AdaptiveMaxPool2d`` for one known input size, written as index_select + amax (exportable, exact).

    Output cell i along an axis of length n covers [floor(i n / m), ceil((i+1) n / m)); windows are padded to the
    longest one by repeating their last index, which leaves a maximum unchanged. Max is separable: rows, then
    columns.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        super().__init__()
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        self.k: list[int] = []
        for axis, (n, m) in enumerate(zip(self.in_hw, self.out_hw)):
            bounds = [((i * n) // m, -(-((i + 1) * n) // m)) for i in range(m)]
            k = max(e - s for s, e in bounds)
            idx = torch.tensor([[min(s + j, e - 1) for j in range(k)] for s, e in bounds]).flatten()
            self.register_buffer(f"idx{axis}", idx, persistent=False)
            self.k.append(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.in_hw:
            raise ConfigError(f"this exported pooling layer expects {self.in_hw} inputs, got {tuple(x.shape[-2:])}; "
                              "export again with the image size you will use")
        x = x.index_select(2, self.idx0).unflatten(2, (self.out_hw[0], self.k[0])).amax(3)
        return x.index_select(3, self.idx1).unflatten(3, (self.out_hw[1], self.k[1])).amax(4)

    def extra_repr(self) -> str:
        return f"in_hw={self.in_hw}, out_hw={self.out_hw}"


@torch.no_grad()
def make_exportable(model: nn.Module, img_size: int, in_chans: int | None = None, *, deploy: bool = True
                    ) -> nn.Module:
    """A deploy-form (unless ``deploy=False``) fp32 CPU copy of ``model`` in eval mode whose adaptive max pools
    are fixed for ``img_size``."""
    model = (reparameterize_model(model) if deploy else copy.deepcopy(model).eval()).float().cpu()
    in_chans = in_chans or getattr(model, "in_chans", 3)
    check_input_size(model, img_size, in_chans)
    pools = {name: m for name, m in model.named_modules() if isinstance(m, nn.AdaptiveMaxPool2d)}
    if not pools:
        return model
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: sizes.__setitem__(n, tuple(args[0].shape[-2:])))
             for n, m in pools.items()]
    model(torch.zeros(1, in_chans, img_size, img_size))
    for h in hooks:
        h.remove()
    for name, pool in pools.items():
        out = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
        out = tuple(o if o is not None else s for o, s in zip(out, sizes[name]))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, StaticAdaptiveMaxPool2d(sizes[name], out))
    return model


def _check_inputs(in_chans: int, img_size: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, in_chans, img_size, img_size, generator=gen) for b in (1, 3)]


def onnx_session(path_or_bytes: str | Path | bytes, threads: int | None = None):
    """An onnxruntime CPU session with full graph optimisation; ``threads`` intra-op threads (default: torch's)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("onnxruntime is not installed; run pip install 'vanillanet[export]'") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def onnx_runner(sess) -> Callable[[torch.Tensor], torch.Tensor]:
    """``sess`` as a function: image batch (any layout, on the CPU) -> fp32 logits, a CPU tensor the caller owns.

    Only numpy runs around the session, never a torch op: a parallel torch op wakes torch's OpenMP threads, which
    then spin for a while (libgomp's default) on the cores that onnxruntime's own threads need, and the two thread
    pools slow each other down on a small machine. numpy makes a channels_last input contiguous in one thread; a
    contiguous fp32 input is passed without a copy, and the session's fresh output array is wrapped without one."""
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        a = (x if x.dtype == torch.float32 else x.float()).detach().cpu().numpy()
        return torch.from_numpy(sess.run(None, {name: np.ascontiguousarray(a)})[0])

    run.session = sess  # for inspection (thread settings)
    return run


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and deprecation warnings (errors still propagate)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def onnx_bytes(model: nn.Module, img_size: int, *, in_chans: int | None = None, opset: int = DEFAULT_OPSET,
               exporter: str = "dynamo", deploy: bool = True) -> bytes:
    """The ONNX serialisation of ``make_exportable(model)`` with a dynamic batch axis named ``batch``."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    m = make_exportable(model, img_size, in_chans, deploy=deploy)
    x = torch.zeros(2, getattr(m, "in_chans", in_chans or 3), img_size, img_size)
    names = dict(input_names=["input"], output_names=["logits"])
    try:
        with _quiet(), torch.no_grad():
            if exporter == "dynamo":
                program = torch.onnx.export(m, (x,), dynamo=True, opset_version=opset, verbose=False,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
                return program.model_proto.SerializeToString()
            buf = io.BytesIO()
            torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=opset, **names,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            return buf.getvalue()
    except Exception as err:  # the exporters raise many types; report one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        other = "legacy" if exporter == "dynamo" else "dynamo"
        raise ConversionError(f"ONNX export ({exporter}, opset {opset}) failed: {first}; try --exporter {other} or "
                              "another --opset") from None


def _reference(model: nn.Module) -> nn.Module:
    """``model`` itself in eval mode when it is fp32 on the CPU (the usual case), else an fp32 CPU copy."""
    p = next(model.parameters(), None)
    if p is not None and (p.device.type != "cpu" or p.dtype != torch.float32):
        model = copy.deepcopy(model).float().cpu()
    return model.eval()


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def _refuse(err: float, tol: float, what: str) -> None:
    if not err <= tol:  # also catches NaN
        raise ConversionError(f"{what} differs from PyTorch by {err:.3g} (relative), above the {tol:g} limit; the file "
                              "was not written (check the model, or try another exporter/opset)")


@torch.no_grad()
def export_onnx(model: nn.Module, output: str | Path, *, img_size: int = 224, in_chans: int | None = None,
                opset: int = DEFAULT_OPSET, exporter: str = "dynamo", tol: float = 1e-4) -> ExportResult:
    """Export ``model``'s deploy form to ONNX, check it in onnxruntime against ``model`` itself at batch 1 and 3,
    and write ``output`` only when the max relative error is at most ``tol``."""
    output = Path(output)
    in_chans = in_chans or getattr(model, "in_chans", 3)
    data = onnx_bytes(model, img_size, in_chans=in_chans, opset=opset, exporter=exporter)
    sess = onnx_session(data)
    ref_model = _reference(model)
    err = 0.0
    for x in _check_inputs(in_chans, img_size):
        out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
        err = max(err, rel_err(out, ref_model(x)))
    _refuse(err, tol, "the ONNX model")
    _write_atomic(output, data)
    return ExportResult(output, "onnx", exporter, opset, (-1, in_chans, img_size, img_size), err)


@torch.no_grad()
def export_torchscript(model: nn.Module, output: str | Path, *, img_size: int = 224, in_chans: int | None = None,
                       tol: float = 1e-4) -> ExportResult:
    """Trace ``model``'s deploy form to TorchScript (loadable with ``torch.jit.load`` without this package), check
    the reloaded module against ``model`` at batch 1 and 3, and write ``output`` only within ``tol``."""
    output = Path(output)
    in_chans = in_chans or getattr(model, "in_chans", 3)
    m = make_exportable(model, img_size, in_chans)
    with _quiet():
        traced = torch.jit.trace(m, torch.zeros(2, in_chans, img_size, img_size))
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        reloaded = torch.jit.load(io.BytesIO(buf.getvalue()))
    ref_model = _reference(model)
    err = max(rel_err(reloaded(x), ref_model(x)) for x in _check_inputs(in_chans, img_size))
    _refuse(err, tol, "the TorchScript model")
    _write_atomic(output, buf.getvalue())
    return ExportResult(output, "torchscript", "trace", None, (-1, in_chans, img_size, img_size), err)


# ------------------------------------------------------------------------------------------------------- CLI
def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--model", help="variant name (default: from the checkpoint's metadata)")
    parser.add_argument("--checkpoint", help="weights to export (train or deploy form); random weights if omitted")
    parser.add_argument("--output", required=True, help="file to write (.onnx, or .pt/.ts for TorchScript)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), help="default: from the output's suffix")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--img-size", type=int, default=224, help="input height = width (default 224)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="ONNX exporter: dynamo (torch.export + onnxscript, default) or legacy (TorchScript)")
    parser.add_argument("--num-classes", type=int, help="classes of a randomly initialised model (default 1000)")
    parser.add_argument("--tol", type=float, default=1e-4, help="max relative error allowed (default 1e-4)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    fmt = args.format or ("onnx" if Path(args.output).suffix.lower() == ".onnx" else
                          "torchscript" if Path(args.output).suffix.lower() in (".pt", ".ts", ".pth") else None)
    if fmt is None:
        raise ConfigError(f"cannot tell the format from {args.output!r}; name it .onnx or .pt, or pass --format")
    if args.checkpoint is None and args.model is None:
        raise ConfigError("nothing to export; pass --model NAME (random weights) and/or --checkpoint PATH")
    extra = {"num_classes": args.num_classes} if args.num_classes and args.checkpoint is None else {}
    model = load_model(args.model, args.checkpoint, **extra)
    if fmt == "onnx":
        res = export_onnx(model, args.output, img_size=args.img_size, opset=args.opset, exporter=args.exporter,
                          tol=args.tol)
    else:
        res = export_torchscript(model, args.output, img_size=args.img_size, tol=args.tol)
    how = f"{res.exporter} exporter, opset {res.opset}" if res.format == "onnx" else "torch.jit.trace"
    print(f"wrote {res.path} ({res.format}, {how}, input {list(res.input_shape)} with dynamic batch); "
          f"max relative error vs PyTorch {res.max_rel_err:.2e}")
    return 0

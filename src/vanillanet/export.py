"""ONNX and TorchScript export of the deploy form (``vanillanet export``), each checked against PyTorch before the
file is kept.

The deploy form is exported (a train-form model is converted first; act_learn must be 1). The batch axis is
dynamic; ONNX files and traced TorchScript fix the spatial size (``img_size``). The exported file is run in
onnxruntime (or reloaded with ``torch.jit.load``) on random inputs of two batch sizes and compared with the PyTorch
model; above ``tol`` relative error the file is not written, nor when the weights are unusable
(``integrity.unsound``) or the output is the input checkpoint. The graph preparation and the ONNX bytes come from
``deploy/onnx_graph.py``.

TorchScript: ``torch.jit.script`` by default. The scripted deploy model takes any batch and any input size (its
adaptive pools and the activation's kernel trimming on tiny maps follow the input), and on the CPU it ran as fast
as the traced one at 224 px and faster where the trimming applies. ``method="trace"`` gives a flat,
control-flow-free graph (plain kernels, the ada_pool variant's pools fixed for ``img_size``) for tools that only
take traced modules.
"""

from __future__ import annotations

import argparse
import copy
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .arguments import add_input_arguments, add_model_arguments
from .deploy.onnx_graph import DEFAULT_OPSET, EXPORTERS, make_exportable, onnx_bytes, onnx_session, quiet
from .model.geometry import check_min_input_size
from .model.registry import create_model
from .model.reparam import rel_err, reparameterize_model
from .util.errors import ConfigError, ConversionError
from .util.fileio import refuse_inputs, write_atomic
from .util.integrity import describe, unsound
from .util.validation import value_type

__all__ = ["TORCHSCRIPT_METHODS", "ExportResult", "export_onnx", "export_torchscript"]

TORCHSCRIPT_METHODS = ("script", "trace")


@dataclass(frozen=True)
class ExportResult:
    """What was written and how closely it matches PyTorch (max |out - ref| / max |ref| over the check batches)."""

    path: Path
    format: str
    exporter: str
    opset: int | None
    input_shape: tuple[int, int, int, int]
    max_rel_err: float


def _check_sound(model: nn.Module) -> None:
    """Weights no usable model holds are refused up front (the parity check would otherwise blame the exporter)."""
    bad = unsound(("", model.state_dict()))
    if bad:
        raise ConversionError(f"the model's weights are unusable ({describe(bad)}): the training diverged or the "
                              "checkpoint is damaged; export an earlier checkpoint")


def _check_inputs(in_chans: int, img_size: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, in_chans, img_size, img_size, generator=gen) for b in (1, 3)]


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
    _check_sound(model)
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
                       tol: float = 1e-4, method: str = "script") -> ExportResult:
    """Script (or trace) ``model``'s deploy form to TorchScript (loadable with ``torch.jit.load`` without this
    package), check the reloaded module against ``model`` at batch 1 and 3 at ``img_size``, and write ``output``
    only within ``tol``. A scripted file takes any input size (``input_shape`` -1), a traced one ``img_size``."""
    if method not in TORCHSCRIPT_METHODS:
        raise ConfigError(f"TorchScript method must be one of {', '.join(TORCHSCRIPT_METHODS)}, got {method!r}")
    output = Path(output)
    _check_sound(model)
    in_chans = in_chans or getattr(model, "in_chans", 3)
    with quiet():
        if method == "script":
            check_min_input_size(model, img_size)
            module = torch.jit.script(reparameterize_model(model).float().cpu())
        else:
            module = torch.jit.trace(make_exportable(model, img_size, in_chans),
                                     torch.zeros(2, in_chans, img_size, img_size))
        buf = io.BytesIO()
        torch.jit.save(module, buf)
        reloaded = torch.jit.load(io.BytesIO(buf.getvalue()))
    ref_model = _reference(model)
    err = max(rel_err(reloaded(x), ref_model(x)) for x in _check_inputs(in_chans, img_size))
    _refuse(err, tol, "the TorchScript model")
    _write_atomic(output, buf.getvalue())
    side = -1 if method == "script" else img_size
    return ExportResult(output, "torchscript", method, None, (-1, in_chans, side, side), err)


# ------------------------------------------------------------------------------------------------------- CLI
def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    add_model_arguments(parser, checkpoint="optional",
                        what="weights to export (train or deploy form); random weights if omitted")
    parser.add_argument("--output", required=True, help="file to write (.onnx, or .pt/.ts for TorchScript), or a "
                        "new folder for --format hf")
    parser.add_argument("--format", choices=("onnx", "torchscript", "hf"),
                        help="default: from the output's suffix; hf = a Hugging Face / timm model folder")
    parser.add_argument("--opset", type=value_type(int, ge=1), default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    add_input_arguments(parser, crop=False, img_size=224, img_help="input height = width (default 224)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="ONNX exporter: dynamo (torch.export + onnxscript, default) or legacy (TorchScript)")
    parser.add_argument("--num-classes", type=value_type(int, ge=1),
                        help="classes of a randomly initialised model (default 1000)")
    parser.add_argument("--torchscript-method", choices=TORCHSCRIPT_METHODS, default="script",
                        help="torch.jit.script (default: any input size) or torch.jit.trace (flat graph, "
                             "--img-size only)")
    parser.add_argument("--tol", type=value_type(float, ge=0), default=1e-4,
                        help="max relative error allowed (default 1e-4)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    fmt = args.format or ("onnx" if Path(args.output).suffix.lower() == ".onnx" else
                          "torchscript" if Path(args.output).suffix.lower() in (".pt", ".ts", ".pth") else None)
    if fmt is None:
        raise ConfigError(f"cannot tell the format from {args.output!r}; name it .onnx or .pt, or pass --format")
    if args.checkpoint is None and args.model is None:
        raise ConfigError("nothing to export; pass --model NAME (random weights) and/or --checkpoint PATH")
    from .data.images import check_img_size_limit

    refuse_inputs(args.output, args.checkpoint)
    check_img_size_limit(args.img_size, allow_large=args.allow_large, what="--img-size")
    extra = {"num_classes": args.num_classes} if args.num_classes and args.checkpoint is None else {}
    model = create_model(args.model, args.checkpoint, use_ema=not args.no_ema, allow_large=args.allow_large, **extra)
    if fmt == "hf":
        from .hub import export_hf

        hub = export_hf(model, args.output)
        print(f"wrote {hub.path}/ (config.json, model.safetensors, README.md): {hub.architecture} deploy form, "
              f"{hub.params / 1e6:.2f} M params; reloaded through timm, max relative error {hub.max_rel_err:.2e}")
        return 0
    if fmt == "onnx":
        res = export_onnx(model, args.output, img_size=args.img_size, opset=args.opset, exporter=args.exporter,
                          tol=args.tol)
    else:
        res = export_torchscript(model, args.output, img_size=args.img_size, tol=args.tol,
                                 method=args.torchscript_method)
    how = f"{res.exporter} exporter, opset {res.opset}" if res.format == "onnx" else f"torch.jit.{res.exporter}"
    print(f"wrote {res.path} ({res.format}, {how}, input {list(res.input_shape)}, -1 = any); "
          f"max relative error vs PyTorch {res.max_rel_err:.2e} at {args.img_size} px")
    return 0

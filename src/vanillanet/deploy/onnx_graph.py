"""Export-ready graphs of the deploy form: fixed-size rewrites of what exporters cannot take, the ONNX bytes of a
model, onnxruntime sessions and the one way to call them (``onnx_runner``).

Neither of torch's ONNX exporters supports adaptive max pooling whose output size does not divide the input size
(the ada_pool variant: 75 -> 38 -> 19 -> 10 at 224 px); ``make_exportable`` replaces those layers with an exact
fixed-window equivalent for the export size. ONNX goes through torch's ``dynamo=True`` exporter (onnxscript) by
default; ``exporter="legacy"`` selects the TorchScript-based exporter, deprecated since torch 2.9.
``relu_before_maxpool`` is the one graph rewrite the runtimes get on top: exact, and faster where they fuse.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model.geometry import check_min_input_size
from ..model.layers import StridedAdaptiveMaxPool2d
from ..model.reparam import reparameterize_model
from ..util.errors import ConfigError, ConversionError, first_line

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "StaticAdaptiveMaxPool2d", "make_exportable", "onnx_bytes", "onnx_runner",
           "onnx_session", "quiet", "relu_before_maxpool"]

DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "legacy")


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
    are fixed for ``img_size``. Its weights are in the contiguous (NCHW) format: the exporters trace a model in
    channels_last into a longer graph (each conv's bias a separate Add, the flatten through Shape/Gather/Range: 28
    nodes instead of 18 for vanillanet_5), the same function with more for every runtime to undo."""
    model = (reparameterize_model(model) if deploy else copy.deepcopy(model).eval()).float().cpu()
    model = model.to(memory_format=torch.contiguous_format)
    in_chans = in_chans or getattr(model, "in_chans", 3)
    check_min_input_size(model, img_size)
    pools = {name: m for name, m in model.named_modules()
             if isinstance(m, (nn.AdaptiveMaxPool2d, StridedAdaptiveMaxPool2d))}
    if not pools:
        return model
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: sizes.__setitem__(n, tuple(args[0].shape[-2:])))
             for n, m in pools.items()]
    model(torch.zeros(1, in_chans, img_size, img_size))
    for h in hooks:
        h.remove()
    for name, pool in pools.items():
        if isinstance(pool, StridedAdaptiveMaxPool2d):
            out = pool.output_hw(*sizes[name])
        else:
            out = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
            out = tuple(o if o is not None else s for o, s in zip(out, sizes[name]))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, StaticAdaptiveMaxPool2d(sizes[name], out))
    return model


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
    try:
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types (NOT_IMPLEMENTED for an opset it lacks, ...)
        raise ConversionError(f"onnxruntime cannot run the ONNX model ({first_line(err, 200)}); export it with "
                              "another --opset or --exporter") from None


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
def quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and deprecation warnings, and the C++ IR dump the legacy exporter
    writes to file descriptor 1 before re-raising an error (redirect_stdout does not reach it); errors still
    propagate."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all: nothing to silence
        saved = None
    try:
        if saved is not None:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
        with contextlib.suppress(AttributeError):  # torch's legacy exporter turns its log on and leaves it on
            torch._C._jit_set_onnx_log_enabled(False)


def onnx_bytes(model: nn.Module, img_size: int, *, in_chans: int | None = None, opset: int = DEFAULT_OPSET,
               exporter: str = "dynamo", deploy: bool = True) -> bytes:
    """The ONNX serialisation of ``make_exportable(model)`` with a dynamic batch axis named ``batch``."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    m = make_exportable(model, img_size, in_chans, deploy=deploy)
    x = torch.zeros(2, getattr(m, "in_chans", in_chans or 3), img_size, img_size)
    names = dict(input_names=["input"], output_names=["logits"])
    try:
        with quiet(), torch.no_grad():
            if exporter == "dynamo":
                program = torch.onnx.export(m, (x,), dynamo=True, opset_version=opset, verbose=False,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
                return program.model_proto.SerializeToString()
            buf = io.BytesIO()
            torch.onnx.export(m, (x,), buf, dynamo=False, opset_version=opset, **names,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            return buf.getvalue()
    except Exception as err:  # the exporters raise many types; report one line
        other = "legacy" if exporter == "dynamo" else "dynamo"
        raise ConversionError(f"ONNX export ({exporter}, opset {opset}) failed: {first_line(err, 300)}; try "
                              f"--exporter {other} or another --opset") from None


def relu_before_maxpool(proto):
    """A copy of the ONNX model with every ``MaxPool -> Relu`` pair (the pool's only consumer) swapped into
    ``Relu -> MaxPool``: the same function, to the bit (max and ReLU commute), with the ReLU now right after the
    conv, where runtimes fuse it into the conv: OpenVINO's runtime graph loses its three ReLU passes (a saving within
    the noise of two compiled copies at batch 32), and int8 absorbs it into the conv's quantized output (``int8``'s
    module docstring)."""
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

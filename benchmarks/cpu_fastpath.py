"""Our CPU paths against what a user of the original code gets, side by side in one process: vanillanet_5 (deploy
form, random weights with calibrated BN statistics), batch 1 and batch 32, the same threads everywhere, interleaved
rounds, medians and ratios.

The peers start from the original code's deploy model: ``OriginalDeploy`` is that architecture written with plain
torch layers (stem conv + ReLU + depthwise 7x7; per layer a 1x1 conv, max pool, ReLU + depthwise 7x7; average pool
and a 1x1 conv head), given our deploy form's weights and checked equal to it, then exported with a plain
``torch.onnx.export(module, (x,), f)`` (default options, the batch size it runs at), never through vanillanet's
export path. Peer rows: a plain onnxruntime session (default options, only the intra-op threads set), OpenVINO fp32
(``INFERENCE_PRECISION_HINT=f32``) and OpenVINO with its default settings (bf16 on CPUs with native bf16), both
with the inference threads set, and a second copy of the last compiled the same way: how far apart two identical
compiled models run in one process is the noise floor of every peer-against-ours ratio. Our rows:
``fast_inference`` with ``backend="auto"`` (and what it picked) and each CPU backend in fp32; in bf16 (CPUs with
native bf16) ``auto`` and the openvino and compile backends; int8 (``int8``: onnxruntime, ``openvino_int8``:
OpenVINO; ranges calibrated on noise: speed only). Every row's error is against the fp32 eager output.
The summary gives the issue's targets as ratios of medians from this one run.
Usage: python benchmarks/cpu_fastpath.py [--threads 2] [--rounds 9] [--batches 1,32] [--img-size 224]
Writes OUT/cpu_fastpath.json and OUT/cpu_fastpath.md (default OUT: benchmarks/results).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tables import write_results
from torch import nn

from vanillanet.bench import device_name
from vanillanet.deploy.backends import dtype_supported
from vanillanet.deploy.inference import fast_inference
from vanillanet.deploy.onnx_graph import quiet
from vanillanet.deploy.openvino_model import kept_signal_stack
from vanillanet.model.registry import create_model
from vanillanet.model.reparam import calibrate_bn, rel_err, reparameterize_model
from vanillanet.util.timing import time_interleaved

CPU = torch.device("cpu")
FLAGS_SHOWN = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
               "avx512_fp16")
PEER_ORT, PEER_OV32, PEER_OV = ("peer: plain onnxruntime session (fp32)", "peer: OpenVINO fp32 (f32 hint)",
                                "peer: OpenVINO default settings")
PEER_OV_COPY = "peer: OpenVINO default settings, a second copy compiled the same way"  # the noise floor


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def random_deploy_model(img_size: int, width_mult: float = 1.0) -> torch.nn.Module:
    """vanillanet_5's deploy form with random weights and calibrated BN statistics (speed does not depend on the
    weights), as ``vanillanet bench`` measures it."""
    torch.manual_seed(0)
    model = create_model("vanillanet_5", width_mult=width_mult).eval()
    return reparameterize_model(calibrate_bn(model, (2, 3, img_size, img_size)))


def time_named(fns: dict[str, Callable[[], object]], rounds: int, round_s: float) -> dict[str, list[float]]:
    """ms per call of each no-argument function, one value per round, rounds interleaved (``timing``)."""
    ms, _ = time_interleaved([lambda _, f=f: f() for f in fns.values()], [None] * len(fns), CPU, repeats=rounds,
                             round_s=round_s)
    return dict(zip(fns, ms))


class _Act(nn.Module):
    """The original's deploy activation: ReLU, then a depthwise conv with bias (padding keeps the size)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.relu(x), self.weight, self.bias, padding=self.weight.shape[-1] // 2, groups=x.shape[1])


class OriginalDeploy(nn.Module):
    """The original code's deploy form of a VanillaNet without ada_pool, with plain torch layers and the weights of
    ``ours`` (our deploy form)."""

    def __init__(self, ours: nn.Module):
        super().__init__()
        stem_conv, stem_act = ours.stem
        self.stem = nn.Sequential(_copy(stem_conv), _Act(stem_act.weight, stem_act.bias))
        self.stages = nn.Sequential(*(nn.Sequential(_copy(s.conv), nn.MaxPool2d(s.pool.kernel_size)
                                                    if isinstance(s.pool, nn.MaxPool2d) else nn.Identity(),
                                                    _Act(s.act.weight, s.act.bias)) for s in ours.stages))
        self.head = _copy(ours.cls[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1)
        return self.head(x).view(x.shape[0], -1)


def _copy(conv: nn.Conv2d) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    groups=conv.groups)
    new.load_state_dict(conv.state_dict())
    return new


def plain_export(module: nn.Module, x: torch.Tensor) -> bytes:
    """What a user writes: ``torch.onnx.export(module, (x,), f)`` with default options."""
    buf = io.BytesIO()
    with quiet():
        torch.onnx.export(module, (x,), buf)
    return buf.getvalue()


def peers(onnx: bytes, threads: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The plain sessions of one ONNX file, each a function image batch -> logits (numpy in, numpy out)."""
    import onnxruntime as ort
    import openvino as ov

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    core, model = ov.Core(), ov.convert_model(io.BytesIO(onnx))
    ov32 = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    ovd, copy = (core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads}) for _ in range(2))
    return {PEER_ORT: lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0]),
            PEER_OV32: lambda x: torch.from_numpy(ov32(x.numpy())[0]),
            PEER_OV: lambda x: torch.from_numpy(ovd(x.numpy())[0]),
            PEER_OV_COPY: lambda x: torch.from_numpy(copy(x.numpy())[0])}


def ours(model: nn.Module, batch: int, args: argparse.Namespace) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """``fast_inference`` rows: auto and each named backend in fp32, then bf16 (where native), then int8."""
    kw = dict(image_size=args.img_size, batch_size=batch)
    jobs = [("auto", torch.float32)] + [(b, torch.float32) for b in args.backends.split(",") if b]
    if dtype_supported(CPU, torch.bfloat16):
        jobs += [("auto", torch.bfloat16)] + [(b, torch.bfloat16) for b in args.bf16_backends.split(",") if b]
    jobs += [(b, torch.float32) for b in args.int8_backends.split(",") if b]
    rows = {}
    for name, dtype in jobs:
        _log(f"batch {batch}: building backend='{name}' {dtype}")
        clf = fast_inference(model, dtype=dtype, backend=name, **kw)
        label = f"ours: fast_inference(backend='{name}'{', bf16' if dtype == torch.bfloat16 else ''})"
        label += f" -> {clf.backend}" if name == "auto" else ""
        rows[label] = clf
        rows[label].kind = "int8" if "int8" in name else "bf16" if dtype == torch.bfloat16 else "fp32"
    return rows


def measure(model: nn.Module, original: nn.Module, batch: int, args: argparse.Namespace) -> list[dict]:
    """Build every row at ``batch``, check it against fp32 eager, time all rows interleaved; one record each."""
    x = torch.randn(batch, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        assert rel_err(original(x), ref) < 1e-5, "the original's deploy module must equal ours"
    _log(f"batch {batch}: exporting the original's deploy module")
    fns = {**peers(plain_export(original, x), args.threads), **ours(model, batch, args)}
    native_bf16 = dtype_supported(CPU, torch.bfloat16)
    kinds = {k: getattr(f, "kind", "bf16" if k in (PEER_OV, PEER_OV_COPY) and native_bf16 else "fp32")
             for k, f in fns.items()}
    with torch.no_grad():
        errs = {k: rel_err(f(x), ref) for k, f in fns.items()}
    _log(f"batch {batch}: timing {len(fns)} rows, {args.rounds} interleaved rounds")
    ms, _ = time_interleaved(list(fns.values()), [x] * len(fns), CPU, repeats=args.rounds, round_s=args.round_s)
    base = statistics.median(ms[0])
    return [{"path": k, "batch_size": batch, "kind": kinds[k], "median_ms": statistics.median(v), "min_ms": min(v),
             "max_ms": max(v), "rounds_ms": v, "vs_plain_ort": base / statistics.median(v), "max_rel_err": errs[k],
             "picked": getattr(fns[k], "timings_ms", None) or None} for k, v in zip(fns, ms)]


def targets(records: list[dict]) -> list[str]:
    """The issue's targets as ratios of medians (same batch, same run): met or not, with the numbers."""
    lines = []
    for batch in sorted({r["batch_size"] for r in records}):
        rs = [r for r in records if r["batch_size"] == batch]
        med = {r["path"]: r["median_ms"] for r in rs}
        best = {kind: min((r for r in rs if r["path"].startswith("ours") and r["kind"] == kind),
                          key=lambda r: r["median_ms"], default=None) for kind in ("fp32", "bf16", "int8")}
        checks = [("fp32", min(med[PEER_ORT], med[PEER_OV32]), "the faster of plain onnxruntime and OpenVINO fp32",
                   1.0), ("bf16", med[PEER_OV], "OpenVINO default", 1.0), ("bf16", med[PEER_ORT],
                                                                          "plain onnxruntime fp32", 1.6),
                  ("int8", med[PEER_ORT], "plain onnxruntime fp32", 2.5)]
        for kind, peer_ms, peer, goal in checks:
            r = best[kind]
            if r is None:
                continue
            ratio = peer_ms / r["median_ms"]
            lines.append(f"- batch {batch}, {kind}: our fastest ({r['path'].removeprefix('ours: ')}, "
                         f"{r['median_ms']:.1f} ms) is {ratio:.2f}x {peer} ({peer_ms:.1f} ms); target >= {goal}x: "
                         f"{'met' if ratio >= goal else 'NOT met'}")
        lines.append(f"- batch {batch}, noise floor: two copies of the same OpenVINO model, compiled the same way, "
                     f"run {med[PEER_OV] / med[PEER_OV_COPY]:.2f}x one another")
    return lines


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((s for s in text.splitlines() if s.startswith("flags")), "")
    return sorted(line.partition(":")[2].split())


def _versions() -> dict[str, str]:
    return {p: importlib.metadata.version(p) for p in ("torch", "onnxruntime", "openvino")}


def report(records: list[dict], args: argparse.Namespace) -> str:
    flags = [f for f in FLAGS_SHOWN if f in cpu_flags()]
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    rows = ["| batch | path | computes in | median ms (min-max) | speed vs plain onnxruntime | max rel. error vs "
            "fp32 eager |", "|---|---|---|---|---|---|"]
    for r in records:
        rows.append(f"| {r['batch_size']} | {r['path']} | {r['kind']} | {r['median_ms']:.1f} ({r['min_ms']:.1f}-"
                    f"{r['max_ms']:.1f}) | {r['vs_plain_ort']:.2f}x | {r['max_rel_err']:.1e} |")
    picks = [f"batch {r['batch_size']} {r['path'].removeprefix('ours: ')} (its medians, ms: "
             + ", ".join(f"{k} {v:.1f}" for k, v in r["picked"].items()) + ")" for r in records if r["picked"]]
    return (f"CPU: {device_name(CPU)} (flags: {' '.join(flags) or 'none of ' + ', '.join(FLAGS_SHOWN)}), "
            f"{args.threads} threads, {versions}; vanillanet_5 deploy form, {args.img_size} px; {args.rounds} "
            f"interleaved rounds per batch size, one process; 1-min load average {args.load_at_start:.2f} at the "
            "start (2 cores: above ~0.5 other jobs were running).\n\n"
            + "\n".join(rows) + "\n\nTargets (ratios of medians, same run):\n\n" + "\n".join(targets(records))
            + "\n\n`auto` picked: " + "; ".join(picks) + ".")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--round-s", type=float, default=0.5)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--width-mult", type=float, default=1.0, help="narrower model (quick checks only)")
    p.add_argument("--backends", default="onnxruntime,openvino,compile",
                   help="fast_inference backends to time in fp32 besides auto")
    p.add_argument("--bf16-backends", default="openvino,compile", help="... and in bf16 (CPUs with native bf16)")
    p.add_argument("--int8-backends", default="int8,openvino_int8", help="... and the int8 ones (ranges from noise)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    args.load_at_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    model = random_deploy_model(args.img_size, args.width_mult)
    original = OriginalDeploy(model).eval()
    with kept_signal_stack():  # the peers call OpenVINO directly (openvino_model's docstring: why)
        records = [r for b in args.batches.split(",") for r in measure(model, original, int(b), args)]
    meta = {"cpu": device_name(CPU), "cpu_flags": cpu_flags(), "threads": args.threads, "img_size": args.img_size,
            "rounds": args.rounds, "load_1min_at_start": round(args.load_at_start, 2), **_versions()}
    write_results(args.out, "cpu_fastpath", records + [meta], report(records, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

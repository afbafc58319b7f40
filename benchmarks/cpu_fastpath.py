"""Our CPU fast path against the obvious alternative, side by side in one process: vanillanet_5 (deploy form,
random weights with calibrated BN statistics), batch 1, fp32, the same threads everywhere, interleaved rounds.

Rows: a plain onnxruntime session of ``torch.onnx.export(model)`` with default options (only the intra-op threads
set); a plain session of our export; ``fast_inference`` with ``backend="onnxruntime"``, ``"auto"`` (and what it
picked), ``"compile"`` and ``"eager"``; the previous onnxruntime wrapper (torch ops around the session, kept here
to show what they cost); and int8: ``fast_inference(backend="int8")`` (ranges calibrated on noise: speed only)
and a plain session of the same int8 graph.
Usage: python benchmarks/cpu_fastpath.py [--threads 2] [--rounds 9] [--img-size 224] [--auto-trials 1]
Writes OUT/cpu_fastpath.json and OUT/cpu_fastpath.md (default OUT: benchmarks/results).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from tables import write_results

from vanillanet.bench import device_name
from vanillanet.deploy.inference import fast_inference
from vanillanet.deploy.int8 import noise_batches, quantize_bytes
from vanillanet.deploy.onnx_graph import onnx_bytes, onnx_session
from vanillanet.model.registry import create_model
from vanillanet.model.reparam import calibrate_bn, reparameterize_model
from vanillanet.util.timing import time_interleaved


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
    ms, _ = time_interleaved([lambda _, f=f: f() for f in fns.values()], [None] * len(fns), torch.device("cpu"),
                             repeats=rounds, round_s=round_s)
    return dict(zip(fns, ms))


def _plain_session(data: bytes, threads: int):
    """What a user writes: default session options, only the intra-op threads set."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _torch_default_export(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf)
    return buf.getvalue()


def _previous_wrapper(data: bytes):
    """The onnxruntime path as it was: channels_last copy, a torch copy back to NCHW, a copy of the output."""
    sess = onnx_session(data)
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to("cpu", torch.float32).contiguous(memory_format=torch.channels_last)
        out = torch.from_numpy(sess.run(None, {name: x.float().contiguous().cpu().numpy()})[0])
        return out.to(dtype=torch.float32, copy=True)

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--round-s", type=float, default=0.5)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--width-mult", type=float, default=1.0, help="narrower model (quick checks only)")
    p.add_argument("--auto-trials", type=int, default=1, help="build backend='auto' this many times (its picks)")
    p.add_argument("--backends", default="onnxruntime,compile,eager,int8",
                   help="fast_inference backends to time besides auto (default: all CPU ones)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = random_deploy_model(args.img_size, args.width_mult)
    x = torch.randn(1, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(1))
    xn = x.numpy()
    _log("exporting")
    plain = _plain_session(_torch_default_export(model, x), args.threads)
    ours_bytes = onnx_bytes(model, args.img_size)
    ours_plain = _plain_session(ours_bytes, args.threads)
    kw = dict(image_size=args.img_size, batch_size=1)
    picks, auto_ms, built = Counter(), [], {}
    for _ in range(args.auto_trials):  # the last one is timed below
        _log("building backend='auto'")
        built["auto"] = fast_inference(model, backend="auto", **kw)
        picks[built["auto"].backend] += 1
        auto_ms.append(built["auto"].timings_ms)
    for name in filter(None, args.backends.split(",")):
        _log(f"building backend='{name}'")
        built[name] = fast_inference(model, backend=name, **kw)
    previous = _previous_wrapper(ours_bytes)
    pname = plain.get_inputs()[0].name
    fns = {
        "plain onnxruntime session, torch.onnx.export defaults": lambda: plain.run(None, {pname: xn}),
        "plain onnxruntime session, our export": lambda: ours_plain.run(None, {"input": xn}),
        **{f"fast_inference(backend='{name}')" + (f" -> {clf.backend}" if name == "auto" else ""): (lambda c=clf: c(x))
           for name, clf in built.items()},
        "previous onnxruntime wrapper (torch copies around the session)": lambda: previous(x),
    }
    if "int8" in built:
        int8_plain = _plain_session(quantize_bytes(ours_bytes, noise_batches(x.shape)), args.threads)
        fns["int8: plain onnxruntime session of the same graph"] = lambda: int8_plain.run(None, {"input": xn})
    _log("timing")
    times = time_named(fns, args.rounds, args.round_s)
    base = statistics.median(times[next(iter(fns))])
    errs = {k: clf.max_rel_err for k in fns for name, clf in built.items() if f"backend='{name}'" in k}
    records = [{"path": k, "median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "rounds_ms": v,
                "vs_plain": base / statistics.median(v), "max_rel_err": errs.get(k), "threads": args.threads,
                "img_size": args.img_size, "batch_size": 1, "torch": torch.__version__} for k, v in times.items()]
    rows = ["| path | median ms (min-max) | speed vs plain session | max rel. error vs fp32 eager |",
            "|---|---|---|---|"]
    for r in records:
        err = "-" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}"
        rows.append(f"| {r['path']} | {r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) | "
                    f"{r['vs_plain']:.2f}x | {err} |")
    auto_line = ", ".join(f"{k} {v}x" for k, v in picks.items()) or "(not built)"
    text = (f"CPU: {device_name(torch.device('cpu'))}, {args.threads} threads, torch {torch.__version__}; vanillanet_5 "
            f"deploy form, {args.img_size} px, batch 1, fp32 unless marked int8; {args.rounds} interleaved rounds, "
            "one process.\n\n" + "\n".join(rows) + f"\n\nbackend='auto' picked: {auto_line} (its own medians, ms: "
            + "; ".join(", ".join(f"{k} {v:.1f}" for k, v in t.items()) for t in auto_ms) + ").")
    write_results(args.out, "cpu_fastpath", records + [{"auto_picks": dict(picks), "auto_timings_ms": auto_ms}],
                  text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

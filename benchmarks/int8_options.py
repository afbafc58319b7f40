"""Every int8 option side by side: top-1 of a trained model (the main job's Fashion-MNIST checkpoint) and the speed
of vanillanet_5 at 224 px, batch 1, against fp32 onnxruntime, all measured in one run.

Speed: random weights with calibrated BN statistics (as ``vanillanet bench``), the int8 graphs calibrated on
noise (the ranges do not change the kernels), one onnxruntime session per option, interleaved rounds, medians.
Accuracy: ranges calibrated on training images, top-1 on the whole evaluation split.
Usage: python benchmarks/int8_options.py [--checkpoint runs/fashion_mnist/model_deploy.safetensors]
       [--data fashion-mnist] [--threads 2] [--rounds 7] [--img-size 224] [--out benchmarks/results]
Writes OUT/int8_options.json and OUT/int8_options.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from cpu_fastpath import random_deploy_model, time_named

from vanillanet.bench import device_name
from vanillanet.deploy.int8 import Int8Config, noise_batches, quantize_bytes
from vanillanet.deploy.onnx_graph import onnx_bytes

OPTIONS = {  # label -> config; the first is the default
    "QOperator, u8 act. / s8 weights per channel, 7-bit (reduce_range)": Int8Config(),
    "  8-bit weights": Int8Config(reduce_range=False),
    "  int8 activations (s8s8)": Int8Config(activation_type="int8"),
    "  per-tensor weights": Int8Config(per_channel=False),
    "  stem conv in fp32": Int8Config(exclude=("stem",)),
    "  depthwise convs in fp32": Int8Config(exclude=("depthwise",)),
    "  stem, depthwise and head in fp32": Int8Config(exclude=("stem", "depthwise", "head")),
    "QDQ (ReLU moved before the pool)": Int8Config(format="qdq"),
    "QDQ, graph as exported (pool after the conv)": Int8Config(format="qdq", relu_before_pool=False),
    "QOperator, graph as exported": Int8Config(relu_before_pool=False),
    "  entropy calibration": Int8Config(calibration="entropy"),
    "  percentile calibration": Int8Config(calibration="percentile"),
}
SAME_GRAPH = ("entropy", "percentile")  # calibration changes scales only: same kernels, not timed again
LEVELS = ("basic", "extended", "all")


def _session(data: bytes, threads: int, level: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _accuracy(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Top-1 of fp32 and of every option on the evaluation split; ranges from training images."""
    from vanillanet.data.datasets import spread_subset
    from vanillanet.data.loaders import build_loader
    from vanillanet.data.sources import build_dataset
    from vanillanet.data.transforms import resolve_preprocess
    from vanillanet.model.registry import create_model

    model = create_model(None, args.checkpoint).eval()
    pre = resolve_preprocess(model_cfg=getattr(model, "pretrained_cfg", None), data=args.data,
                             meta=model.checkpoint_meta)
    in_chans = int(getattr(model, "in_chans", 3))
    tf = pre.transform(in_chans)
    calib = spread_subset(build_dataset(args.data, "train", tf, in_chans=in_chans), args.calib_images)
    calib_x = torch.cat([x for x, _ in build_loader(calib, 64, is_training=False)])
    val = build_loader(build_dataset(args.data, "val", tf, in_chans=in_chans), 500, is_training=False,
                       num_workers=2)
    batches = [(x.numpy(), y.numpy()) for x, y in val]
    fp32 = onnx_bytes(model, pre.img_size, in_chans=in_chans)
    sess = {"fp32": _session(fp32, args.threads)}
    for label, cfg in OPTIONS.items():
        print(f"quantizing (accuracy): {label.strip()}", file=sys.stderr)
        sess[label] = _session(quantize_bytes(fp32, calib_x.split(32), cfg), args.threads)
    preds = {k: np.concatenate([s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1) for x, _ in batches])
             for k, s in sess.items()}
    y = np.concatenate([t for _, t in batches])
    return {k: {"top1": 100 * float((p == y).mean()), "agreement": 100 * float((p == preds["fp32"]).mean()),
                "images": len(y)} for k, p in preds.items()}


def _speed(args: argparse.Namespace) -> dict[str, list[float]]:
    """ms per call (one value per interleaved round) of fp32 and every option, vanillanet_5, batch 1."""
    model = random_deploy_model(args.img_size, args.width_mult)
    fp32 = onnx_bytes(model, args.img_size)
    noise = noise_batches((1, 3, args.img_size, args.img_size))
    sess = {f"fp32 ({lvl})": _session(fp32, args.threads, lvl) for lvl in LEVELS}
    for label, cfg in OPTIONS.items():
        if cfg.calibration not in SAME_GRAPH:
            print(f"quantizing (speed): {label.strip()}", file=sys.stderr)
            data = quantize_bytes(fp32, noise, cfg)
            sess[label] = _session(data, args.threads)
            if cfg == Int8Config():
                sess.update({f"{label} ({lvl})": _session(data, args.threads, lvl) for lvl in LEVELS[:2]})
    x = noise[0].numpy()
    fns = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sess.items()}
    return time_named(fns, args.rounds, args.round_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="trained checkpoint for the accuracy columns (omit: speed only)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--calib-images", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--round-s", type=float, default=0.5)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--width-mult", type=float, default=1.0, help="narrower model for the speed part (quick checks)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    acc = _accuracy(args) if args.checkpoint else {}
    times = _speed(args)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["fp32 (all)"]
    head = (f"CPU: {device_name(torch.device('cpu'))} ({platform.machine()}), {args.threads} threads; speed: "
            f"vanillanet_5 {args.img_size} px batch 1, {args.rounds} interleaved rounds, median ms (min-max); "
            + (f"top-1: {args.checkpoint} on {args.data}'s evaluation split, ranges from {args.calib_images} "
               "training images." if acc else "no accuracy measured (no --checkpoint)."))
    default = next(iter(OPTIONS))
    spec = [(f"fp32, graph optimisation {lvl}", f"fp32 ({lvl})", "fp32") for lvl in reversed(LEVELS)]
    spec += [(k, k, k) for k in OPTIONS]
    spec += [(f"{default}, graph optimisation {lvl}", f"{default} ({lvl})", default) for lvl in LEVELS[1::-1]]
    rows = ["| option | ms | x fp32 (all) | top-1 % | same top-1 as fp32 |", "|---|---|---|---|---|"]
    for label, speed_key, acc_key in spec:
        ms = (f"{med[speed_key]:.1f} ({min(times[speed_key]):.1f}-{max(times[speed_key]):.1f}) | "
              f"{base / med[speed_key]:.2f}x") if speed_key in med else "as the default (same kernels) | -"
        a = acc.get(acc_key)
        top1 = f"{a['top1']:.2f} | " + ("-" if acc_key == "fp32" else f"{a['agreement']:.2f} %") if a else "- | -"
        rows.append(f"| {label.replace('  ', '&nbsp;&nbsp;')} | {ms} | {top1} |")
    text = head + "\n\n" + "\n".join(rows)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_options.md").write_text(text + "\n")
    (out / "int8_options.json").write_text(json.dumps(
        {"threads": args.threads, "img_size": args.img_size, "rounds_ms": times, "accuracy": acc,
         "configs": {k: asdict(c) for k, c in OPTIONS.items()}, "checkpoint": args.checkpoint}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

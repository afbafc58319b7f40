"""GPU speed table: batch-1 latency and batch-256 throughput of vanillanet_5, _9, _13 and resnet50, and training
images/s at batch 128, each in the original protocol and in our fast path, measured in one run.

Inference modes: ``paper`` (fp32 NCHW eager, batch 1, synchronised after every call, as published), ``eager``
(fp32 NCHW, for throughput), ``fp16`` (channels_last eager), ``cudagraph`` (fp16 channels_last in a CUDA graph:
our fast path, what ``fast_inference(model, "cuda", torch.float16)`` builds) and, with ``--compile``, torch.compile
(frozen weights + CUDA graphs). Training: ``train-amp`` (fp16 autocast NCHW + gradient scaler, the original
recipe's settings) and ``train-best`` (channels_last + bf16 autocast + torch.compile). CUDA events time the GPU.
Random weights with calibrated BN statistics (speed does not depend on the values; errors are then meaningful).

Budget: about 3-4 minutes of an H100 with the defaults. Writes $OUT/gpu_speed.json and $OUT/gpu_speed.md
(or --out DIR). ``--dry-run`` runs the same code path on the CPU with tiny models (used by the tests).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tables import fastest, markdown_table, write_results

from vanillanet.bench import BenchConfig, device_name, run_bench

MODELS = ["vanillanet_5", "vanillanet_9", "vanillanet_13", "resnet50"]
TRAIN_MODELS = ["vanillanet_5", "vanillanet_13"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", str(Path(__file__).parent / "results")))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also torch.compile inference (adds minutes)")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: checks the script, not speed")
    args = p.parse_args(argv)
    if args.dry_run:
        common = dict(device="cpu", img_size=32, width_mult=1 / 32, repeats=1, iters=1, num_classes=10)
        modes, train_modes, batch, train_batch = "paper,eager,channels_last", ("train-fp32", "train-amp"), 4, 2
    else:
        if not torch.cuda.is_available():
            print("gpu_speed.py needs a CUDA device (or --dry-run)", file=sys.stderr)
            return 2
        common = dict(device="cuda", img_size=224, repeats=args.repeats, round_s=0.2)
        modes = "paper,eager,fp16,cudagraph" + (",compile" if args.compile else "")
        train_modes, batch, train_batch = ("train-amp", "train-best"), args.batch_size, args.train_batch_size
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", file=sys.stderr, flush=True)  # noqa: E731
    records = run_bench(BenchConfig(models=MODELS, batch_size=batch, modes=modes, **common), log=log)
    if not args.no_train:
        records += run_bench(BenchConfig(models=TRAIN_MODELS, modes=modes, train=True, inference=False,
                                         train_batch_size=train_batch, train_modes=train_modes, **common), log=log)
    dev = torch.device(common["device"])
    lines = [f"GPU: {device_name(dev)}, torch {torch.__version__}, {common['img_size']}x{common['img_size']}; "
             f"total {time.perf_counter() - t0:.0f} s.", "", markdown_table(records), ""]
    for model in ("vanillanet_5", "vanillanet_13"):
        paper = next(r for r in records if r["model"] == model and r["mode"] == "paper")
        half = "fp32" if args.dry_run else "fp16"
        best = fastest(records, model, half)
        lines.append(f"{model} batch 1: {best['mode']} ({half}) {best['median_ms']:.3f} ms = "
                     f"{paper['median_ms'] / best['median_ms']:.1f}x the paper protocol (target 5x).")
        trains = {r["mode"]: r for r in records if r["model"] == model and r["kind"] == "train"}
        if len(trains) == 2:
            a, b = (trains[m] for m in train_modes)
            lines.append(f"{model} training at batch {train_batch}: {b['mode']} {b['images_per_s']:.0f} img/s vs "
                         f"{a['mode']} {a['images_per_s']:.0f} img/s = {b['images_per_s'] / a['images_per_s']:.2f}x "
                         "(target 2x).")
    write_results(args.out, "gpu_speed", records, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

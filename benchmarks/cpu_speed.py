"""Reproduce the CPU speed table (docs/results.md): vanillanet_5 (deploy form, batch 1, 224x224) in the paper's protocol
against our fastest fp32 path, bf16 with its error, the train form, and torchvision resnet18 / resnet50.

All rows come from one run (modes interleaved round by round), so ratios are comparable even on a busy machine.
Usage: python benchmarks/cpu_speed.py [--threads T] [--repeats R] [--out DIR] [--img-size N] [--width-mult W]
Writes DIR/cpu_speed.json and DIR/cpu_speed.md (default DIR: benchmarks/results).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tables import fastest, markdown_table, write_results

from vanillanet.bench import BenchConfig, device_name, run_bench
from vanillanet.deploy.backends import dtype_supported

MODES = "paper,channels_last,compile,onnxruntime,bf16,compile:bf16"  # bf16 modes run where the CPU has bf16


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--round-s", type=float, default=1.0)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--width-mult", type=float, default=1.0, help="narrower models (quick checks only)")
    p.add_argument("--modes", default=MODES)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    if not dtype_supported(torch.device("cpu"), torch.bfloat16):
        args.modes = ",".join(m for m in args.modes.split(",") if "bf16" not in m)
    cfg = BenchConfig(models=["vanillanet_5"], batch_size=1, modes=args.modes, img_size=args.img_size,
                      repeats=args.repeats, round_s=args.round_s, threads=args.threads, device="cpu",
                      baselines=True, width_mult=args.width_mult)
    records = run_bench(cfg, log=lambda s: print(s, file=sys.stderr))
    paper = next(r for r in records if r["model"] == "vanillanet_5" and r["form"] == "deploy"
                 and r["mode"] == "paper")
    best = fastest(records, "vanillanet_5", "fp32")
    lines = [f"CPU: {device_name(torch.device('cpu'))}, {paper['threads']} threads, torch {torch.__version__}; "
             f"{args.img_size}x{args.img_size}, batch 1, {args.repeats} interleaved rounds per mode.", "",
             markdown_table(records), "",
             f"Fastest fp32 path for vanillanet_5: {best['mode']}, {paper['median_ms'] / best['median_ms']:.2f}x "
             f"the paper protocol ({best['median_ms']:.1f} ms vs {paper['median_ms']:.1f} ms; target 1.5x)."]
    bf16 = [r for r in records if r["model"] == "vanillanet_5" and r["form"] == "deploy" and r["dtype"] == "bf16"]
    if bf16:
        b = min(bf16, key=lambda r: r["median_ms"])
        lines.append(f"Fastest bf16 path: {b['mode']}, {paper['median_ms'] / b['median_ms']:.2f}x the paper "
                     f"protocol, max relative error vs fp32 {b['max_rel_err']:.1e}.")
    write_results(args.out, "cpu_speed", records, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

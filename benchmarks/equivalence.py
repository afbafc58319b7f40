"""Measure the train-form -> deploy-form conversion error of every full-width variant, in fp32 and fp64.

BN statistics come from forward passes on random data (cumulative average) with random BN affine parameters, so the
folded weights are far from the identity.
Usage: python benchmarks/equivalence.py [--img-size 64] [--models a,b] [--json OUT]
"""

from __future__ import annotations

import argparse
import json

import torch

import vanillanet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--models", default=",".join(vanillanet.VARIANTS), help="comma-separated variant names")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    print(f"{'model':30s} {'fp32 rel err':>13s} {'fp64 rel err':>13s}")
    for name in args.models.split(","):
        spec = vanillanet.VARIANTS[name]
        row = {"model": name, "img_size": args.img_size}
        for dtype in (torch.float32, torch.float64):
            gen = torch.Generator().manual_seed(0)
            torch.manual_seed(0)
            model = vanillanet.VanillaNet(dims=spec.dims, strides=spec.strides, ada_pool=spec.ada_pool).to(dtype)
            shape = (args.batch_size, 3, args.img_size, args.img_size)
            vanillanet.calibrate_bn(model, shape, randomize_affine=True, generator=gen)
            x = torch.randn(shape, generator=gen, dtype=dtype)
            row[str(dtype).removeprefix("torch.")] = vanillanet.conversion_error(model, x)
            del model
        rows.append(row)
        print(f"{name:30s} {row['float32']:13.2e} {row['float64']:13.2e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

"""Measure the train-form -> deploy-form conversion error of every full-width variant, in fp32 and fp64.

BN statistics come from forward passes on random data (cumulative average) with random BN affine parameters, so the
folded weights are far from the identity.
Usage: python benchmarks/equivalence.py [--img-size 64] [--models a,b] [--json OUT]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

import vanillanet


@torch.no_grad()
def calibrate(model: nn.Module, shape: tuple[int, ...], gen: torch.Generator) -> None:
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(bn.bias.shape, generator=gen) - 0.5)
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for _ in range(2):
        model(torch.randn(shape, generator=gen, dtype=next(model.parameters()).dtype))
    model.eval()


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
            calibrate(model, shape, gen)
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

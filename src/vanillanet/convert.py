"""``vanillanet convert``: any supported checkpoint -> a deploy-form ``.safetensors`` file, written only when the
train and deploy forms give the same outputs, the weights are finite, and the output is not the input."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from .arguments import add_input_arguments, add_model_arguments
from .model.checkpoint_files import model_meta, save_weights
from .model.geometry import check_min_input_size
from .model.registry import create_model
from .model.reparam import conversion_error, reparameterize_model
from .util.errors import CheckpointError, ConversionError
from .util.fileio import refuse_inputs

__all__ = ["convert_checkpoint"]


@torch.no_grad()
def convert_checkpoint(src: str | Path, dst: str | Path, *, model_name: str | None = None, use_ema: bool = True,
                       img_size: int = 224, tol: float = 1e-4, seed: int = 0,
                       allow_large: bool = False) -> dict[str, Any]:
    """Any supported checkpoint -> a deploy-form ``.safetensors`` file, written only if the fp32 outputs of the
    train and deploy forms agree (eval mode, random input, max relative error <= ``tol``). ``allow_large`` lifts
    the size limits (``registry.MAX_PARAMS``, ``data.MAX_IMG_SIZE``)."""
    from .data.images import check_img_size_limit

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"the output {dst} must end in .safetensors (the deploy format)")
    refuse_inputs(dst, src)
    check_img_size_limit(img_size, allow_large=allow_large, what="--img-size")
    model = create_model(model_name, src, use_ema=use_ema, allow_large=allow_large).float().eval()
    check_min_input_size(model, img_size)
    meta = model.checkpoint_meta
    form = "deploy" if model.deploy else "train"
    if model.deploy:
        deploy, err = model, 0.0
    else:
        try:
            deploy = reparameterize_model(model)
        except ConversionError as err:
            raise ConversionError(f"{src}: {err}") from None
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(1, model.in_chans, img_size, img_size, generator=gen)
        err = conversion_error(model, x, deploy)
        if not err <= tol:
            raise ConversionError(f"{src}: deploy and train outputs differ (relative error {err:.3g} > {tol:g}); "
                                  "not written: check the act_learn and BatchNorm statistics of the checkpoint")
    save_weights(deploy, dst, class_names=meta.get("class_names"),
                 extra_meta={"converted_from": Path(src).name, "conversion_rel_error": err})
    return {"architecture": model_meta(deploy)["architecture"], "source": meta["source"], "layout": meta["layout"],
            "input_form": form, "rel_error": err, "params": sum(p.numel() for p in deploy.parameters()),
            "output": str(dst)}


def _main(args: argparse.Namespace) -> int:
    result = convert_checkpoint(args.input, args.output, model_name=args.model, use_ema=not args.no_ema,
                                img_size=args.img_size, allow_large=args.allow_large)
    entry = f" '{result['source']}'" if result["source"] else ""
    if result["input_form"] == "deploy":
        check = "input already in deploy form, weights copied unchanged"
    else:
        check = f"train vs deploy max relative error {result['rel_error']:.2e} (fp32, {args.img_size}px random input)"
    print(f"{args.input}{entry} ({result['layout']}, {result['input_form']} form) -> {result['output']}: "
          f"{result['architecture']} deploy form, {result['params'] / 1e6:.2f}M params; {check}")
    return 0


def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    """``vanillanet convert IN OUT [--model NAME]``."""
    parser.add_argument("input", help="checkpoint: original (.pth), OpenMixup, ours (.pth/.safetensors), any form")
    parser.add_argument("output", help="deploy-form .safetensors file to write")
    add_model_arguments(parser, checkpoint=None)
    add_input_arguments(parser, crop=False, img_size=224, img_help="input size of the output check (default 224)")
    parser.set_defaults(func=_main)

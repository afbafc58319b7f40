"""Parameters and multiply-accumulates (MACs) of VanillaNet models, and the ``list`` / ``info`` commands.

MACs are counted with torch's own ``torch.utils.flop_counter.FlopCounterMode`` and reported as FLOPs / 2. It
counts convolutions and matrix products only (not BatchNorm, activations, pooling or bias additions), which is
what the published "FLOPs" column counts: every deploy-form number in docs/models.md is reproduced exactly.
Models are built on the ``meta`` device, so even the 237M-parameter variants are measured in milliseconds.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .arguments import add_input_arguments, add_output_arguments, check_json_path, emit_json
from .model.registry import create_model
from .model.variants import PUBLISHED, VARIANTS, check_model_name
from .util.errors import ConfigError, first_line
from .util.validation import field_type, value_type

__all__ = ["count_macs", "count_params", "matches_published", "model_complexity"]

def count_params(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass of a single image (eval mode), = torch's FLOP count / 2."""
    ref = next(model.parameters())
    x = torch.zeros((1, *input_size), device=ref.device, dtype=ref.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    except RuntimeError as err:
        raise ConfigError(f"input {tuple(input_size)} does not fit the model ({first_line(err, 100)}): "
                          "use a larger --img-size (VanillaNet needs at least 32 px)") from err
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_complexity(name: str, img_size: int = 224, **kwargs: Any) -> dict[str, Any]:
    """Params and MACs of variant ``name`` in train and deploy form at ``img_size`` (models built on ``meta``).

    ``kwargs`` go to the model (``width_mult``, ``num_classes``, ``act_num``, ``in_chans``...).
    """
    check_model_name(name)
    if "deploy" in kwargs:
        raise ConfigError("model_complexity measures both forms: do not pass deploy")
    in_chans = kwargs.get("in_chans", 3)
    result: dict[str, Any] = {"model": name, "img_size": img_size, **kwargs}
    for form in ("train", "deploy"):
        with torch.device("meta"):  # nothing is allocated, so no size limit applies
            model = create_model(name, deploy=form == "deploy", allow_large=True, **kwargs)
        result[form] = {"params": count_params(model), "macs": count_macs(model, (in_chans, img_size, img_size))}
    published = PUBLISHED.get(name) if img_size == 224 and not kwargs else None
    if published:
        result["published_deploy"] = {"params_m": float(published.params_m), "gmacs": float(published.gmacs)}
    return result


def matches_published(measured: float, published: str) -> bool:
    """True when ``measured`` rounds to ``published`` at the precision it was printed with."""
    decimals = len(published.split(".")[1]) if "." in published else 0
    return round(measured, decimals) == float(published)


def _list_command(args: argparse.Namespace) -> int:
    header = (f"{'model':<28} {'train params':>13} {'train MACs':>11} {'deploy params':>14} {'deploy MACs':>12}"
              f"   published deploy (params / MACs)")
    print(f"VanillaNet variants at 224x224, 1000 classes (MACs = multiply-accumulates = torch FLOPs / 2)\n{header}")
    print("-" * len(header))
    for name in VARIANTS:
        c = model_complexity(name)
        tp, tm = c["train"]["params"] / 1e6, c["train"]["macs"] / 1e9
        dp, dm = c["deploy"]["params"] / 1e6, c["deploy"]["macs"] / 1e9
        pub = PUBLISHED.get(name)  # a variant without published numbers is listed without the check
        ok = ("-" if pub is None else
              "ok" if matches_published(dp, pub.params_m) and matches_published(dm, pub.gmacs) else "MISMATCH")
        shown = "-" if pub is None else f"{pub.params_m} M / {pub.gmacs} G"
        print(f"{name:<28} {tp:>11.1f} M {tm:>9.2f} G {dp:>12.1f} M {dm:>10.2f} G   {shown:<18} {ok}")
    return 0


def _info_command(args: argparse.Namespace) -> int:
    kwargs = {k: v for k, v in (("width_mult", args.width_mult), ("num_classes", args.num_classes),
                                ("act_num", args.act_num), ("in_chans", args.in_chans)) if v is not None}
    check_json_path(args.json)
    c = model_complexity(args.model, args.img_size, **kwargs)
    if emit_json(args.json, c):
        return 0
    extra = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    print(f"{args.model} at {args.img_size}x{args.img_size}{' (' + extra + ')' if extra else ''}")
    print(f"{'form':<8} {'params':>15} {'MACs':>20}")
    for form in ("train", "deploy"):
        p, m = c[form]["params"], c[form]["macs"]
        print(f"{form:<8} {p:>15,} {m:>20,}   ({p / 1e6:.2f} M params, {m / 1e9:.3f} GMACs)")
    if "published_deploy" in c:
        pub = c["published_deploy"]
        print(f"published deploy: {pub['params_m']} M params, {pub['gmacs']} GMACs")
    print("MACs = multiply-accumulates (torch.utils.flop_counter FLOPs / 2; convolutions only)")
    return 0


def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    """``vanillanet list`` and ``vanillanet info MODEL``."""
    from .training.config import ArchConfig

    if command == "list":
        parser.set_defaults(func=_list_command)
        return
    parser.add_argument("model", metavar="MODEL", help="variant name (see `vanillanet list`)")
    add_input_arguments(parser, crop=False, img_size=224, img_help="square input size in pixels (default 224)")
    parser.add_argument("--width-mult", type=field_type(ArchConfig, "width_mult"), default=None,
                        help="scale every width (narrow models)")
    parser.add_argument("--num-classes", type=field_type(ArchConfig, "num_classes"), default=None,
                        help="classes of the head (default 1000)")
    parser.add_argument("--act-num", type=field_type(ArchConfig, "act_num"), default=None,
                        help="activation kernel 2n+1 (default 3)")
    parser.add_argument("--in-chans", type=value_type(int, ge=1), default=None, help="input channels (default 3)")
    add_output_arguments(parser, progress=False)
    parser.set_defaults(func=_info_command)

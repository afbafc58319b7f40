"""Top-1/top-5 accuracy and loss of a checkpoint on a validation set (``vanillanet eval``).

The counting is ``training.evaluation.evaluate(predict, loader, ...)``, the one evaluation loop of the package,
which the training loop's per-epoch validation uses too (and re-exported here as ``vanillanet.evaluate.evaluate``).
Preprocessing is the published evaluation transform (``data.Preprocess``): its settings come from, in increasing
priority, the model's pretrained config (224 px, crop_pct 0.875, ImageNet mean/std), the data source's defaults,
what the checkpoint records (``vanillanet train`` writes img_size, crop_pct, mean, std), and the command line. The
model runs through ``fast_inference`` (deploy form, channels_last; fp16/bf16 with ``--amp``); a train-form
checkpoint whose act_learn is not yet 1 cannot be converted and is evaluated as it is. ImageNet-ReaL labels (a JSON
list with one list of labels per validation image, in sorted file-name order) add a ReaL top-1: images with an empty
list are left out, a prediction counts when it is in the list. Under torchrun every process takes every world_size-
th image and the counts are summed with all_reduce, so each image counts exactly once.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arguments import (
    STDOUT,
    add_backend_arguments,
    add_data_arguments,
    add_device_arguments,
    add_input_arguments,
    add_model_arguments,
    add_output_arguments,
    check_json_path,
    check_model_input,
    check_num_classes,
    emit_json,
)
from .deploy.inference import fast_inference
from .model.registry import create_model
from .training.evaluation import evaluate
from .util.devices import half_dtype, num_threads, process_group
from .util.errors import ConversionError, DataError, first_line

__all__ = ["evaluate", "load_real_labels"]

_log = logging.getLogger(__name__)


def load_real_labels(path: str | Path, dataset: Any) -> list[list[int]]:
    """ReaL labels re-ordered to ``dataset``'s sample order: entry k of the file belongs to the k-th image in
    sorted file-name order (the ImageNet validation naming); in-memory datasets use their own order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ReaL labels file {path} not found; pass the path of real.json")
    try:
        labels = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read ReaL labels from {path} ({first_line(err)}); it must be a JSON list "
                        "of label lists") from None
    if not isinstance(labels, list) or not all(isinstance(x, list) for x in labels):
        raise DataError(f"{path} must hold a JSON list with one list of class indices per image")
    if len(labels) != len(dataset):
        raise DataError(f"{path} has {len(labels)} entries but the dataset has {len(dataset)} images; use the "
                        "labels file that matches this validation set")
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return [list(map(int, x)) for x in labels]
    names = [Path(p).name for p, _ in samples]
    rank = {name: k for k, name in enumerate(sorted(names))}
    if len(rank) != len(names):
        raise DataError("the validation images do not have unique file names, so ReaL labels cannot be matched")
    return [list(map(int, labels[rank[n]])) for n in names]


# ------------------------------------------------------------------------------------------------------- CLI
def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    add_model_arguments(parser, what="weights to evaluate (train or deploy form, any layout)")
    add_data_arguments(parser, data="its validation split is evaluated", batch_size=64)
    add_input_arguments(parser)
    parser.add_argument("--real-labels", help="ImageNet-ReaL labels JSON (one list per image, sorted file order)")
    add_backend_arguments(parser, plain=True)
    parser.add_argument("--amp", action="store_true", help="half precision (fp16 on CUDA, bf16 on the CPU)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last memory format for --backend none (the other backends always use it)")
    add_device_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=_main)


def _plain(model: nn.Module, device: torch.device, amp: bool, channels_last: bool) -> Callable:
    """The model as loaded (no conversion), with optional autocast and channels_last."""
    model = model.to(device).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=half_dtype(device), enabled=amp):
            return model(x.to(device).contiguous(memory_format=fmt))

    return run


def _main(args: argparse.Namespace) -> int:
    check_json_path(args.json)
    with process_group(args.device) as (dist, device), num_threads(args.threads):
        return _run(args, device, dist.rank, dist.world_size)


def _run(args: argparse.Namespace, device: torch.device, rank: int, world_size: int) -> int:
    from .data.datasets import num_skipped
    from .data.loaders import build_loader
    from .data.sources import build_dataset
    from .data.transforms import resolve_preprocess
    from .util.fileio import refuse_inputs

    t0 = time.perf_counter()
    if args.json != STDOUT:
        refuse_inputs(args.json, args.checkpoint, args.real_labels, flag="--json")
    model = create_model(args.model, args.checkpoint, use_ema=not args.no_ema, allow_large=args.allow_large).eval()
    meta = model.checkpoint_meta
    pre = resolve_preprocess(model_cfg=getattr(model, "pretrained_cfg", None), data=args.data, meta=meta,
                             img_size=args.img_size, crop_pct=args.crop_pct, allow_large=args.allow_large)
    in_chans = int(getattr(model, "in_chans", 3))
    check_model_input(model, pre.img_size, args.batch_size, allow_large=args.allow_large)
    dataset = build_dataset(args.data, "val", pre.transform(in_chans), in_chans=in_chans,
                            **({"folder.allow_large": True, "shards.allow_large": True} if args.allow_large else {}))
    check_num_classes(model, dataset.classes, doing="evaluate")
    names = meta.get("class_names")
    if names and list(names) != list(dataset.classes):
        _log.warning("the checkpoint's class names differ from the dataset's folder names; labels are matched by "
                     "sorted folder order")
    real = load_real_labels(args.real_labels, dataset) if args.real_labels else None
    loader = build_loader(dataset, args.batch_size, is_training=False, num_workers=args.workers,
                          distributed=world_size > 1, pin_memory=device.type == "cuda")
    dtype = half_dtype(device) if args.amp else torch.float32
    backend, max_err = args.backend, None
    if backend == "none":
        predict = _plain(model, device, args.amp, args.channels_last)
    else:
        try:
            fast = fast_inference(model, device, dtype, batch_size=args.batch_size, image_size=pre.img_size,
                                  backend=backend, allow_large=args.allow_large)
            predict, backend, max_err = fast, fast.backend, fast.max_rel_err
        except ConversionError as err:
            if getattr(model, "act_learn", 1.0) == 1.0:
                raise
            _log.warning("evaluating the train form as it is: %s", first_line(err))
            predict, backend = _plain(model, device, args.amp, args.channels_last), "none"
    result = evaluate(predict, loader, device=device, real_labels=real, rank=rank, world_size=world_size,
                      progress=not args.no_progress)
    result.update({k: 100 * result[k] for k in ("top1", "top5", "real_top1") if k in result})  # reported in %
    result.update(model=getattr(model, "pretrained_cfg", {}).get("architecture", args.model),
                  checkpoint=str(args.checkpoint), data=str(args.data), img_size=pre.img_size,
                  crop_pct=pre.crop_pct, backend=backend, dtype=str(dtype).removeprefix("torch."),
                  max_rel_err=max_err, skipped_images=num_skipped(dataset), world_size=world_size,
                  seconds=round(time.perf_counter() - t0, 2))
    if rank == 0 and not emit_json(args.json, result):
        line = (f"{result['model']} on {args.data}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                f"loss {result['loss']:.4f}  ({result['images']} images")
        if "real_top1" in result:
            line += f"; ReaL top-1 {result['real_top1']:.2f}% on {result['real_images']}"
        print(line + f"; {backend}, {result['dtype']})")
        if result["skipped_images"]:
            print(f"warning: {result['skipped_images']} unreadable images were replaced by their neighbours")
    return 0

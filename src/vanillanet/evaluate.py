"""Top-1/top-5 accuracy and loss of a checkpoint on a validation set (``vanillanet eval``).

``evaluate(predict, loader, ...)`` is the one evaluation loop of the package: ``vanillanet eval`` and the training
loop's per-epoch validation both use it (the latter also measures how many predictions the deploy form changes).
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
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .deploy.backends import EXACT_BACKENDS
from .deploy.inference import fast_inference
from .model.registry import create_model
from .util.errors import ConversionError, DataError, first_line
from .util.fileio import write_json
from .util.validation import value_type

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


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


@torch.no_grad()
def evaluate(
    predict: Callable[[torch.Tensor], torch.Tensor],
    loader: Any,
    *,
    device: torch.device,
    deploy: Callable[[torch.Tensor], torch.Tensor] | None = None,
    real_labels: Sequence[Sequence[int]] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy and mean cross-entropy of ``predict`` (images -> logits) over ``loader``.

    The loader yields ``(images, targets)`` in dataset order, this process holding dataset indices
    ``rank, rank + world_size, ...`` (``data.build_loader(..., distributed=True)`` does that). Counts are summed
    over processes when ``world_size > 1``. Returns fractions in [0, 1]: ``top1``, ``top5``, mean ``loss``,
    ``images``; with ``real_labels`` also ``real_top1``/``real_images``; with ``deploy`` (a second predictor, e.g.
    the deploy form) also its ``deploy_top1`` and ``deploy_agreement``, the fraction of identical top-1
    predictions.
    """
    from tqdm import tqdm

    stats = torch.zeros(8, dtype=torch.float64)  # top1, top5, loss sum, n, real hit, real n, deploy hit, agree
    index = rank
    for images, targets in tqdm(loader, desc="eval", disable=not progress or rank != 0, leave=False):
        logits = predict(images).float().cpu()
        targets = targets.cpu()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == targets[:, None]
        stats[0] += hit[:, 0].sum().item()
        stats[1] += hit.any(dim=1).sum().item()
        stats[2] += F.cross_entropy(logits, targets, reduction="sum").item()
        stats[3] += len(targets)
        if real_labels is not None:
            for pred in top[:, 0].tolist():
                valid = real_labels[index]
                if valid:
                    stats[4] += pred in valid
                    stats[5] += 1
                index += world_size
        if deploy is not None:
            pred_d = deploy(images).float().argmax(1).cpu()
            stats[6] += (pred_d == targets).sum().item()
            stats[7] += (pred_d == top[:, 0]).sum().item()
    if world_size > 1:
        reduced = stats.to(device)
        torch.distributed.all_reduce(reduced)
        stats = reduced.cpu()
    n = max(stats[3].item(), 1)
    result = {"top1": stats[0].item() / n, "top5": stats[1].item() / n, "loss": stats[2].item() / n,
              "images": int(stats[3].item())}
    if real_labels is not None:
        result.update(real_top1=stats[4].item() / max(stats[5].item(), 1), real_images=int(stats[5].item()))
    if deploy is not None:
        result.update(deploy_top1=stats[6].item() / n, deploy_agreement=stats[7].item() / n)
    return result


# ------------------------------------------------------------------------------------------------------- CLI
def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="weights to evaluate (train or deploy form, any layout)")
    from .data.sources import DATA_HELP, add_loading_arguments

    parser.add_argument("--data", required=True, help=DATA_HELP + " (its validation split is evaluated)")
    parser.add_argument("--model", help="variant name (default: inferred from the checkpoint)")
    parser.add_argument("--real-labels", help="ImageNet-ReaL labels JSON (one list per image, sorted file order)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--img-size", type=value_type(int, ge=1),
                        help="input size (default: from the checkpoint / model config)")
    parser.add_argument("--crop-pct", type=value_type(float, gt=0, le=1),
                        help="centre-crop fraction (default: from the model config)")
    parser.add_argument("--batch-size", type=value_type(int, ge=1), default=64)
    add_loading_arguments(parser)
    parser.add_argument("--amp", action="store_true", help="half precision (fp16 on CUDA, bf16 on the CPU)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last memory format for --backend none (the other backends always use it)")
    parser.add_argument("--backend", default="eager", choices=("none", "auto", *EXACT_BACKENDS),
                        help="fast_inference backend (default eager); none = the model exactly as loaded; for int8 "
                        "see vanillanet quantize")
    parser.add_argument("--no-ema", action="store_true", help="use the live weights, not the EMA weights")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_main)


def _plain(model: nn.Module, device: torch.device, amp: bool, channels_last: bool) -> Callable:
    """The model as loaded (no conversion), with optional autocast and channels_last."""
    model = model.to(device).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    half = torch.float16 if device.type == "cuda" else torch.bfloat16

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=half, enabled=amp):
            return model(x.to(device).contiguous(memory_format=fmt))

    return run


def _main(args: argparse.Namespace) -> int:
    rank, world_size, local_rank = _dist_info()
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _run(args, device, rank, world_size)
    finally:
        if world_size > 1:
            torch.distributed.destroy_process_group()


def _run(args: argparse.Namespace, device: torch.device, rank: int, world_size: int) -> int:
    from .data.datasets import num_skipped
    from .data.loaders import build_loader
    from .data.sources import build_dataset
    from .data.transforms import resolve_preprocess
    from .util.fileio import refuse_inputs

    t0 = time.perf_counter()
    refuse_inputs(args.json, args.checkpoint, args.real_labels, flag="--json")
    model = create_model(args.model, args.checkpoint, use_ema=not args.no_ema, allow_large=args.allow_large).eval()
    meta = model.checkpoint_meta
    pre = resolve_preprocess(model_cfg=getattr(model, "pretrained_cfg", None), data=args.data, meta=meta,
                             img_size=args.img_size, crop_pct=args.crop_pct, allow_large=args.allow_large)
    in_chans = int(getattr(model, "in_chans", 3))
    dataset = build_dataset(args.data, "val", pre.transform(in_chans), in_chans=in_chans,
                            **({"folder.allow_large": True, "shards.allow_large": True} if args.allow_large else {}))
    num_classes = getattr(model, "num_classes", None)
    if num_classes and len(dataset.classes) != num_classes:
        raise DataError(f"the dataset has {len(dataset.classes)} classes but the model predicts {num_classes}; "
                        "evaluate on the dataset the checkpoint was trained for")
    names = meta.get("class_names")
    if names and list(names) != list(dataset.classes):
        _log.warning("the checkpoint's class names differ from the dataset's folder names; labels are matched by "
                     "sorted folder order")
    real = load_real_labels(args.real_labels, dataset) if args.real_labels else None
    loader = build_loader(dataset, args.batch_size, is_training=False, num_workers=args.workers,
                          distributed=world_size > 1, pin_memory=device.type == "cuda")
    dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if args.amp else torch.float32
    backend, max_err = args.backend, None
    if backend == "none":
        predict = _plain(model, device, args.amp, args.channels_last)
    else:
        try:
            fast = fast_inference(model, device, dtype, batch_size=args.batch_size, image_size=pre.img_size,
                                  backend=backend)
            predict, backend, max_err = fast, fast.backend, fast.max_rel_err
        except ConversionError as err:
            if getattr(model, "act_learn", 1.0) == 1.0:
                raise
            _log.warning("evaluating the train form as it is: %s", str(err).split(":")[0])
            predict, backend = _plain(model, device, args.amp, args.channels_last), "none"
    result = evaluate(predict, loader, device=device, real_labels=real, rank=rank, world_size=world_size,
                      progress=not args.no_progress)
    result.update({k: 100 * result[k] for k in ("top1", "top5", "real_top1") if k in result})  # reported in %
    result.update(model=getattr(model, "pretrained_cfg", {}).get("architecture", args.model),
                  checkpoint=str(args.checkpoint), data=str(args.data), img_size=pre.img_size,
                  crop_pct=pre.crop_pct, backend=backend, dtype=str(dtype).removeprefix("torch."),
                  max_rel_err=max_err, skipped_images=num_skipped(dataset), world_size=world_size,
                  seconds=round(time.perf_counter() - t0, 2))
    if rank == 0:
        line = (f"{result['model']} on {args.data}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                f"loss {result['loss']:.4f}  ({result['images']} images")
        if "real_top1" in result:
            line += f"; ReaL top-1 {result['real_top1']:.2f}% on {result['real_images']}"
        print(line + f"; {backend}, {result['dtype']})")
        if result["skipped_images"]:
            print(f"warning: {result['skipped_images']} unreadable images were replaced by their neighbours")
        if args.json:
            write_json(args.json, result)
    return 0

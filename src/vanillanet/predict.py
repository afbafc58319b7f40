"""Top-k classes for image files and folders (``vanillanet predict``).

Class names: the checkpoint's own (fine-tuned models record them), else ImageNet's for 1000-class models (timm's
``ImageNetInfo``, bundled with timm, no download), else ``class_<i>``. Unreadable or missing images are reported
and skipped; the command fails only when none could be read. Images above the size limits of ``data.open_image``
(checked from the header, before decoding) count as unreadable unless ``--allow-large``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from .arguments import (
    STDOUT,
    add_backend_arguments,
    add_device_arguments,
    add_input_arguments,
    add_model_arguments,
    add_output_arguments,
    check_json_path,
    emit_json,
)
from .deploy.inference import fast_inference
from .model.registry import create_model
from .util.devices import choose_device, num_threads
from .util.errors import DataError, first_line
from .util.fileio import refuse_inputs
from .util.safe_open import special_kind
from .util.validation import value_type

__all__ = ["Prediction", "class_names_for", "collect_images", "predict_images"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class Prediction:
    """Top-k (index, name, probability) of one image, or why it could not be read."""

    path: str
    top: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def collect_images(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Prediction]]:
    """Files as given, folders expanded recursively to their image files (sorted); missing paths as errors."""
    files: list[Path] = []
    missing: list[Prediction] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                missing.append(Prediction(str(p), error="folder holds no image files"))
            files += found
        elif p.is_file():
            files.append(p)
        elif special_kind(p):
            missing.append(Prediction(str(p), error=f"{special_kind(p)}, not an image file (it is not read)"))
        else:
            missing.append(Prediction(str(p), error="no such file or folder"))
    return files, missing


def class_names_for(num_classes: int, recorded: list[str] | None = None) -> list[str]:
    """The checkpoint's names if it records them, ImageNet's for 1000 classes, else ``class_<i>``."""
    if recorded and len(recorded) == num_classes:
        return list(recorded)
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i, detailed=False) for i in range(1000)]
    return [f"class_{i}" for i in range(num_classes)]


@torch.no_grad()
def predict_images(predict: Any, paths: list[Path], transform: Any, names: list[str], *, in_chans: int = 3,
                   topk: int = 5, batch_size: int = 16, allow_large: bool = False) -> list[Prediction]:
    """Run ``predict`` (images -> logits) on ``paths`` in batches; unreadable files (and, unless ``allow_large``,
    images above the size limits) become error entries."""
    from .data.images import open_image

    mode = "L" if in_chans == 1 else "RGB"
    results: list[Prediction] = []
    pending: list[tuple[Prediction, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        probs = predict(torch.stack([t for _, t in pending])).float().softmax(dim=1)
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        for (pred, _), v, i in zip(pending, values.tolist(), indices.tolist()):
            pred.top = [{"index": c, "name": names[c], "prob": p} for c, p in zip(i, v)]
        pending.clear()

    for path in paths:
        pred = Prediction(str(path))
        results.append(pred)
        try:
            pending.append((pred, transform(open_image(path, mode, limit=not allow_large))))
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            pred.error = f"cannot read image ({first_line(err)})"
            continue
        except MemoryError:
            pred.error = "cannot read image (not enough memory to decode and resize it; crop or shrink it)"
            continue
        if len(pending) == batch_size:
            flush()
    flush()
    return results


def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    add_model_arguments(parser)
    add_input_arguments(parser)
    parser.add_argument("--topk", type=value_type(int, ge=1), default=5, help="classes to show per image (default 5)")
    parser.add_argument("--batch-size", type=value_type(int, ge=1), default=16, help="images per batch (default 16)")
    add_backend_arguments(parser)
    add_device_arguments(parser)
    add_output_arguments(parser, progress=False)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from .data.transforms import resolve_preprocess

    check_json_path(args.json)
    files, errors = collect_images(args.images)
    if not files:
        for r in errors:
            print(f"vanillanet predict: {r.path}: {r.error}", file=sys.stderr)
        raise DataError(f"none of the {len(errors)} inputs is an image file; check the paths")
    refuse_inputs(args.json if args.json != STDOUT else None, args.checkpoint, *args.images, flag="--json")
    model = create_model(args.model, args.checkpoint, use_ema=not args.no_ema, allow_large=args.allow_large).eval()
    meta = model.checkpoint_meta
    pre = resolve_preprocess(model_cfg=getattr(model, "pretrained_cfg", None), meta=meta, img_size=args.img_size,
                             crop_pct=args.crop_pct, allow_large=args.allow_large)
    in_chans = int(getattr(model, "in_chans", 3))
    names = class_names_for(int(model.num_classes), meta.get("class_names"))
    device = choose_device(args.device)
    batch = max(1, min(args.batch_size, len(files)))
    with num_threads(args.threads):
        fast = fast_inference(model, device, batch_size=batch, image_size=pre.img_size, backend=args.backend,
                              allow_large=args.allow_large)
        results = errors + predict_images(fast, files, pre.transform(in_chans), names, in_chans=in_chans,
                                          topk=args.topk, batch_size=batch, allow_large=args.allow_large)
    good = [r for r in results if r.error is None]
    rows = [{"path": r.path, "predictions": r.top} if r.error is None else {"path": r.path, "error": r.error}
            for r in results]
    if not emit_json(args.json, rows):
        for r in good:
            print(f"{r.path}: " + ", ".join(f"{t['name']} ({100 * t['prob']:.1f}%)" for t in r.top))
    for r in results:
        if r.error is not None:
            print(f"vanillanet predict: {r.path}: {r.error}", file=sys.stderr)
    if not good:
        raise DataError(f"none of the {len(results)} inputs could be read as an image; check the paths and files")
    return 0

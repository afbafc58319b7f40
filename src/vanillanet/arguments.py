"""The argument groups the commands share, declared once so that a flag means the same in every command:

- **model**: ``--checkpoint`` (the weights), ``--model`` (the variant; default: from the checkpoint), ``--no-ema``
  (wherever a checkpoint is read: the live weights rather than the EMA weights a training checkpoint also holds),
  ``--allow-large`` (lift the size limits of inputs, images and models);
- **input**: ``--img-size`` and ``--crop-pct`` (the evaluation preprocessing; default: the checkpoint's record, then
  the model's config);
- **data**: ``--data`` (a data source), ``--batch-size``, ``--workers``;
- **inference**: ``--backend`` (``deploy.inference.fast_inference``'s backends);
- **device**: ``--device`` (auto, cpu or cuda, ``util.devices.choose_device``) and ``--threads``;
- **output**: ``--json [PATH]`` (the results as JSON: written to PATH, or printed instead of the text) and
  ``--no-progress``.

Each ``add_*`` function declares its group on a parser; a command passes what differs (whether the checkpoint is
required, defaults, a help tail) and nothing else. ``check_num_classes`` is the one check that a model and a
dataset agree on the classes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .data.images import check_batch_limit
from .model.geometry import check_min_input_size
from .util.devices import DEVICES
from .util.errors import DataError, OutputError
from .util.fileio import check_output_file, json_safe, write_json
from .util.validation import value_type

__all__ = ["STDOUT", "add_backend_arguments", "add_data_arguments", "add_device_arguments", "add_input_arguments",
           "add_model_arguments", "add_output_arguments", "check_json_path", "check_model_input", "check_num_classes",
           "emit_json"]

STDOUT = "-"  # --json with no PATH (or "-"): print the JSON instead of the text
LARGE_HELP = "lift the size limits (input size 4096 px; images 89 Mpx, aspect ratio 100:1; models 1e9 parameters)"


def add_model_arguments(parser: argparse.ArgumentParser, *, checkpoint: str | None = "required",
                        what: str = "weights (train or deploy form, any layout)") -> None:
    """The model group. ``checkpoint``: "required", "optional" (``what`` says what happens without) or None (the
    command takes the checkpoint another way, e.g. a positional path)."""
    group = parser.add_argument_group("model")
    if checkpoint is not None:
        group.add_argument("--checkpoint", required=checkpoint == "required", help=what)
    group.add_argument("--model", help="variant name (default: from the checkpoint)")
    group.add_argument("--no-ema", action="store_true",
                       help="use the live weights of a training checkpoint, not its EMA weights")
    group.add_argument("--allow-large", action="store_true", help=LARGE_HELP)


def add_input_arguments(parser: argparse.ArgumentParser, *, crop: bool = True, img_size: int | None = None,
                        img_help: str = "input size (default: from the checkpoint / model config)") -> None:
    """The input group: the image size (``img_size``: a default, else the checkpoint's) and the centre crop."""
    group = parser.add_argument_group("input")
    group.add_argument("--img-size", type=value_type(int, ge=1), default=img_size, help=img_help)
    if crop:
        group.add_argument("--crop-pct", type=value_type(float, gt=0, le=1),
                           help="centre-crop fraction (default: from the checkpoint / model config)")


def add_data_arguments(parser: argparse.ArgumentParser, *, batch_size: int, data: str | None = None,
                       batch_help: str = "images per batch") -> None:
    """The data group: ``--data`` (when ``data`` names what its splits are for), the batch and the loaders."""
    from .data.sources import DATA_HELP

    group = parser.add_argument_group("data")
    if data is not None:
        group.add_argument("--data", required=True, help=f"{DATA_HELP} ({data})")
    group.add_argument("--batch-size", type=value_type(int, ge=1), default=batch_size,
                       help=f"{batch_help} (default {batch_size})")
    group.add_argument("--workers", type=value_type(int, ge=0), default=min(4, os.cpu_count() or 1),
                       help="data-loading processes (default: 4, or the number of CPUs if fewer)")


def add_device_arguments(parser: argparse.ArgumentParser, *, device: bool = True, threads: bool = True) -> None:
    """The device group: where to run and the CPU threads."""
    group = parser.add_argument_group("device")
    if device:
        group.add_argument("--device", choices=DEVICES, default="auto",
                           help="where to run (default auto: cuda when available)")
    if threads:
        group.add_argument("--threads", type=value_type(int, ge=1, le=1024),
                           help="CPU threads (default: torch's)")


def add_backend_arguments(parser: argparse.ArgumentParser, *, plain: bool = False) -> None:
    """``--backend``: how the model runs (``fast_inference``'s verified backends; ``plain``: also none, the model
    exactly as loaded)."""
    from .deploy.backends import EXACT_BACKENDS

    group = parser.add_argument_group("inference")
    group.add_argument("--backend", default="eager", choices=(*(("none",) if plain else ()), "auto", *EXACT_BACKENDS),
                       help="fast_inference backend (default eager)" + ("; none = the model exactly as loaded"
                                                                        if plain else "")
                       + "; for int8 see vanillanet quantize")


def add_output_arguments(parser: argparse.ArgumentParser, *, progress: bool = True) -> None:
    """The output group: ``--json [PATH]`` and, for commands with a progress bar, ``--no-progress``."""
    group = parser.add_argument_group("output")
    group.add_argument("--json", nargs="?", const=STDOUT, metavar="PATH",
                       help="the results as JSON: written to PATH, or printed instead of the text when no PATH (or "
                       "-) is given")
    if progress:
        group.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_json_path(path: str | None) -> None:
    """OutputError when ``--json PATH`` would replace an existing file that is not JSON (e.g. an image that
    ``--json`` took as its PATH: put ``--json`` last, or write ``--json -``) or cannot be written at all
    (``util.fileio.check_output_file``), before the command does any work."""
    if path in (None, STDOUT):
        return
    p = Path(path)
    if p.is_dir() or (p.exists() and p.suffix.lower() != ".json"):
        raise OutputError(f"--json {path} would replace a {'folder' if p.is_dir() else 'file'} that is not JSON; "
                          "name a .json file, or give --json no PATH (last on the line, or -) to print the JSON")
    check_output_file(path, "--json")  # a folder path (out/), a file in the way, a read-only folder


def emit_json(path: str | None, obj: Any) -> bool:
    """Write ``obj`` as ``--json`` says: to PATH, or printed (``STDOUT``), standard JSON either way (non-finite
    numbers as null); returns whether it was printed (then the command prints nothing else)."""
    if path is None:
        return False
    if path == STDOUT:
        print(json.dumps(json_safe(obj), indent=1, allow_nan=False))
        return True
    write_json(path, obj)
    return False


def check_model_input(model: Any, img_size: int, batch_size: int, *, allow_large: bool = False) -> None:
    """ConfigError before any input is built when ``img_size`` is too small for ``model`` (its stem and pooling) or
    a batch of ``batch_size`` such inputs is above the size limit (``data.images.check_batch_limit``), whichever
    route runs the model (fast_inference or the plain module)."""
    check_min_input_size(model, img_size)
    check_batch_limit(batch_size, img_size, int(getattr(model, "in_chans", 3)), allow_large=allow_large)


def check_num_classes(model: Any, classes: list[str], *, doing: str) -> None:
    """DataError when the dataset's classes and the model's head differ (``doing``: what the command does with
    the dataset, for the message)."""
    num_classes = getattr(model, "num_classes", None)
    if num_classes and len(classes) != num_classes:
        raise DataError(f"the dataset has {len(classes)} classes but the model predicts {num_classes}; {doing} with "
                        "the dataset the checkpoint was trained for")

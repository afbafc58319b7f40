"""``vanillanet shards SRC OUT``: write WebDataset tar shards, their indexes and a manifest from an image folder or
any data source, optionally pre-resized; safe to re-run (see ``data.shard_writer``). ``--data OUT`` (or its
manifest, or the URL it was uploaded to) then trains and evaluates from the shards.
"""

from __future__ import annotations

import argparse
import os

from .data.shard_writer import WriteSettings, write_shards
from .util.errors import ConfigError
from .util.validation import value_type


def _main(args: argparse.Namespace) -> int:
    if args.quality > 95:
        raise ConfigError(f"--quality {args.quality} is above 95, where JPEG files grow without visible gain; use "
                          "1..95")
    settings = WriteSettings(shard_size=args.shard_size, max_side=args.max_side, quality=args.quality,
                             seed=args.seed, strict=args.strict, allow_large=args.allow_large)
    s = write_shards(args.src, args.out, settings, workers=args.workers, split=args.split,
                     progress=not args.no_progress)
    per_split = ", ".join(f"{split} {n}" for split, n in s["samples"].items())
    skipped = sum(s["skipped"].values())
    note = f"; {skipped} unreadable images skipped (listed in the manifest)" if skipped else ""
    rate = sum(s["samples"].values()) / max(s["seconds"], 1e-9)
    print(f"{args.src} -> {s['manifest']}: {per_split} images, {s['classes']} classes, {s['shards']} shards "
          f"({s['written']} written, {s['kept']} verified and kept) in {s['seconds']:.1f} s ({rate:.0f} img/s)"
          f"{note}")
    return 0


def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    """``vanillanet shards SRC OUT [--max-side N] [--quality Q] [--shard-size N] [--workers N]``."""
    parser.add_argument("src", metavar="SRC", help="an image folder (one sub-folder per class, optionally inside "
                        "train/ and val/), fashion-mnist, digits, synthetic, or existing shards (folder, manifest "
                        "or URL)")
    parser.add_argument("out", metavar="OUT", help="the folder to write (or an s3:// / gs:// URL); re-running "
                        "continues an interrupted run and keeps the shards already complete")
    parser.add_argument("--max-side", type=value_type(int, ge=16), default=None,
                        help="shrink images so that the longer side is at most this many pixels, keeping the aspect "
                        "ratio (e.g. 320 for 224 px training; default: keep the size)")
    parser.add_argument("--quality", type=value_type(int, ge=1), default=90,
                        help="JPEG quality of re-encoded images (default 90; JPEGs that need no change are copied)")
    parser.add_argument("--shard-size", type=value_type(int, ge=1), default=1000,
                        help="samples per shard (default 1000)")
    parser.add_argument("--split", default=None,
                        help="split name for a folder of class sub-folders without train/ and val/ (default train)")
    parser.add_argument("--seed", type=value_type(int, ge=0), default=0,
                        help="seed of the order of samples across shards (default 0)")
    parser.add_argument("--workers", "-j", type=value_type(int, ge=1), default=min(8, os.cpu_count() or 1),
                        help="processes writing shards (default: 8, or the number of CPUs if fewer)")
    parser.add_argument("--strict", action="store_true",
                        help="an unreadable image is an error instead of a skip counted in the manifest")
    parser.add_argument("--allow-large", action="store_true",
                        help="accept images above the size limits (89 Mpx, aspect ratio 100:1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_main)

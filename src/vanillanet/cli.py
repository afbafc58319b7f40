"""The ``vanillanet`` command line: ``vanillanet {list,info,convert,train,eval,predict,export,quantize,bench,
shards,ablate} ...``.

Each command lives in the module that does the work; that module's ``add_cli(parser)`` declares its options and
sets ``func``. Only the chosen command's module is imported, so start-up stays fast.

One error policy, enforced here for every command: whatever goes wrong ends in ONE line on stderr and exit status 2.
Errors a user can cause (``VanillaNetError``) and bad options print ``vanillanet CMD: error: <reason and fix>``; any
other exception (a bug, or a failure we did not foresee) prints ``vanillanet CMD: error: <type>: <first line>
(full traceback: <log file>)``, the traceback being written to the command's output folder when it has one
(``args.log_dir``), else to ``$VANILLANET_LOG_DIR``, the user cache (``~/.cache/vanillanet/logs``) or the temporary
folder. Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .util.errors import VanillaNetError, first_line, user_message
from .util.validation import check_environment

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("complexity", "list the VanillaNet variants with parameters and MACs"),
    "info": ("complexity", "parameters and MACs of one model in train and deploy form"),
    "convert": ("convert", "convert any supported checkpoint to a deploy-form safetensors file"),
    "train": ("train", "train or fine-tune (single process, or DDP under torchrun)"),
    "eval": ("evaluate", "top-1/top-5 and loss of a checkpoint on a validation set"),
    "predict": ("predict", "top-k classes for image files or folders"),
    "export": ("export", "export to ONNX / TorchScript with a parity check"),
    "quantize": ("quantize", "static int8 ONNX for CPUs: fp32 vs int8 top-1 and speed in one run"),
    "bench": ("bench", "latency and throughput of models in several execution modes"),
    "shards": ("shards", "write WebDataset tar shards (with indexes and a manifest) from an image folder or dataset"),
    "ablate": ("ablate", "train variations of a recipe over several seeds and summarise them (ablation studies)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with the package's error format: one line, exit status 2 (the usage is one ``-h`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` given, only that command's module is imported and its options added."""
    parser = _Parser(prog="vanillanet", description="VanillaNet models: train, convert, evaluate, export and "
                     "benchmark.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"vanillanet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(f"vanillanet.{module}").add_cli(sp, name)
    return parser


def _log_dirs(args: argparse.Namespace) -> list[Path]:
    """Where a traceback log may go, best first: the command's output folder if it exists, then the others."""
    own = getattr(args, "log_dir", None)
    dirs = [Path(own)] if own and Path(own).is_dir() else []
    if os.environ.get("VANILLANET_LOG_DIR"):
        dirs.append(Path(os.environ["VANILLANET_LOG_DIR"]))
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return [*dirs, Path(cache) / "vanillanet" / "logs", Path(tempfile.gettempdir()) / "vanillanet-logs"]


def write_traceback(args: argparse.Namespace, err: BaseException) -> Path | None:
    """Write ``err``'s full traceback (and the command line) to a log file; its path, or None if nowhere could
    take it."""
    name = f"traceback-{args.command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = f"vanillanet {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(err))
    for folder in _log_dirs(args):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:  # before a command's module is imported: the kernels read their switch at import
        check_environment()
    except VanillaNetError as err:
        print(f"vanillanet: error: {err}", file=sys.stderr)
        return 2
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VanillaNetError as err:
        print(f"vanillanet {args.command}: error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vanillanet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the guard: nothing escapes as a bare traceback
        if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":  # host RAM, or torch's CUDA
            print(f"vanillanet {args.command}: error: out of memory ({first_line(err)}); use a smaller --batch-size "
                  "or --img-size, fewer --workers, or leave out --allow-large", file=sys.stderr)
            return 2
        log = write_traceback(args, err)
        what = first_line(err)
        what = what if what == type(err).__name__ else f"{type(err).__name__}: {what}"
        where = f"full traceback: {log}" if log else "no traceback log could be written"
        print(f"vanillanet {args.command}: error: {what} ({where})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

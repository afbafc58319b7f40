"""The ``vanillanet`` command line: ``vanillanet {list,info,convert,train,eval,predict,export,quantize,bench,
ablate} ...``.

Each command lives in the module that does the work; that module's ``add_cli(parser)`` declares its options and
sets ``func``. Only the chosen command's module is imported, so start-up stays fast. Errors a user can cause
(``VanillaNetError``) are printed as one line, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import VanillaNetError

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
    "ablate": ("ablate", "train variations of a recipe over several seeds and summarise them (ablation studies)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` given, only that command's module is imported and its options added."""
    parser = argparse.ArgumentParser(prog="vanillanet", description="VanillaNet models: train, convert, "
                                     "evaluate, export and benchmark.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"vanillanet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(f"vanillanet.{module}").add_cli(sp, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VanillaNetError as err:
        print(f"vanillanet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vanillanet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

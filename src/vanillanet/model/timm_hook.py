"""Register the VanillaNet variants with timm without making ``import vanillanet`` pay for importing timm.

If timm is already imported, the variants are registered at once. Otherwise a post-import hook waits for the first
``import timm`` (by anyone) and registers them right after timm has loaded, so ``import vanillanet`` followed by
``timm.create_model("vanillanet_5")`` works in either order, while the CLI's ``--help`` imports neither torch nor
timm. Nothing here imports torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
from types import ModuleType

__all__ = ["install"]

_lock = threading.Lock()


def _register() -> None:
    importlib.import_module("vanillanet.model.registry")  # registration runs at its import


class _AfterTimmLoader(importlib.abc.Loader):
    """Runs timm's own loader, then registers the variants."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):  # noqa: ANN001 (importlib's protocol)
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register()


class _TimmFinder(importlib.abc.MetaPathFinder):
    """Finds ``timm`` through the other finders and wraps its loader; removes itself once used."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 (importlib's protocol)
        if fullname != "timm":
            return None
        with _lock:
            if self not in sys.meta_path:
                return None
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is not None and spec.loader is not None:
            spec.loader = _AfterTimmLoader(spec.loader)
        return spec


def install() -> None:
    """Register now if timm is loaded, else as soon as it is (idempotent)."""
    if "timm" in sys.modules:
        _register()
        return
    with _lock:
        if not any(isinstance(f, _TimmFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _TimmFinder())

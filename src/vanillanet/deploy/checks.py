"""``fast_inference``'s arguments checked before any work (no copy of the model, no conversion, no allocation): one
``TypeError`` for a value of the wrong kind, one ``ConfigError`` (a ``ValueError``) for a value out of range, each
naming the argument and the values it accepts. The size limits are the package's own (``data.images``), so the
Python route refuses what the command line refuses.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..data.images import check_batch_limit, check_img_size_limit
from ..model.geometry import check_min_input_size
from ..util.devices import as_device
from ..util.errors import ConfigError
from .backends import BACKENDS

__all__ = ["check_fast_inference_args"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _wrong(name: str, wanted: str, value: object) -> TypeError:
    return TypeError(f"fast_inference: {name} must be {wanted}, got {type(value).__name__} {value!r:.60}")


def _check_backend(backend: object, device: torch.device, dtype: torch.dtype) -> None:
    names = ", ".join(BACKENDS)
    if isinstance(backend, str):
        chosen = [] if backend == "auto" else [backend]
    elif isinstance(backend, Sequence) and all(isinstance(b, str) for b in backend):
        if not backend:
            raise ConfigError(f"fast_inference: backend is an empty list; pass 'auto', one of {names}, or a "
                              "non-empty list of them")
        chosen = list(backend)
    else:
        raise _wrong("backend", f"'auto', a backend name or a list of names ({names})", backend)
    for name in chosen:
        if name not in BACKENDS:
            raise ConfigError(f"fast_inference: backend must be auto or one of {names} (or a list of them), got "
                              f"{name!r}")
        reason = BACKENDS[name].unavailable(device, dtype)
        if reason:
            raise ConfigError(f"{reason}; use backend='auto' or another backend")


def _check_numbers(batch_size: object, image_size: object, tol: object, seed: object) -> None:
    for name, value in (("batch_size", batch_size), ("image_size", image_size), ("seed", seed)):
        if not _is_int(value):
            raise _wrong(name, "an integer", value)
    if batch_size < 1:  # type: ignore[operator]
        raise ConfigError(f"fast_inference: batch_size must be at least 1, got {batch_size}")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
            raise _wrong("tol", "None (the backend's own gate) or a positive number", tol)
        if not (math.isfinite(tol) and tol > 0):
            raise ConfigError(f"fast_inference: tol must be None (the backend's own gate) or a finite number above "
                              f"0 (a relative error, e.g. 1e-4), got {tol!r}")


def check_fast_inference_args(model: object, device: object, dtype: object, batch_size: object, image_size: object,
                              backend: object, *, tol: object = None, seed: object = 0, deploy: object = True,
                              calibration: object = None, allow_large: bool = False) -> torch.device:
    """The device ``fast_inference`` runs on (the CUDA index filled in), once every argument is known good."""
    if not isinstance(model, nn.Module):
        raise _wrong("model", "a torch.nn.Module (e.g. from vanillanet.create_model)", model)
    dev = as_device(device, "fast_inference: device")
    if not isinstance(dtype, torch.dtype):
        raise _wrong("dtype", "a torch.dtype (torch.float32, torch.float16 or torch.bfloat16)", dtype)
    if dtype not in DTYPES:
        raise ConfigError(f"fast_inference: dtype must be torch.float32, torch.float16 or torch.bfloat16, got "
                          f"{dtype}")
    _check_numbers(batch_size, image_size, tol, seed)
    if not isinstance(deploy, bool):
        raise _wrong("deploy", "True or False", deploy)
    if calibration is not None and (isinstance(calibration, torch.Tensor) or not isinstance(calibration, Iterable)):
        raise _wrong("calibration", "None or an iterable of image batches (e.g. a list of (N, C, H, W) tensors)",
                     calibration)
    _check_backend(backend, dev, dtype)
    check_img_size_limit(image_size, allow_large=allow_large, what="fast_inference: image_size")  # type: ignore
    check_min_input_size(model, image_size)  # type: ignore[arg-type]
    in_chans = int(getattr(model, "in_chans", 3))
    check_batch_limit(batch_size, image_size, in_chans, allow_large=allow_large,  # type: ignore[arg-type]
                      what="fast_inference: batch_size and image_size")
    return dev

"""Is a state sound, and are a file's bytes the ones we wrote? The one check shared by checkpoint writing, training,
convert, export and loading, and the digest written into (and verified on reading) every file we save.

- ``unsound(*named)``: the floating-point tensors of weights and buffers that hold NaN or inf, weights so large
  that squaring them overflows float32 (``MAX_ABS``: weight decay and LAMB's trust ratio square them, so such a
  state diverges at the next step; BatchNorm's running statistics are exempt, a variance being a square already),
  or negative BatchNorm running variances. ``nonfinite`` is the finiteness part
  alone, for states whose magnitudes are not weights (optimizer moments).
- ``expanded(obj)``: tensors that are views larger than their storage (stride 0, as ``Tensor.expand`` makes them):
  a few bytes in a file that become gigabytes once copied. Files we write never hold them.
- ``digest(obj)``: SHA-256 over every tensor (path, dtype, shape, bytes) and every plain value of a nested
  structure, mapping keys in sorted order; ``state_hash`` is the same over state_dicts (equal hashes = bit-identical
  weights).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["MAX_ABS", "describe", "digest", "expanded", "nonfinite", "state_hash", "tensors", "unsound"]

MAX_ABS = 2.0**64  # ~1.8e19: its square overflows float32 (max ~3.4e38)


def tensors(obj: Any, prefix: str = "") -> Iterable[tuple[str, torch.Tensor]]:
    """(dotted path, tensor) of every tensor in nested mappings, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}.{i}" if prefix else str(i))


def _largest(t: torch.Tensor) -> float:
    """max |t| (NaN when t holds a NaN, inf when an inf); 0 for empty tensors."""
    if t.numel() == 0:
        return 0.0
    return float(t.detach().abs().amax())


def nonfinite(*named: tuple[str, Any]) -> list[str]:
    """Paths of the floating-point tensors holding NaN or inf in ``(name, state)`` pairs."""
    return [key for name, state in named for key, t in tensors(state, name)
            if t.is_floating_point() and not math.isfinite(_largest(t))]


def unsound(*named: tuple[str, Any]) -> list[str]:
    """``"path (why)"`` for every tensor of ``(name, state_dict)`` pairs that no usable model holds: NaN/inf, a
    weight above ``MAX_ABS``, or a negative BatchNorm running variance (zero is fine: a channel that is always
    zero has variance 0, and BN's eps keeps the division finite)."""
    bad = []
    for name, state in named:
        for key, t in tensors(state, name):
            if not t.is_floating_point():
                continue
            m = _largest(t)
            if not math.isfinite(m):
                bad.append(f"{key} ({'NaN' if math.isnan(m) else 'inf'})")
            elif m > MAX_ABS and not key.endswith(("running_mean", "running_var")):
                bad.append(f"{key} (|value| up to {m:.2g})")
            elif key.endswith("running_var") and t.numel() and float(t.amin()) < 0:
                bad.append(f"{key} (negative variance)")
    return bad


def describe(bad: list[str]) -> str:
    """The first problem and how many more, for a one-line message."""
    return bad[0] + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")


def expanded(obj: Any, prefix: str = "") -> list[str]:
    """Paths of tensors that claim more elements than their storage holds (stride-0 / overlapping views)."""
    return [key for key, t in tensors(obj, prefix)
            if t.numel() * t.element_size() > t.untyped_storage().nbytes()]


def _feed(h: Any, obj: Any, path: str) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{path}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, Mapping):
        h.update(f"{path}|map|{len(obj)}|".encode())
        for k in sorted(obj, key=str):
            _feed(h, obj[k], f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"{path}|seq|{len(obj)}|".encode())
        for i, v in enumerate(obj):
            _feed(h, v, f"{path}.{i}")
    else:
        h.update(f"{path}|{type(obj).__name__}|{obj!r}|".encode())


def digest(obj: Any) -> str:
    """SHA-256 (hex) of a nested structure of tensors and plain values; see the module docstring."""
    h = hashlib.sha256()
    _feed(h, obj, "")
    return h.hexdigest()


def state_hash(*state_dicts: Mapping[str, torch.Tensor]) -> str:
    """``digest`` of state_dicts: equal hashes = bit-identical weights and buffers (every name, shape and byte)."""
    return digest(list(state_dicts))

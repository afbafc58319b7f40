"""Block-size choice for the kernels: a few candidate launch configurations per shape, timed on the spot on CUDA,
the fastest cached per shape key (in memory, and in a JSON file so the next process skips the timing).

Triton's own ``triton.autotune`` is not used: it would re-time inside CUDA-graph capture and in the interpreter,
and it cannot compare whole plans (cuBLAS GEMM + activation kernel against a fused epilogue). Here the caller
decides when tuning may happen (never while a CUDA graph is being captured, never in the interpreter) and what a
key covers. Set ``VANILLANET_KERNEL_TUNING=0`` to skip the timing (first candidate = heuristic default), and
``VANILLANET_KERNEL_CACHE`` to a file path (or ``0`` for none) to move the cache file.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..util.errors import first_line
from ..util.validation import env_flag

_log = logging.getLogger(__name__)

__all__ = ["Config", "best_ms", "cache_key", "clear", "launch_tuned", "pick", "time_ms", "timings"]


@dataclass(frozen=True)
class Config:
    """One launch configuration: constexpr block sizes (``blocks``, as name/value pairs), warps and stages."""

    blocks: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 2

    @classmethod
    def make(cls, num_warps: int = 4, num_stages: int = 2, **blocks: int) -> Config:
        return cls(tuple(blocks.items()), num_warps, num_stages)

    def __getitem__(self, name: str) -> int:
        return dict(self.blocks)[name]

    def launch_kwargs(self) -> dict[str, int]:
        return {**dict(self.blocks), "num_warps": self.num_warps, "num_stages": self.num_stages}

    def to_json(self) -> dict[str, Any]:
        return {"blocks": dict(self.blocks), "num_warps": self.num_warps, "num_stages": self.num_stages}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Config:
        return cls(tuple((str(k), int(v)) for k, v in d["blocks"].items()), int(d["num_warps"]), int(d["num_stages"]))


_CHOICES: dict[str, Any] = {}
_TIMINGS: dict[str, dict[str, float]] = {}
_DISK: dict[str, Any] | None = None


def clear() -> None:
    """Forget every choice made in this process (the cache file is kept)."""
    global _DISK
    _CHOICES.clear()
    _TIMINGS.clear()
    _DISK = None


def timings() -> dict[str, dict[str, float]]:
    """What tuning measured in this process: key -> {candidate: ms}."""
    return {k: dict(v) for k, v in _TIMINGS.items()}


def cache_key(*parts: object) -> str:
    """A key naming the op and everything its best configuration depends on (shapes, dtype, flags)."""
    return "|".join(str(p).replace("torch.", "") for p in parts)


def _tuning_enabled() -> bool:
    return env_flag("VANILLANET_KERNEL_TUNING", True)


def _cache_file() -> Path | None:
    value = os.environ.get("VANILLANET_KERNEL_CACHE")
    if value is not None:
        return None if value.strip() in ("", "0") else Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vanillanet" / "kernel_tuning.json"


def _disk_prefix(device: torch.device) -> str:
    import triton

    return f"{torch.cuda.get_device_name(device)}|triton {triton.__version__}|"


def _load_disk() -> dict[str, Any]:
    global _DISK
    if _DISK is None:
        _DISK = {}
        path = _cache_file()
        try:
            if path is not None and path.is_file():
                _DISK = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            _log.debug("kernel tuning cache %s unreadable (%s); starting afresh", path, err)
    return _DISK


def _save_disk() -> None:
    path = _cache_file()
    if path is None or _DISK is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_DISK, indent=0, sort_keys=True))
        tmp.replace(path)
    except OSError as err:  # a read-only home must not stop inference
        _log.debug("kernel tuning cache %s not written (%s)", path, err)


def time_ms(fn: Callable[[], Any], device: torch.device, budget_ms: float = 20.0) -> float:
    """Median ms per call of ``fn`` on ``device`` (CUDA events), after one warm-up call (which compiles)."""
    fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    single = max(start.elapsed_time(end), 1e-3)
    reps = int(min(50, max(3, budget_ms / 3 / single)))
    rounds = []
    for _ in range(3):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        rounds.append(start.elapsed_time(end) / reps)
    return statistics.median(rounds)


def _describe(cand: Any) -> str:
    return json.dumps(cand.to_json(), sort_keys=True) if isinstance(cand, Config) else str(cand)


def pick(key: str, candidates: list[Any], launch: Callable[[Any], Any], device: torch.device) -> Any:
    """The cached choice for ``key``, else the fastest of ``candidates`` measured by running ``launch(c)``.

    Candidates are ``Config`` objects or plain strings (plan names). No timing (first candidate) off CUDA, with a
    single candidate, during CUDA-graph capture, or with tuning disabled; candidates that fail (e.g. too much
    shared memory) are skipped.
    """
    if _CHOICES.get(key) in candidates:
        return _CHOICES[key]
    if (len(candidates) == 1 or device.type != "cuda" or not _tuning_enabled()
            or torch.cuda.is_current_stream_capturing()):
        return candidates[0]
    disk_key = _disk_prefix(device) + key
    stored = _load_disk().get(disk_key)
    if stored is not None:
        try:
            choice = Config.from_json(stored) if isinstance(stored, dict) else stored
            if choice in candidates:
                _CHOICES[key] = choice
                return choice
        except (KeyError, TypeError, ValueError):
            pass
    measured: dict[str, float] = {}
    best, best_t = None, float("inf")
    for cand in candidates:
        try:
            t = time_ms(lambda c=cand: launch(c), device)
        except Exception as err:  # compile failures (shared memory, registers) rule a candidate out
            _log.debug("tuning %s: candidate %s failed (%s)", key, _describe(cand), first_line(err))
            continue
        measured[_describe(cand)] = t
        if t < best_t:
            best, best_t = cand, t
    if best is None:
        raise RuntimeError(f"no kernel configuration ran for {key}")
    _TIMINGS[key] = measured
    _CHOICES[key] = best
    _load_disk()[disk_key] = best.to_json() if isinstance(best, Config) else best
    _save_disk()
    return best


def launch_tuned(key: str, candidates: list[Any], launch: Callable[[Any], Any], device: torch.device,
                 config: Any = None) -> Any:
    """``launch(config)``, or with ``config`` None the launch of ``pick(key, candidates, ...)``; its result."""
    return launch(pick(key, candidates, launch, device) if config is None else config)


def best_ms(key: str) -> float | None:
    """The time of the chosen candidate for ``key`` when it was measured in this process."""
    measured = _TIMINGS.get(key)
    return min(measured.values()) if measured else None

"""The main job's CPU training speed, today's path against the improved one, interleaved in one run.

Two processes train the main job's recipe (``--recipe fashion_mnist``, same seed) with ``vanillanet.train``, the
real loop: ``old`` with the previous settings (per-image PIL batches through the DataLoader, eager), ``new`` with
the recipe's own (in-memory batches) plus the ``--new KEY=VALUE`` settings (``compile=true``: ``torch.compile``).
They take turns holding a baton: each runs ``--chunk`` optimiser steps, then waits while the other runs, so both
see the same machine load. Only the time a process holds the baton counts: its first turn begins before
``train()`` (building the run, loading and preparing the data, and for ``new`` compiling are inside), so
``first_epoch_s`` is the time to the end of epoch 1's last step, compile included; ``steady_img_s`` counts the
other turns that contain no evaluation (``--steps``: the steps measured, one epoch by default; each side stops
after them). Inductor compiles from an empty cache (a newcomer's first run) unless ``--warm-cache``.

    python benchmarks/cpu_train_speed.py --json benchmarks/results/cpu_train_speed.json
    python benchmarks/cpu_train_speed.py --new compile=true --json benchmarks/results/cpu_train_speed_compiled.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

OLD = {"memory_batches": "false", "compile": "false"}
NEW: dict[str, str] = {}  # the recipe's own settings


class _Stop(Exception):
    """Ends a side after its last measured step."""


def _side(name: str, sets: dict[str, str], epochs: int, steps: int, chunk: int, out: str, sems: list, done: list,
          me: int, results: Any, cold: bool) -> None:
    if cold:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    from vanillanet.train import train
    from vanillanet.training.config import resolve_config

    cfg = resolve_config("fashion_mnist", dict(epochs=epochs, output=out, seed=0),
                         [f"{key}={value}" for key, value in sets.items()])
    other = 1 - me
    turns: list[dict[str, float]] = []
    clock = {"t": 0.0, "step": 0}

    def hand_over(step: int, epoch: float) -> None:
        turns.append(dict(start_step=clock["step"], end_step=step, epoch=epoch,
                          seconds=time.perf_counter() - clock["t"]))
        clock["step"] = step
        if not done[other].value:
            sems[other].release()
            sems[me].acquire()
        clock["t"] = time.perf_counter()

    def on_step(info: dict[str, Any]) -> None:
        if info["step"] % chunk == 0 or info["step"] == steps:
            turns.append(dict(start_step=clock["step"], end_step=info["step"], epoch=info["epoch"],
                              seconds=time.perf_counter() - clock["t"]))
            clock["step"] = info["step"]
            if info["step"] >= steps:
                raise _Stop
            if not done[other].value:
                sems[other].release()
                sems[me].acquire()
            clock["t"] = time.perf_counter()

    sems[me].acquire()
    clock["t"] = time.perf_counter()
    try:
        train(cfg, on_step=on_step)
    except _Stop:
        pass
    done[me].value = 1
    sems[other].release()
    results.put((name, dict(settings=sets, turns=turns)))


def _digest(turns: list[dict[str, Any]], steps_per_epoch: int, batch: int) -> dict[str, float]:
    first = sum(t["seconds"] for t in turns if t["end_step"] <= steps_per_epoch)
    # not the first turn (it builds the run and compiles), nor one that begins at an epoch's end (it evaluates)
    steady = [t for t in turns if t["start_step"] > 0 and t["start_step"] % steps_per_epoch != 0]
    steps = sum(t["end_step"] - t["start_step"] for t in steady)
    secs = sum(t["seconds"] for t in steady)
    return dict(first_epoch_s=round(first, 2), steady_img_s=round(steps * batch / secs, 1) if secs else None,
                steady_steps=steps, total_s=round(sum(t["seconds"] for t in turns), 2))


def _cpu() -> dict[str, Any]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return dict(model=platform.processor())
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return dict(model=fields.get("Model name", "").strip(), cpus=os.cpu_count(),
                flags=[f for f in flags if f.startswith(("avx512", "amx", "avx2", "avx_vnni"))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="the run's length (its lr and act_learn schedule)")
    parser.add_argument("--steps", type=int, default=468, help="optimiser steps measured per side (468: epoch 1)")
    parser.add_argument("--chunk", type=int, default=39, help="optimiser steps per turn (468 per epoch)")
    parser.add_argument("--new", nargs="*", default=[], metavar="KEY=VALUE", help="settings of the new side")
    parser.add_argument("--warm-cache", action="store_true", help="let inductor reuse its on-disk cache")
    parser.add_argument("--json", help="write the record here")
    args = parser.parse_args()
    new = dict(NEW, **dict(kv.split("=", 1) for kv in args.new))
    ctx = mp.get_context("spawn")
    sems, done, results = [ctx.Semaphore(0), ctx.Semaphore(0)], [ctx.Value("i", 0), ctx.Value("i", 0)], ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_side, args=(name, sets, args.epochs, args.steps, args.chunk, str(Path(tmp) / name),
                                                 sems, done, i, results, not args.warm_cache), daemon=True)
                 for i, (name, sets) in enumerate((("old", OLD), ("new", new)))]
        for p in procs:
            p.start()
        sems[0].release()
        got = {}
        while len(got) < len(procs):
            try:
                name, side = results.get(timeout=10)
                got[name] = side
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise SystemExit("a side failed (its traceback is above)") from None
        for p in procs:
            p.join()
    for side in got.values():
        side.update(_digest(side["turns"], 468, 128))
    import torch

    record = dict(machine=_cpu(), torch=torch.__version__, threads=2, epochs=args.epochs, steps=args.steps,
                  chunk=args.chunk,
                  cold_compile_cache=not args.warm_cache,
                  steady_ratio=round(got["new"]["steady_img_s"] / got["old"]["steady_img_s"], 3),
                  first_epoch_ratio=round(got["old"]["first_epoch_s"] / got["new"]["first_epoch_s"], 3), **got)
    for name in ("old", "new"):
        s = got[name]
        print(f"{name}: {s['settings'] or 'recipe'}  first epoch {s['first_epoch_s']:.1f} s (build + compile "
              f"included)  steady {s['steady_img_s']:.0f} img/s")
    print(f"new / old: {record['steady_ratio']:.2f}x img/s; first epoch {record['first_epoch_ratio']:.2f}x as fast")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

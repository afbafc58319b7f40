"""Running a study: every (variation, seed) resolved to a config up front (``plan_runs``), trained with
``train(cfg)`` one after another or in worker processes, resumable, one row appended per finished run
(``run_study``)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..training.config import TrainConfig, config_to_dict, resolve_config
from ..training.runtime import StopSignal, ignore_stop_signals
from ..util.errors import ConfigError, VanillaNetError
from ..util.fileio import check_output_folder
from .rows import ROWS_FILE, read_rows
from .study import MAX_RUNS, Study, Variation, refuse_owned
from .summary import write_summary

__all__ = ["RUN_KEYS", "Run", "already_finished", "config_hash", "plan_runs", "run_folder", "run_study"]

# Keys that say where and how a run executes, not what it computes: left out of the config hash.
RUN_KEYS = ("output", "resume", "progress", "threads", "workers", "log_every", "recipe")


@dataclass(frozen=True)
class Run:
    """One (variation, seed) of a study with its resolved config."""

    variation: Variation
    seed: int
    cfg: TrainConfig
    hash: str

    @property
    def label(self) -> str:
        return f"{self.variation.name} seed {self.seed}"


def config_hash(cfg: TrainConfig) -> str:
    """SHA-256 (first 16 hex digits) of the resolved config without the keys that only say where it runs."""
    values = {k: v for k, v in config_to_dict(cfg).items() if k not in RUN_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def run_folder(root: Path, variation: str, seed: int) -> Path:
    return root / "runs" / variation / f"seed{seed}"


def plan_runs(study: Study, root: str | Path, *, sets: Sequence[str] = (), threads: int | None = None,
              only: Iterable[str] | None = None, seeds: Iterable[int] | None = None) -> list[Run]:
    """Every selected (variation, seed) with its resolved config: base <- variation delta <- seed/output <- ``sets``
    (``key=value`` strings applied to every run, e.g. for a shorter smoke test). All are checked before any runs."""
    root = Path(root)
    names = {v.name for v in study.variations}
    only = list(only or [])
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ConfigError(f"unknown variation(s) {', '.join(unknown)}; the study has {', '.join(sorted(names))}")
    seeds = list(seeds) if seeds else list(study.seeds)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be None (the recipe's) or an integer of at least 1, got {threads!r}")
    refuse_owned((s.split("=", 1)[0] for s in sets), "--set")
    selected = [v for v in study.variations if not only or v.name in only]
    if len(selected) * len(seeds) > MAX_RUNS:
        raise ConfigError(f"{len(selected)} variations x {len(seeds):,} seeds = {len(selected) * len(seeds):,} runs, "
                          f"above the limit of {MAX_RUNS:,} per study; select fewer with --only / --seeds or split "
                          "the study")
    base = dict(study.base)
    recipe = base.pop("recipe", None)
    runs = []
    for variation in study.variations:
        if only and variation.name not in only:
            continue
        for seed in seeds:
            overrides = {**base, **variation.delta, "seed": seed, "resume": "auto", "progress": False,
                         "output": str(run_folder(root, variation.name, seed))}
            if threads is not None:
                overrides["threads"] = threads
            try:
                cfg = resolve_config(recipe, overrides, list(sets))
            except ConfigError as err:
                raise ConfigError(f"variation {variation.name!r} (seed {seed}): {err}") from None
            runs.append(Run(variation, seed, cfg, config_hash(cfg)))
    return runs



def already_finished(run: Run, rows: list[dict[str, Any]], root: Path) -> bool:
    """Whether ``run`` already has a finished row (then it is skipped); ConfigError when its row or its folder
    holds another config than the study's now."""
    where = run_folder(root, run.variation.name, run.seed)
    fix = (f"the study file or --set changed since; use another --output, or remove its row from {root / ROWS_FILE} "
           f"and the folder {where} to re-run it")
    done = [r for r in rows if r["variation"] == run.variation.name and r["seed"] == run.seed]
    for row in done:
        if row.get("config_hash") != run.hash:
            raise ConfigError(f"{run.label} was run with another config (hash {row.get('config_hash')}, now "
                              f"{run.hash}): {fix}")
    if done:
        return True
    saved, old = where / "config.yaml", None
    if saved.is_file():
        with contextlib.suppress(yaml.YAMLError, ConfigError, TypeError, AttributeError):
            old = config_hash(resolve_config(None, {k: v for k, v in yaml.safe_load(saved.read_text()).items()
                                                    if k not in RUN_KEYS}))
    if old is not None and old != run.hash:
        raise ConfigError(f"{where} holds a started run with another config (hash {old}, now {run.hash}): {fix}")
    return False


def _row(run: Run, summary: dict[str, Any], wall: float, cpu: float, jobs: int, sets: Sequence[str]) -> dict[str, Any]:
    keys = ("test_top1", "best_top1", "params_train", "params_deploy", "macs_train", "macs_deploy", "epochs",
            "steps", "img_size", "seconds")
    return {
        "variation": run.variation.name, "group": run.variation.group, "seed": run.seed, "delta": run.variation.delta,
        "set": list(sets), "config_hash": run.hash, "model": run.cfg.model, **{k: summary.get(k) for k in keys},
        "deploy_top1": summary.get("deploy_test_top1"), "deploy_agreement": summary.get("deploy_agreement"),
        "wall_seconds": wall, "cpu_seconds": cpu, "threads": run.cfg.threads, "jobs": jobs,
        "output": run.cfg.output, "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _execute(cfg: TrainConfig) -> tuple[dict[str, Any], float, float]:
    """Train one run with its log in OUT/train.log: (summary, wall seconds, CPU seconds of this process)."""
    from ..train import train

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), time.process_time()
    with open(out / "train.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        summary = train(cfg)
    return summary, time.perf_counter() - wall, time.process_time() - cpu


def _labelled(run: Run, err: BaseException) -> BaseException:
    """A user error of one run, with the run named in its one-line message."""
    return type(err)(f"{run.label}: {err}") if isinstance(err, VanillaNetError) else err


class _Stop(StopSignal):
    """Parent-side SIGINT/SIGTERM: the first asks for a stop, forwarded as SIGTERM to our worker processes (which
    checkpoint and return; they ignore signals themselves, ``ignore_stop_signals``); a second SIGINT interrupts at
    once."""

    def __init__(self, forward: bool):
        super().__init__()
        self.forward = forward

    def request(self, signum: int) -> None:
        super().request(signum)
        self.forward_to_workers()

    def forward_to_workers(self) -> None:
        if self.forward and self.signum is not None:
            for child in multiprocessing.active_children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    h, m = divmod(seconds // 60, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {seconds % 60:02d} s"


def _run_one_after_another(pending: list[Run], stop: _Stop, started: Callable[[Run], None],
                           finished: Callable[..., bool]) -> None:
    """The study's runs in this process, in order, until one is stopped by a signal."""
    for run in pending:
        if stop.signum is not None:
            break
        started(run)
        try:
            result = _execute(run.cfg)
        except VanillaNetError as err:
            raise _labelled(run, err) from None
        if not finished(run, *result):
            break


def _run_in_workers(pending: list[Run], jobs: int, stop: _Stop, started: Callable[[Run], None],
                    finished: Callable[..., bool]) -> None:
    """The study's runs in ``jobs`` spawned worker processes (which leave signals to this one); the first error stops
    the other runs cleanly (checkpointed) and is raised, labelled with its run."""
    ctx = multiprocessing.get_context("spawn")
    workers_ignore_signals = functools.partial(ignore_stop_signals, 0)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=workers_ignore_signals) as pool:
        queue, running = list(pending), {}
        while queue or running:
            while queue and len(running) < jobs and stop.signum is None:
                run = queue.pop(0)
                started(run)
                running[pool.submit(_execute, run.cfg)] = run
            if not running:
                break
            done, _ = wait(list(running), timeout=2.0, return_when=FIRST_COMPLETED)
            stop.forward_to_workers()  # again, for a worker that was still setting up at the first signal
            for future in done:
                run = running.pop(future)
                err = future.exception()
                if err is not None:
                    stop.request(signal.SIGTERM)
                    raise _labelled(run, err) from None
                finished(run, *future.result())


def run_study(study: Study, root: str | Path, *, jobs: int = 1, threads: int | None = None,
              only: Iterable[str] | None = None, seeds: Iterable[int] | None = None, sets: Sequence[str] = (),
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every selected (variation, seed) that has no finished row yet, append a row per finished run, then write
    the summary. Returns ``{"status": "completed"|"interrupted", "ran": n, "skipped": n, "exit_code": ...}``."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be an integer of at least 1, got {jobs!r}")
    root = check_output_folder(root, "the study folder", error=ConfigError)
    runs = plan_runs(study, root, sets=sets, threads=threads, only=only, seeds=seeds)
    rows = read_rows(root / ROWS_FILE)
    pending = [r for r in runs if not already_finished(r, rows, root)]
    skipped = len(runs) - len(pending)
    log(f"study {study.name}: {len(runs)} runs ({len({r.variation.name for r in runs})} variations x "
        f"{len({r.seed for r in runs})} seeds), {skipped} already finished, {len(pending)} to run "
        f"({'one after another' if jobs == 1 else f'{jobs} worker processes'}) in {root}")
    root.mkdir(parents=True, exist_ok=True)
    done_times: list[float] = []
    total, counter = len(runs), skipped
    stop = _Stop(forward=jobs > 1)  # a signal stops the study after checkpointing the running runs

    def started(run: Run) -> None:
        nonlocal counter
        counter += 1
        log(f"[{counter}/{total}] started  {run.label}  ({run.cfg.output})")

    def finished(run: Run, summary: dict[str, Any], wall: float, cpu: float) -> bool:
        if summary.get("status") != "completed":  # stopped by a signal inside the training loop
            log(f"  {run.label} stopped at step {summary.get('step')}: checkpoint kept, rerun to continue")
            stop.signum = stop.signum or summary.get("exit_code", 128 + signal.SIGTERM) - 128
            return False
        row = _row(run, summary, wall, cpu, jobs, sets)
        with open(root / ROWS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        done_times.append(wall)
        left = total - skipped - len(done_times)
        eta = _duration(sum(done_times) / len(done_times) * left / jobs) if left else "0 s"
        deploy = (f"deploy {100 * row['deploy_top1']:.2f} % (agreement {100 * row['deploy_agreement']:.2f} %)"
                  if row["deploy_top1"] is not None else "no deploy form")
        log(f"  finished {run.label}: top-1 {100 * row['test_top1']:.2f} %, {deploy}, {_duration(wall)} "
            f"(CPU {_duration(cpu)}); {left} left, ETA {eta}")
        return True

    with stop:
        if jobs == 1:
            _run_one_after_another(pending, stop, started, finished)
        else:
            _run_in_workers(pending, jobs, stop, started, finished)
    status = "completed" if stop.signum is None else "interrupted"
    exit_code = 0 if stop.signum is None else 128 + stop.signum
    if len(read_rows(root / ROWS_FILE)):
        paths = write_summary(study, root)
        log(f"summary: {paths[0]}" + (f", {paths[1]}" if paths[1] else ""))
    if status == "interrupted":
        log(f"stopped by {'SIGINT' if stop.signum == signal.SIGINT else 'SIGTERM'}: rerun the same command to "
            "continue (finished runs are kept, started runs resume from their last checkpoint)")
    ran = len(read_rows(root / ROWS_FILE)) - len(rows)
    return dict(status=status, ran=ran, skipped=skipped, total=total, exit_code=exit_code)


"""Ablation studies: ``vanillanet ablate STUDY.yaml`` trains named variations of one base recipe over several seeds
and summarises them (mean +- std, difference to a reference variation with a 95 % Welch t-interval).

A study file (YAML)::

    description: what the study asks             # optional
    output: runs/my_study                        # default study folder (--output overrides)
    seeds: [0, 1, 2]
    reference: base                              # the variation the others are compared with (default: the first)
    base:                                        # the base run: an optional recipe, then config keys
      recipe: fashion_mnist
      model: vanillanet_6
      epochs: 3
    variations:                                  # name -> delta over the base (in this order in the summary)
      base: {group: tricks, paper: 76.36}
      no_deep_training:
        group: tricks                            # optional: groups the chart and the table
        note: each layer is one conv + BN from the start
        paper: 75.23                             # optional: a published number shown beside ours
        set: {deep_training: false}

Every (variation, seed) run trains with ``train(cfg)`` into ``OUT/runs/VARIATION/seedS`` with ``resume=auto``, so an
interrupted run continues from its last checkpoint; each finished run appends one JSON row to ``OUT/runs.jsonl``
(config delta, seed, test top-1, deploy top-1 and agreement, seconds, CPU seconds, params/MACs of both forms, the
hash of the resolved config) and is never re-run. ``OUT/summary.md`` and ``OUT/summary.png`` are written at the end
(``--summary-only`` rewrites them from the rows). Runs go one after another in this process (``--jobs 1``) or in N
worker processes (``--jobs N``, each with ``--threads`` compute threads).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .training.config import TrainConfig, config_to_dict, resolve_config
from .training.runtime import StopSignal, ignore_stop_signals
from .util.errors import ConfigError, DataError, OutputError, VanillaNetError, first_line
from .util.fileio import check_output_folder, write_text
from .util.stats import T_QUANTILE_SOURCE, mean_std, welch_interval
from .util.tables import render
from .util.validation import value_type

__all__ = ["Run", "Study", "Variation", "config_hash", "load_study", "plan_runs", "plot_summary", "read_rows",
           "run_study", "summarize", "summary_markdown", "write_summary"]

ROWS_FILE, SUMMARY_MD, SUMMARY_PNG = "runs.jsonl", "summary.md", "summary.png"
# Keys that say where and how a run executes, not what it computes: left out of the config hash.
RUN_KEYS = ("output", "resume", "progress", "threads", "workers", "log_every", "recipe")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STUDY_KEYS = {"description", "output", "seeds", "reference", "base", "variations"}
_VARIATION_KEYS = {"set", "group", "note", "paper"}
# Keys the study sets for every run itself: a value in the study or --set would put runs on top of each other.
STUDY_OWNED = {"output": "each run goes to OUT/runs/VARIATION/seedS; give the study folder with --output or the "
                         "study's 'output'",
               "seed": "list the seeds under the study's 'seeds' or pass --seeds",
               "resume": "the study resumes every run by itself (resume=auto)"}
MAX_SEEDS, MAX_RUNS = 1000, 10_000  # per study: planning resolves one config per run, up front
_FRACTIONS = ("test_top1", "best_top1", "deploy_top1", "deploy_agreement")
_SECONDS = ("wall_seconds", "cpu_seconds", "seconds")
_COUNTS = ("params_train", "params_deploy", "macs_train", "macs_deploy", "epochs", "steps", "img_size")


# ---- the study file -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variation:
    """One named variation: config keys over the base, a chart group, a definition and a published number."""

    name: str
    delta: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    note: str = ""
    paper: str | None = None


@dataclass(frozen=True)
class Study:
    """A base config (``recipe`` plus keys), the seeds, and the variations (the first is the default reference)."""

    name: str
    base: dict[str, Any]
    seeds: tuple[int, ...]
    variations: tuple[Variation, ...]
    reference: str
    output: str | None = None
    description: str = ""

    def variation(self, name: str) -> Variation:
        return next(v for v in self.variations if v.name == name)


def _mapping(value: Any, what: str, path: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {what} must be a mapping, got {type(value).__name__}; see `vanillanet ablate "
                          "--help` for the study format")
    return value


def load_study(path: str | Path) -> Study:
    """Read and check a study file (see the module docstring); one-line ConfigError for every mistake."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist; pass a YAML study file")
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader: 7x faster on a long file
        data = _mapping(yaml.load(path.read_text(), Loader=loader), "the study", path)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"study file {path} is not valid YAML ({first_line(err)}); fix the file") from None
    unknown = set(data) - _STUDY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown study key(s) {', '.join(sorted(unknown))}; use "
                          f"{', '.join(sorted(_STUDY_KEYS))}")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r:.80}")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"{path}: {len(seeds):,} seeds is above the limit of {MAX_SEEDS:,} per study; list fewer "
                          "seeds (split the study, each with its own output)")
    variations = []
    for name, spec in _mapping(data.get("variations"), "variations", path).items():
        name = str(name)
        if not _NAME.match(name):
            raise ConfigError(f"{path}: variation name {name!r} must be letters, digits, '_', '.' or '-' (it names "
                              "a folder)")
        spec = _mapping(spec, f"variation {name!r}", path)
        unknown = set(spec) - _VARIATION_KEYS
        if unknown:
            raise ConfigError(f"{path}: variation {name!r} has unknown key(s) {', '.join(sorted(unknown))}; use "
                              f"{', '.join(sorted(_VARIATION_KEYS))} (config keys go under 'set')")
        paper = spec.get("paper")
        variations.append(Variation(name, dict(_mapping(spec.get("set"), f"{name}.set", path)),
                                    str(spec.get("group") or ""), str(spec.get("note") or "").strip(),
                                    None if paper is None else str(paper)))
    if not variations:
        raise ConfigError(f"{path}: the study has no variations; add at least one under 'variations'")
    reference = str(data.get("reference") or variations[0].name)
    if reference not in {v.name for v in variations}:
        raise ConfigError(f"{path}: reference {reference!r} is not one of the variations "
                          f"({', '.join(v.name for v in variations)})")
    base = dict(_mapping(data.get("base"), "base", path))
    for where, keys in (("base", base), *((f"variation {v.name!r}", v.delta) for v in variations)):
        _refuse_owned(keys, f"{path}: {where}")
    return Study(name=path.stem, base=base, seeds=tuple(seeds),
                 variations=tuple(variations), reference=reference, output=data.get("output"),
                 description=str(data.get("description") or "").strip())


def _refuse_owned(keys: Iterable[str], where: str) -> None:
    for key in keys:
        owned = STUDY_OWNED.get(str(key).strip().replace("-", "_"))
        if owned:
            raise ConfigError(f"{where} sets {key!r}, which the study sets for every run: {owned}")


# ---- runs ---------------------------------------------------------------------------------------------------------
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
    _refuse_owned((s.split("=", 1)[0] for s in sets), "--set")
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


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a runs.jsonl file (a line cut short by a crash is skipped); DataError for a row whose values
    cannot be a run's (a non-finite or out-of-range accuracy, a negative time...), naming the line."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if isinstance(row, dict) and "variation" in row and "seed" in row:
                _check_row(row, f"{path} line {number}")
                rows.append(row)
    return rows


def _check_row(row: dict[str, Any], where: str) -> None:
    def bad(key: str, wanted: str) -> DataError:
        return DataError(f"{where}: {key} is {row[key]!r:.40}, not {wanted}; fix or remove that line (a removed run "
                         "is run again)")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(row["variation"], str):
        raise bad("variation", "a variation name")
    if isinstance(row["seed"], bool) or not isinstance(row["seed"], int):
        raise bad("seed", "an integer")
    for key in (k for k in _FRACTIONS if row.get(k) is not None):
        if not (number(row[key]) and 0 <= row[key] <= 1):
            raise bad(key, "a fraction in [0, 1]")
    for key in (k for k in _SECONDS if row.get(k) is not None):
        if not (number(row[key]) and row[key] >= 0):
            raise bad(key, "a finite number of seconds")
    for key in (k for k in _COUNTS if row.get(k) is not None):
        if not (number(row[key]) and row[key] >= 0):
            raise bad(key, "a count")


def _already_finished(run: Run, rows: list[dict[str, Any]], root: Path) -> bool:
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
    from .train import train

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
    pending = [r for r in runs if not _already_finished(r, rows, root)]
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


# ---- the summary ------------------------------------------------------------------------------------------------
def _latest_rows(rows: list[dict[str, Any]], study: Study) -> dict[str, list[dict[str, Any]]]:
    """Rows of each variation of the study, one per seed (the last written wins)."""
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        by_key[(row["variation"], row["seed"])] = row
    out: dict[str, list[dict[str, Any]]] = {v.name: [] for v in study.variations}
    for (name, _), row in sorted(by_key.items(), key=lambda kv: kv[0][1]):
        if name in out:
            out[name].append(row)
    return out


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None]


def summarize(rows: list[dict[str, Any]], study: Study, confidence: float = 0.95) -> list[dict[str, Any]]:
    """One record per variation (study order): seeds, mean/std of test top-1 (in %), difference to the reference with
    its Welch interval (percentage points), deploy top-1 and agreement, params/MACs, seconds per run."""
    grouped = _latest_rows(rows, study)
    ref = [100 * v for v in _values(grouped[study.reference], "test_top1")]
    records = []
    for variation in study.variations:
        rs = grouped[variation.name]
        top1 = [100 * v for v in _values(rs, "test_top1")]
        mean, std = mean_std(top1)
        deploy, agreement = _values(rs, "deploy_top1"), _values(rs, "deploy_agreement")
        interval = welch_interval(top1, ref, confidence) if variation.name != study.reference and top1 else None
        first = rs[0] if rs else {}
        records.append(dict(
            variation=variation.name, group=variation.group, note=variation.note, paper=variation.paper,
            seeds=[r["seed"] for r in rs], n=len(top1), top1=top1, mean=mean, std=std,
            diff=interval.diff if interval else None, low=interval.low if interval else None,
            high=interval.high if interval else None, df=interval.df if interval else None,
            significant=interval.excludes_zero if interval and not math.isnan(interval.low) else None,
            deploy_mean=100 * mean_std(deploy)[0] if deploy else None,
            agreement_min=min(agreement) if agreement else None,
            params_train=first.get("params_train"), params_deploy=first.get("params_deploy"),
            macs_train=first.get("macs_train"), macs_deploy=first.get("macs_deploy"),
            seconds=mean_std(_values(rs, "wall_seconds"))[0] if rs else None,
            cpu_seconds=mean_std(_values(rs, "cpu_seconds"))[0] if rs else None,
        ))
    return records


def _f(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    """``value`` formatted with ``suffix``, or n/a (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec) + suffix


def _in_units(value: float | None, unit: float) -> float | None:
    """``value`` counted in ``unit`` (None stays None: no deploy form)."""
    return None if value is None else value / unit


def _pair(train: float | None, deploy: float | None, unit: float, spec: str, suffix: str) -> str:
    return f"{_f(_in_units(train, unit), spec, suffix)} / {_f(_in_units(deploy, unit), spec, suffix)}"


def summary_markdown(records: list[dict[str, Any]], study: Study, confidence: float = 0.95) -> str:
    """The summary table (markdown) with a header that says how the numbers were computed."""
    pct = f"{100 * confidence:g} %"
    lines = [f"# Ablation study `{study.name}`", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [
        f"Test top-1 of the evaluated model over seeds: mean +- sample std (n - 1). Difference to `{study.reference}` "
        f"in percentage points with a {pct} Welch t-interval (unequal variances, Welch-Satterthwaite degrees of "
        f"freedom, t quantile from {T_QUANTILE_SOURCE}); 'yes' when the interval excludes 0. Deploy: mean top-1 of "
        "the converted model and the smallest fraction of identical predictions over seeds (n/a: no deploy form). "
        "Params / MACs: train form / deploy form. Time: mean wall seconds per run (CPU seconds of the run's process "
        "in brackets).", "",
    ]
    table = [["variation", "group", "seeds", "top-1 % (mean +- std)", "diff to ref, pp [CI]", "beyond noise",
              "deploy top-1 %", "agreement", "params train / deploy", "MACs train / deploy", "time / run",
              "paper top-1 %"]]
    for r in records:
        if not r["n"]:
            continue
        if r["variation"] == study.reference:
            diff, sig = "reference", "-"
        elif r["diff"] is None:
            diff, sig = "n/a", "n/a"
        else:
            diff = f"{r['diff']:+.2f} [{_f(r['low'], '+.2f')}, {_f(r['high'], '+.2f')}]"
            sig = "n/a" if r["significant"] is None else "yes" if r["significant"] else "no"
        top1 = _f(r["mean"]) + (f" +- {r['std']:.2f}" if r["n"] > 1 else "")
        table.append([r["variation"], r["group"], str(r["n"]), top1, diff, sig, _f(r["deploy_mean"]),
                      _f(_in_units(r["agreement_min"], 0.01), ".2f", " %"),
                      _pair(r["params_train"], r["params_deploy"], 1e3, ".1f", " k"),
                      _pair(r["macs_train"], r["macs_deploy"], 1e6, ".2f", " M"),
                      f"{_f(r['seconds'], '.0f', ' s')} ({_f(r['cpu_seconds'], '.0f')})", r["paper"] or "-"])
    lines.append(render(table, markdown=True, left=2))
    missing = [r["variation"] for r in records if not r["n"]]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    notes = [(r["variation"], r["note"]) for r in records if r["note"]]
    if notes:
        lines += ["", "Definitions:", ""] + [f"- `{name}`: {note}" for name, note in notes]
    lines += ["", "Per seed (test top-1 %): " + "; ".join(
        f"{r['variation']} " + ", ".join(f"{v:.2f}" for v in r["top1"]) for r in records if r["top1"]), ""]
    return "\n".join(lines)


def plot_summary(records: list[dict[str, Any]], study: Study, path: str | Path) -> Path:
    """Means with +-std error bars and every seed as a dot, coloured by group (in study order), the reference's mean
    as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in records if r["n"]]
    groups = list(dict.fromkeys(r["group"] for r in shown))
    colors = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(shown) + 2), 4.8), constrained_layout=True)
    ref = next((r for r in shown if r["variation"] == study.reference), None)
    if ref is not None:
        ax.axhline(ref["mean"], color="0.4", ls="--", lw=1, label=f"{study.reference} (mean)")
    labelled: set[str] = set()
    for x, r in enumerate(shown):
        color = colors[r["group"]]
        std = 0.0 if math.isnan(r["std"]) else r["std"]
        label = r["group"] if r["group"] and r["group"] not in labelled else None
        labelled.add(r["group"])
        ax.errorbar([x], [r["mean"]], yerr=[std], fmt="o", color=color, capsize=4, ms=7, label=label)
        ax.plot([x] * len(r["top1"]), r["top1"], ".", color=color, alpha=0.45, ms=5)
    ax.set_xticks(range(len(shown)), [r["variation"] for r in shown], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("test top-1 %")
    ax.set_title(f"{study.name}: mean +- std over seeds (dots: seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(study: Study, root: str | Path) -> tuple[Path, Path | None]:
    """Write OUT/summary.md and OUT/summary.png from OUT/runs.jsonl (the chart only when matplotlib is installed)."""
    root = Path(root)
    rows = read_rows(root / ROWS_FILE)
    if not rows:
        raise DataError(f"{root / ROWS_FILE} holds no finished runs yet; run the study first")
    records = summarize(rows, study)
    md = root / SUMMARY_MD
    write_text(md, summary_markdown(records, study))
    try:
        png: Path | None = plot_summary(records, study, root / SUMMARY_PNG)
    except ImportError:
        png = None
    return md, png


# ---- command line ---------------------------------------------------------------------------------------------
def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    """``vanillanet ablate STUDY.yaml [--output DIR] [--jobs N] [--threads T] [--only ...] [--seeds ...]``."""
    parser.epilog = ("Resumable: rerun the same command after an interruption; finished runs are skipped, started "
                     "ones continue from their last checkpoint. Study format: see the docstring of vanillanet.ablate "
                     "or benchmarks/ablation_vanillanet6.yaml.")
    parser.add_argument("study", help="study file (YAML): base recipe and keys, seeds, named variations")
    parser.add_argument("--output", "-o", help="study folder (default: the study's 'output')")
    parser.add_argument("--jobs", "-j", type=value_type(int, ge=1, le=1024), default=1,
                        help="runs at a time in worker processes (default 1: one after another in this process)")
    parser.add_argument("--threads", type=value_type(int, ge=1, le=1024), default=None,
                        help="compute threads per run (default: the recipe's)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these variations")
    parser.add_argument("--seeds", nargs="+", type=value_type(int), metavar="S",
                        help="run only these seeds (default: the study's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run (e.g. epochs=1 for a smoke test); repeatable")
    parser.add_argument("--results", metavar="DIR", help="also copy runs.jsonl, summary.md and summary.png to DIR "
                        "(e.g. benchmarks/results/ablation_vanillanet6, to commit them)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    parser.add_argument("--summary-only", action="store_true", help="rewrite summary.md/png from runs.jsonl")
    parser.set_defaults(func=_ablate_command)


def _ablate_command(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    root = check_output_folder(args.output or study.output or Path("runs") / study.name, "--output")
    if args.results:  # checked before the study runs, not after
        results = check_output_folder(args.results, "--results")
        if results.resolve() == root.resolve():
            raise OutputError(f"--results {args.results} is the study folder; give another folder to copy "
                              f"{ROWS_FILE}, {SUMMARY_MD} and {SUMMARY_PNG} to")
    if args.summary_only:
        md, png = write_summary(study, root)
        print(md.read_text())
        print(f"wrote {md}" + (f" and {png}" if png else ""))
        if args.results:
            _copy_results(root, Path(args.results))
        return 0
    if args.dry_run:
        runs = plan_runs(study, root, sets=args.set, threads=args.threads, only=args.only, seeds=args.seeds)
        rows = read_rows(root / ROWS_FILE)
        for run in runs:
            state = "finished" if _already_finished(run, rows, root) else "to run"
            delta = ", ".join(f"{k}={v}" for k, v in run.variation.delta.items()) or "(base)"
            print(f"{run.label:<32} {state:<9} {run.hash}  {delta}")
        return 0
    result = run_study(study, root, jobs=args.jobs, threads=args.threads, only=args.only, seeds=args.seeds,
                       sets=args.set)
    if result["status"] == "completed" and (root / SUMMARY_MD).is_file():
        print((root / SUMMARY_MD).read_text())
    if args.results and (root / ROWS_FILE).is_file():
        _copy_results(root, Path(args.results))
    return int(result["exit_code"])


def _copy_results(root: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in (ROWS_FILE, SUMMARY_MD, SUMMARY_PNG):
        if (root / name).is_file():
            shutil.copyfile(root / name, dest / name)
    print(f"copied {ROWS_FILE}, {SUMMARY_MD} and {SUMMARY_PNG} to {dest}")


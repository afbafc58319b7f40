"""``vanillanet ablate``: its options and what it does (run, ``--dry-run``, ``--summary-only``, ``--results``)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..util.errors import OutputError
from ..util.fileio import check_output_folder
from ..util.validation import value_type
from .rows import ROWS_FILE, read_rows
from .runs import already_finished, plan_runs, run_study
from .study import load_study
from .summary import SUMMARY_MD, SUMMARY_PNG, write_summary

__all__ = ["add_cli"]


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
            state = "finished" if already_finished(run, rows, root) else "to run"
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

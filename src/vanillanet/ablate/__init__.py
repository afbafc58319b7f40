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

The package: ``study`` (the file), ``rows`` (OUT/runs.jsonl), ``summary`` (table and chart), ``runs`` (planning
and running), ``command`` (the CLI).
"""

from __future__ import annotations

from .command import add_cli
from .rows import ROWS_FILE, read_rows
from .runs import Run, config_hash, plan_runs, run_study
from .study import Study, Variation, load_study
from .summary import SUMMARY_MD, SUMMARY_PNG, plot_summary, summarize, summary_markdown, write_summary

__all__ = ["ROWS_FILE", "SUMMARY_MD", "SUMMARY_PNG", "Run", "Study", "Variation", "add_cli", "config_hash",
           "load_study", "plan_runs", "plot_summary", "read_rows", "run_study", "summarize", "summary_markdown",
           "write_summary"]

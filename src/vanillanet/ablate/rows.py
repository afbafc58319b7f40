"""The study's record, OUT/runs.jsonl: one JSON row per finished run, read back with every value checked."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

from ..util.errors import DataError

__all__ = ["ROWS_FILE", "read_rows"]

ROWS_FILE = "runs.jsonl"
_FRACTIONS = ("test_top1", "best_top1", "deploy_top1", "deploy_agreement")
_SECONDS = ("wall_seconds", "cpu_seconds", "seconds")
_COUNTS = ("params_train", "params_deploy", "macs_train", "macs_deploy", "epochs", "steps", "img_size")


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


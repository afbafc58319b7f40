"""Markdown tables of `vanillanet bench` records, for docs/results.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vanillanet.bench import format_table


def markdown_table(records: list[dict[str, Any]]) -> str:
    """The records as a markdown table (``vanillanet.bench.format_table``)."""
    return format_table(records, markdown=True)


def fastest(records: list[dict[str, Any]], model: str, dtype: str, batch: int = 1) -> dict[str, Any]:
    """The fastest deploy-form inference record of ``model`` in ``dtype`` at ``batch`` (paper mode excluded)."""
    cands = [r for r in records if r["model"] == model and r["form"] == "deploy" and r["kind"] == "inference"
             and r["dtype"] == dtype and r["batch_size"] == batch and r["mode"] != "paper"]
    return min(cands, key=lambda r: r["median_ms"])


def write_results(out: str | Path, stem: str, records: list[dict], text: str) -> None:
    """Print the table text and write ``OUT/STEM.json`` (the records) and ``OUT/STEM.md`` (the text)."""
    print(text)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(records, indent=1))
    (out / f"{stem}.md").write_text(text + "\n")

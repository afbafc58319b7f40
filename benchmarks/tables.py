"""Markdown tables of `vanillanet bench` records, for the README."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per record; 'x paper' = images/s over the paper-mode images/s of the same model's deploy form."""
    paper = {r["model"]: r["images_per_s"] for r in records if r["mode"] == "paper" and r["form"] == "deploy"}
    rows = ["| model | form | mode | dtype | batch | median ms (min-max) | images/s | x paper | max rel. error |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        ratio = r["images_per_s"] / paper[r["model"]] if r["model"] in paper and r["kind"] == "inference" else None
        err = r["max_rel_err"]
        rows.append(f"| {r['model']} | {r['form']} | {r['mode']} | {r['dtype']} | {r['batch_size']} | "
                    f"{r['median_ms']:.2f} ({r['min_ms']:.2f}-{r['max_ms']:.2f}) | {r['images_per_s']:.1f} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}x'} | {'-' if err is None else f'{err:.1e}'} |")
    return "\n".join(rows)


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

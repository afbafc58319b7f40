"""The summary of a study: mean +- std over seeds, the difference to the reference with its Welch interval, the
markdown table (OUT/summary.md) and the chart (OUT/summary.png)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..util.errors import DataError
from ..util.fileio import write_text
from ..util.stats import T_QUANTILE_SOURCE, mean_std, welch_interval
from ..util.tables import render
from .rows import ROWS_FILE, read_rows
from .study import Study

__all__ = ["SUMMARY_MD", "SUMMARY_PNG", "plot_summary", "summarize", "summary_markdown", "write_summary"]

SUMMARY_MD, SUMMARY_PNG = "summary.md", "summary.png"


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

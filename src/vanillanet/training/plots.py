"""The training plot: loss, top-1, learning rate and act_learn over training, from ``metrics.jsonl``.

Reads the JSON lines that ``train.py`` writes: per-epoch rows (``epoch``; ``train_loss``, ``val_loss``, ``top1`` or
``val_top1``, optional ``ema_top1`` or ``ema: true`` when ``top1`` is the EMA model's, ``lr``, ``act_learn``) and
optional per-step rows (``"type": "step"`` or a ``step`` key without ``train_loss``; ``epoch`` may be fractional,
``loss``, ``lr``, ``act_learn``). Step rows, when present, draw the lr/act_learn curves and the train loss finely.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..util.errors import DataError

__all__ = ["plot_training", "read_metrics"]


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(epoch rows, step rows) of a metrics.jsonl file; blank or truncated last lines are ignored."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metrics file {path} does not exist; pass the metrics.jsonl of a training run")
    epochs, steps = [], []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # e.g. a line cut short by an interrupted run
        if not isinstance(row, dict) or "epoch" not in row:
            continue
        is_step = row.get("type") == "step" or (row.get("type") is None and "step" in row and "train_loss" not in row)
        (steps if is_step else epochs).append(row)
    return epochs, steps


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_training(metrics_jsonl: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """Write a 2x2 PNG (loss, top-1 %, lr, act_learn against epochs) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, steps = read_metrics(metrics_jsonl)
    if not epochs and not steps:
        raise DataError(f"{metrics_jsonl} holds no metrics rows; train for at least one step before plotting")
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    ax_loss, ax_top1, ax_lr, ax_act = axes.flat

    if steps:
        ax_loss.plot(*_series(steps, "loss"), color="tab:blue", alpha=0.35, lw=0.8, label="train (step)")
    ax_loss.plot(*_series(epochs, "train_loss"), "o-", color="tab:blue", ms=3, label="train (epoch mean)")
    ax_loss.plot(*_series(epochs, "val_loss"), "s-", color="tab:orange", ms=3, label="val")
    ax_loss.set(title="loss", ylabel="loss")

    top1_key = "val_top1" if any("val_top1" in r for r in epochs) else "top1"
    uses_ema = any(r.get("ema") for r in epochs)
    x, y = _series(epochs, top1_key)
    ax_top1.plot(x, [100 * v for v in y], "o-", ms=3, color="tab:green", label="val (EMA)" if uses_ema else "val")
    x, y = _series(epochs, "ema_top1")
    if x:
        ax_top1.plot(x, [100 * v for v in y], "s-", ms=3, color="tab:purple", label="val (EMA)")
    best = max((v for r in epochs for k in (top1_key, "ema_top1") if (v := r.get(k)) is not None), default=None)
    ax_top1.set(title="top-1" + (f" (best {100 * best:.2f}%)" if best is not None else ""), ylabel="top-1 %")

    source = steps or epochs
    ax_lr.plot(*_series(source, "lr"), color="tab:red")
    ax_lr.set(title="learning rate", ylabel="lr")
    ax_act.plot(*_series(source, "act_learn"), color="tab:brown")
    ax_act.set(title="act_learn (0 = ReLU, 1 = linear)", ylabel="act_learn", ylim=(-0.05, 1.05))

    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png

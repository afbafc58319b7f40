"""The training plot is written from metrics.jsonl rows, with or without step rows and EMA columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vanillanet.training.plots import plot_training, read_metrics
from vanillanet.util.errors import DataError


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 3, "trunc')  # last line cut short
    return path


def _rows(with_steps: bool, top1_key: str) -> list[dict]:
    rows = []
    for e in range(1, 4):
        if with_steps:
            rows += [dict(type="step", step=10 * e + s, epoch=e - 1 + s / 10, loss=2.0 / e, lr=1e-3 * s,
                          act_learn=min(1.0, (e - 1 + s / 10) / 2)) for s in range(1, 11)]
        rows.append({"type": "epoch", "epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, top1_key: 0.5 + e / 10,
                     "ema_top1": 0.45 + e / 10, "lr": 1e-3, "act_learn": min(1.0, e / 2), "ema": False})
    return rows


@pytest.mark.parametrize(("with_steps", "top1_key"), [(True, "top1"), (False, "val_top1")])
def test_plot_training_writes_png(tmp_path: Path, with_steps: bool, top1_key: str) -> None:
    metrics = _write(tmp_path / "metrics.jsonl", _rows(with_steps, top1_key))
    epochs, steps = read_metrics(metrics)
    assert len(epochs) == 3 and len(steps) == (30 if with_steps else 0)
    out = plot_training(metrics, tmp_path / "plots" / "training.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_training_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        plot_training(tmp_path / "missing.jsonl", tmp_path / "x.png")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no metrics rows"):
        plot_training(tmp_path / "empty.jsonl", tmp_path / "x.png")

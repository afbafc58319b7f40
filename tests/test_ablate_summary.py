"""ablate/summary.py: the summary of a study on known numbers (mean +- std, the Welch interval against the reference,
the markdown table)."""

from __future__ import annotations

import math

import pytest
from conftest import ablation_rows, ablation_study

from vanillanet.ablate import load_study, summarize, summary_markdown
from vanillanet.util.stats import t_quantile_own


def test_summarize_known_numbers(tmp_path):
    study = load_study(ablation_study(tmp_path))
    rows = ablation_rows({"base": [0.90, 0.91, 0.92], "relu": [0.80, 0.81, 0.82]})
    rows.append(dict(rows[0], test_top1=0.5, variation="gone"))  # rows of variations no longer in the study: ignored
    base, relu = summarize(rows, study)
    assert (base["n"], base["mean"], base["std"]) == (3, pytest.approx(91.0), pytest.approx(1.0))
    assert base["diff"] is None and base["deploy_mean"] == pytest.approx(91.0) and base["agreement_min"] == 1.0
    half = t_quantile_own(0.975, 4) * math.sqrt(2 / 3)  # both sides: std 1 pp, n 3 -> df 4
    assert relu["diff"] == pytest.approx(-10.0) and relu["df"] == pytest.approx(4.0)
    assert (relu["low"], relu["high"]) == (pytest.approx(-10 - half), pytest.approx(-10 + half))
    assert relu["significant"] is True and relu["deploy_mean"] is None and relu["agreement_min"] is None
    md = summary_markdown([base, relu], study)
    assert "| base | tricks | 3 | 91.00 +- 1.00 | reference | - | 91.00 | 100.00 % |" in md
    assert f"| relu | tricks | 3 | 81.00 +- 1.00 | -10.00 [{-10 - half:+.2f}, {-10 + half:+.2f}] | yes | n/a |" in md
    assert "76.36" in md and "Welch" in md and "`relu`: plain ReLU" in md

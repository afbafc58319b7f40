"""The benchmark scripts run end to end (tiny models, CPU): cpu_speed.py quickly, gpu_check.py as --dry-run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_cpu_speed_script(tmp_path, capsys):
    import cpu_speed

    assert cpu_speed.main(["--img-size", "32", "--width-mult", "0.03125", "--repeats", "1", "--round-s", "0.01",
                           "--modes", "paper,channels_last", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "cpu_speed.json").read_text())
    assert {r["model"] for r in records} == {"vanillanet_5", "resnet18", "resnet50"}
    assert {r["form"] for r in records if r["model"] == "vanillanet_5"} == {"deploy", "train"}
    out = capsys.readouterr().out
    assert "Fastest fp32 path for vanillanet_5" in out and "| x paper |" in out


def test_gpu_check_dry_run_quick(tmp_path, capsys, monkeypatch):
    """The GPU check's machinery on the CPU (sections, budget, outputs) with plain modes; the slow test below runs
    every section, the fused mode in Triton's interpreter included."""
    import gpu_check

    monkeypatch.setattr(gpu_check, "_modes", lambda model, plan: "paper,channels_last")
    assert gpu_check.main(["--dry-run", "--skip", "pytest,train", "--models", "vanillanet_5", "--batch-size", "1",
                           "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {(r["mode"], r["batch_size"]) for r in records} == {("paper", 1), ("channels_last", 1)}
    assert (tmp_path / "gpu_check.png").is_file() and (tmp_path / "gpu_check_tuning.json").is_file()
    assert "| vanillanet_5 | deploy | channels_last |" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_check_dry_run_every_section(tmp_path):
    import gpu_check

    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {r["model"] for r in records} == {"vanillanet_5", "resnet50"}
    assert {r["mode"] for r in records if r["model"] == "vanillanet_5" and r["kind"] == "inference"} == {
        "paper", "channels_last", "fused"}
    assert all(r["max_rel_err"] < 1e-4 for r in records if r["mode"] == "fused")
    assert {r["mode"] for r in records if r["kind"] == "train"} == {"train-fp32", "train-amp"}
    assert "tests collected" in (tmp_path / "gpu_check_pytest.log").read_text()
    assert "GPU tests: exit 0" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_check_without_gpu_says_so():
    import gpu_check

    assert gpu_check.main(["--out", "/nonexistent"]) == 2

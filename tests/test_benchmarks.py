"""The benchmark scripts run end to end (tiny models, CPU): cpu_speed.py, cpu_fastpath.py and int8_options.py
quickly, gpu_speed.py as --dry-run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_cpu_speed_script(tmp_path, capsys):
    import cpu_speed

    assert cpu_speed.main(["--img-size", "32", "--width-mult", "0.03125", "--repeats", "1", "--round-s", "0.01",
                           "--modes", "paper,channels_last,bf16", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "cpu_speed.json").read_text())
    assert {r["model"] for r in records} == {"vanillanet_5", "resnet18", "resnet50"}
    assert {r["form"] for r in records if r["model"] == "vanillanet_5"} == {"deploy", "train"}
    out = capsys.readouterr().out
    assert "Fastest fp32 path for vanillanet_5" in out and "| x paper |" in out


def test_gpu_speed_dry_run(tmp_path, capsys):
    import gpu_speed

    assert gpu_speed.main(["--dry-run", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "gpu_speed.json").read_text())
    assert {r["model"] for r in records} == {"vanillanet_5", "vanillanet_9", "vanillanet_13", "resnet50"}
    assert {r["mode"] for r in records if r["kind"] == "train"} == {"train-fp32", "train-amp"}
    assert "the paper protocol (target 5x)" in capsys.readouterr().out


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_speed_without_gpu_says_so():
    import gpu_speed

    assert gpu_speed.main(["--out", "/nonexistent"]) == 2


def test_cpu_fastpath_script(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    import cpu_fastpath

    import vanillanet.inference as inf

    monkeypatch.setattr(inf, "_available", lambda device, dtype: ["eager", "onnxruntime"])  # no compile: quick
    monkeypatch.setattr(inf, "AUTO_ROUND_S", 0.01)
    assert cpu_fastpath.main(["--img-size", "32", "--width-mult", "0.0625", "--rounds", "1", "--round-s", "0.01",
                              "--backends", "int8", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "cpu_fastpath.json").read_text())
    paths = [r["path"] for r in records if "path" in r]
    assert paths[0].startswith("plain onnxruntime session") and "fast_inference(backend='int8')" in paths
    assert any(p.startswith("fast_inference(backend='auto') -> ") for p in paths)
    assert records[-1]["auto_picks"] and "| path |" in capsys.readouterr().out


def test_int8_options_script_speed_part(tmp_path):
    pytest.importorskip("onnxruntime")
    import int8_options

    assert int8_options.main(["--img-size", "32", "--width-mult", "0.0625", "--rounds", "1", "--round-s", "0.01",
                              "--out", str(tmp_path)]) == 0
    rows = (tmp_path / "int8_options.md").read_text().splitlines()
    assert sum(r.startswith("| ") for r in rows) == 1 + 3 + len(int8_options.OPTIONS) + 2
    assert json.loads((tmp_path / "int8_options.json").read_text())["rounds_ms"]["fp32 (all)"]

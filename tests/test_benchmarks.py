"""The benchmark scripts run end to end (tiny models, CPU): cpu_speed.py, cpu_fastpath.py and int8_options.py
quickly, gpu_check.py as --dry-run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

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


def test_cpu_fastpath_script(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    import cpu_fastpath

    import vanillanet.deploy.inference as inf

    monkeypatch.setattr(inf, "auto_candidates", lambda device, dtype: ["eager", "onnxruntime"])  # no compile: quick
    assert cpu_fastpath.main(["--img-size", "32", "--width-mult", "0.0625", "--rounds", "1", "--round-s", "0.01",
                              "--batches", "1,2", "--backends", "openvino", "--bf16-backends", "openvino",
                              "--int8-backends", "int8", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "cpu_fastpath.json").read_text())
    rows = [r for r in records if "path" in r]
    assert {r["batch_size"] for r in rows} == {1, 2}
    paths = [r["path"] for r in rows if r["batch_size"] == 1]
    assert paths[:4] == [cpu_fastpath.PEER_ORT, cpu_fastpath.PEER_OV32, cpu_fastpath.PEER_OV,
                         cpu_fastpath.PEER_OV_COPY]
    assert "ours: fast_inference(backend='openvino')" in paths and "ours: fast_inference(backend='int8')" in paths
    assert any(p.startswith("ours: fast_inference(backend='auto') -> ") for p in paths)
    fp32 = [r for r in rows if r["kind"] == "fp32"]
    assert all(r["max_rel_err"] < 1e-4 for r in fp32)  # the peers' export of the original's module equals ours
    assert "cpu_flags" in records[-1] and records[-1]["openvino"]
    text = capsys.readouterr().out
    assert "| batch | path |" in text and "batch 1, fp32: our fastest" in text and "batch 2, int8" in text
    assert "batch 2, noise floor: two copies of the same OpenVINO model" in text


def test_int8_options_script(tmp_path):
    pytest.importorskip("onnxruntime")
    import int8_options
    from conftest import build_variant

    from vanillanet.model.checkpoint_files import save_weights

    torch.manual_seed(0)
    ckpt = save_weights(build_variant("vanillanet_5", num_classes=10, in_chans=1).eval(), tmp_path / "d.safetensors",
                        extra_meta={"img_size": 32})
    assert int8_options.main(["--img-size", "32", "--width-mult", "0.0625", "--rounds", "1", "--round-s", "0.01",
                              "--checkpoint", str(ckpt), "--data", "digits", "--calib-images", "16",
                              "--out", str(tmp_path)]) == 0
    rows = (tmp_path / "int8_options.md").read_text().splitlines()
    assert sum(r.startswith("| ") for r in rows) == 1 + 3 + len(int8_options.OPTIONS) + 2
    report = json.loads((tmp_path / "int8_options.json").read_text())
    assert report["rounds_ms"]["fp32 (all)"]
    assert set(report["accuracy"]) == {"fp32", *int8_options.OPTIONS}
    assert all(a["images"] == report["accuracy"]["fp32"]["images"] > 0 for a in report["accuracy"].values())


def test_bf16_accuracy_script(tmp_path, capsys, monkeypatch):
    """The accuracy gate on real images (sklearn's digits) with a small seeded model: the reference agrees with
    itself, each approximate path gets top-1, agreement and the gate's verdict computed from its predictions."""
    pytest.importorskip("onnxruntime")
    import bf16_accuracy
    from conftest import build_variant, give_realistic_bn_stats

    from vanillanet.model.checkpoint_files import save_weights

    torch.manual_seed(0)
    model = build_variant("vanillanet_5", width_mult=1 / 32, num_classes=10, in_chans=1)
    give_realistic_bn_stats(model, (4, 1, 32, 32))
    ckpt = save_weights(model.eval(), tmp_path / "d.safetensors", extra_meta={"img_size": 32})
    monkeypatch.setattr(bf16_accuracy, "dtype_supported", lambda device, dtype: True)  # eager bf16 runs anywhere
    real_fast = bf16_accuracy.fast_inference
    monkeypatch.setattr(bf16_accuracy, "fast_inference",  # compile is slow to build: the test swaps in eager
                        lambda m, backend, **kw: real_fast(m, backend=backend.replace("compile", "eager"), **kw))
    assert bf16_accuracy.main(["--checkpoint", str(ckpt), "--data", "digits", "--calib-images", "32",
                               "--batch-size", "100", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "bf16_accuracy.json").read_text())
    ref = records[0]
    assert ref["path"].startswith("fp32") and ref["agreement"] == 100 and ref["top1_vs_fp32"] == 0
    assert {r["computes_in"] for r in records} >= {"fp32", "bf16", "int8"} and ref["images"] > 300
    for r in records:
        assert 0 <= r["top1"] <= 100 and 0 <= r["agreement"] <= 100 and r["images"] == ref["images"]
        assert r["gate"] == (r["agreement"] >= 99.5 and abs(r["top1_vs_fp32"]) <= 0.2)
    bf16 = [r for r in records if r["computes_in"] == "bf16"]
    assert bf16 and all(r["agreement"] > 90 for r in bf16)
    assert "identical predictions" in capsys.readouterr().out


def test_gpu_check_dry_run_quick(tmp_path, capsys, monkeypatch):
    """The GPU check's machinery on the CPU (sections, budget, outputs) with plain modes; the slow test below runs
    every section, the fused mode in Triton's interpreter included."""
    import gpu_check

    monkeypatch.setattr(gpu_check, "_modes", lambda model, plan: "paper,channels_last")
    assert gpu_check.main(["--dry-run", "--skip", "pytest,train", "--models", "vanillanet_5", "--batch-size", "1",
                           "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "gpu_check.json").read_text())
    loader = [r for r in records if r["kind"] == "loader"]
    records = [r for r in records if r["kind"] != "loader"]
    assert {(r["mode"], r["batch_size"]) for r in records} == {("paper", 1), ("channels_last", 1)}
    assert len(loader) == 1 and loader[0]["decoded_img_per_s"] > 0 and loader[0]["train_img_per_s_gpu_decode"] > 0
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
    assert all(r["max_rel_err"] < 1e-4 for r in records if r.get("mode") == "fused")
    assert [r["kind"] for r in records].count("loader") == 1
    assert {r["mode"] for r in records if r["kind"] == "train"} == {"train-fp32", "train-amp"}
    assert "tests collected" in (tmp_path / "gpu_check_pytest.log").read_text()
    assert "GPU tests: exit 0" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_check_without_gpu_says_so():
    import gpu_check

    assert gpu_check.main(["--out", "/nonexistent"]) == 2


def test_loader_benchmark_script(tmp_path):
    """benchmarks/loader.py end to end on a few images: one row per path, the ratios against path a, the record."""
    import loader

    rows_path = tmp_path / "rows.json"
    assert loader.main(["--images", "12", "--rounds", "1", "--batch-size", "4", "--workers", "1", "--cache",
                        str(tmp_path / "cache"), "--json", str(rows_path), "--out", str(tmp_path)]) == 0
    rows = {r["path"]: r for r in json.loads(rows_path.read_text())}
    assert set(rows) == {"a", "b", "b+", "b0", "c", "c+", "c0", "d"} and rows["a"]["x_a"] == 1.0
    for key in ("a", "b", "b+", "b0"):
        assert rows[key]["images"] == 12 and rows[key]["img_per_cpu_s"] > 0
    assert rows["b"]["target_x_a"] == 2.0 and "met" in rows["b"] and "met" in rows["b0"]
    record = json.loads((tmp_path / "loader.json").read_text())
    assert record["machine"]["cpu"] and record["settings"]["tail_images"] == 1
    assert "| b: ours, folder" in (tmp_path / "loader.md").read_text()


def test_loader_benchmark_gpu_path_on_the_cpu(tmp_path):
    """Path d's loader (workers send bytes + draws, the batch decoded where it is taken) runs its epoch; on the CPU
    here, as it runs on CUDA in the full benchmark."""
    import loader

    loader.make_folder(tmp_path / "f", 8)
    res = loader.run_epoch(lambda: loader.gpu_loader(str(tmp_path / "f"), 4, 0, device="cpu"))
    assert res["images"] == 8 and res["cpu_s"] > 0 and res["gpu_img_s"] > 0

"""vanillanet bench: JSON schema, every CPU mode runs, baselines and training records, errors; GPU modes on CUDA."""

from __future__ import annotations

import json
import re

import pytest
import torch

from vanillanet.bench import BenchConfig, format_table, run_bench
from vanillanet.cli import main
from vanillanet.deploy.backends import dtype_supported, parse_modes
from vanillanet.util.errors import ConfigError

FIELDS = {"model", "form", "mode", "dtype", "batch_size", "device", "threads", "median_ms", "min_ms", "max_ms",
          "images_per_s", "max_rel_err"}
CUDA = torch.cuda.is_available()
TINY = dict(width_mult=1 / 32, img_size=32, repeats=2, iters=1, num_classes=10)


def check_records(records):
    for r in records:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["images_per_s"] == pytest.approx(r["batch_size"] * 1e3 / r["median_ms"])
        if r["mode"] in ("paper", "nchw") or r["kind"] == "train":
            assert r["max_rel_err"] is None
        else:
            deep_random = r["model"].startswith("resnet")  # 50 random layers: fp32 algorithms differ by ~1e-4
            assert r["max_rel_err"] < (1e-3 if deep_random else 1e-4) if r["dtype"] == "fp32" else 5e-2


def test_cli_every_cpu_mode_json_table_and_plot(tmp_path, capsys):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    cpu = torch.device("cpu")
    half = [m for m, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)) if dtype_supported(cpu, dt)]
    modes = ",".join(["paper", "nchw", "channels_last", *half, "compile", "onnxruntime"])
    assert main(["bench", "--model", "vanillanet_5", "--width-mult", "0.03125", "--img-size", "32", "--batch-size",
                 "2", "--modes", modes, "--repeats", "2", "--iters", "1", "--threads", "1", "--json", str(out),
                 "--plot", str(png)]) == 0
    records = json.loads(out.read_text())
    check_records(records)
    seen = {(r["mode"], r["batch_size"]) for r in records}
    assert ("paper", 1) in seen and ("paper", 2) not in seen  # the paper protocol is batch 1 only
    assert {m for m, _ in seen} == set(modes.split(","))
    assert all(r["threads"] == 1 and r["device"] == "cpu" and r["form"] == "deploy" for r in records)
    assert png.stat().st_size > 1000
    table = capsys.readouterr().out
    assert "x paper" in table and "onnxruntime" in table


def test_baselines_and_training_records():
    records = run_bench(BenchConfig(models=["vanillanet_5"], modes="paper,channels_last", baselines=True,
                                    train=True, train_batch_size=2, train_modes=("train-fp32", "train-amp"),
                                    **TINY), log=lambda s: None)
    check_records(records)
    infer = {(r["model"], r["form"]) for r in records if r["kind"] == "inference"}
    assert infer == {("vanillanet_5", "deploy"), ("vanillanet_5", "train"), ("resnet50", "deploy"),
                     ("resnet18", "deploy")}
    train = [r for r in records if r["kind"] == "train"]
    assert {(r["model"], r["mode"]) for r in train} == {(m, t) for m in ("vanillanet_5", "resnet50", "resnet18")
                                                         for t in ("train-fp32", "train-amp")}
    deploy, train_form = (next(r for r in records if r["model"] == "vanillanet_5" and r["form"] == f
                               and r["mode"] == "paper") for f in ("deploy", "train"))
    assert deploy["params"] < train_form["params"] and deploy["macs"] < train_form["macs"]
    assert "resnet50" in format_table(records)


@pytest.mark.slow
def test_compiled_training_step():
    """train-best compiles forward and backward (about a minute on 2 CPU cores)."""
    records = run_bench(BenchConfig(modes="paper", train=True, train_batch_size=2, train_modes=("train-best",),
                                    **TINY), log=lambda s: None)
    check_records(records)
    assert [r["mode"] for r in records if r["kind"] == "train"] == ["train-best"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch-size", "4096", "--img-size", "4096"], r"--batch-size/--train-batch-size and --img-size \(4096 x 3 x "
                                                     r"4096 x 4096\) make a 824.6 GB input batch, above the 4.3 GB"),
    (["--train", "--train-batch-size", "2048", "--img-size", "2048"], "make a 103.1 GB input batch"),
    (["--iters", "1000000000000"], "error: iters must be at most 100000, got 1000000000000"),
    (["--repeats", "100000"], "error: repeats must be at most 1000, got 100000"),
])
def test_cli_sizes_and_counts_refused_before_any_work(capsys, monkeypatch, argv, message):
    import vanillanet.bench as bench

    monkeypatch.setattr(bench, "create_model", lambda *a, **k: pytest.fail("built a model before refusing"))
    try:
        code = main(["bench", *argv, "--modes", "paper"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert bench.check_batch_limit(4096, 4096, allow_large=True) is None  # --allow-large lifts it


def test_bad_modes_and_sizes():
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown mode"):
        parse_modes("paper,turbo", cpu)
    with pytest.raises(ConfigError, match="runs on cuda only"):
        parse_modes("cudagraph", cpu)
    with pytest.raises(ConfigError, match="dtype suffix"):
        parse_modes("compile:int4", cpu)
    with pytest.raises(ConfigError, match="runs in fp32 only"):
        parse_modes("onnxruntime:fp16", cpu)
    assert [m.label for m in parse_modes("compile:fp32,compile,paper,paper", cpu)] == ["compile:fp32", "compile",
                                                                                       "paper"]
    if not dtype_supported(cpu, torch.bfloat16):
        with pytest.raises(ConfigError, match="needs bf16 support"):
            parse_modes("bf16", cpu)
    with pytest.raises(ConfigError, match="too small"):
        run_bench(BenchConfig(modes="paper", **{**TINY, "img_size": 16}), log=lambda s: None)
    with pytest.raises(ConfigError, match="unknown model"):
        run_bench(BenchConfig(models=["vanillanet_99"], modes="paper", **TINY), log=lambda s: None)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_modes():
    records = run_bench(BenchConfig(modes="best", batch_size=4, device="cuda", **TINY), log=lambda s: None)
    check_records(records)
    assert {"cudagraph", "compile", "fp16"} <= {r["mode"] for r in records}

"""int8: static quantization of a small trained model (agreement with fp32), the one-run
CLI report and its refusal, the int8 backend of fast_inference (never chosen by auto, not offered by eval/predict)
and bench's int8 mode."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import build_variant

from vanillanet.bench import BenchConfig, run_bench
from vanillanet.cli import main
from vanillanet.data.sources import build_dataset, dataset_defaults
from vanillanet.data.transforms import Preprocess
from vanillanet.deploy import int8 as q
from vanillanet.deploy.backends import BACKENDS, EXACT_BACKENDS, best_modes
from vanillanet.deploy.inference import auto_candidates, fast_inference
from vanillanet.deploy.onnx_graph import onnx_bytes, onnx_session
from vanillanet.model.checkpoint_files import save_weights
from vanillanet.model.reparam import reparameterize_model
from vanillanet.util.errors import ConfigError

pytest.importorskip("onnxruntime")
IMG = 32


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = dataset_defaults("digits")
    tf = Preprocess(IMG, d.crop_pct, d.mean, d.std).transform(1)
    ds = build_dataset("digits", split, tf, in_chans=1)
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor(ds.targets)


@pytest.fixture(scope="module")
def trained():
    """A width-1/16 vanillanet_5 deploy form fitted to scikit-learn's digits in seconds: random layers whose BN
    statistics come from the digits (so activations vary over their whole range, as after training), and a head
    fitted by ridge regression (~95 % top-1)."""
    torch.manual_seed(0)
    model = build_variant("vanillanet_5", num_classes=10, in_chans=1, act_num=2)
    x, y = _digits("train")
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.momentum = None  # cumulative average: statistics of the digits themselves, as training gives
        model.train()
        for batch in x.split(256):
            model(batch)
    model = reparameterize_model(model.eval())
    with torch.no_grad():
        f = model.forward_features(x).mean((2, 3)).double()
        a = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)
        gram = a.T @ a  # ridge regression onto +-5 targets; the ridge keeps the weights' range moderate
        w = torch.linalg.solve(gram + 0.1 * gram.diagonal().mean() * torch.eye(len(gram), dtype=f.dtype),
                               a.T @ (torch.nn.functional.one_hot(y, 10).double() * 10 - 5))
        model.cls[2].weight.copy_(w[:-1].T[:, :, None, None])
        model.cls[2].bias.copy_(w[-1])
    return model


@pytest.fixture(scope="module")
def fp32(trained):
    return onnx_bytes(trained, IMG)


def _run(data: bytes, x: torch.Tensor) -> np.ndarray:
    sess = onnx_session(data)
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_int8_agrees_with_fp32_on_real_images(trained, fp32, fmt):
    x_cal, _ = _digits("train")
    x, y = _digits("val")
    int8 = q.quantize_bytes(fp32, x_cal[:256].split(32), q.Int8Config(format=fmt))
    proto = onnx.load_from_string(int8)
    ops = [n.op_type for n in proto.graph.node]
    if fmt == "qoperator":  # every conv in int8, the pools on uint8 (no dequantize in front of them)
        assert ops.count("QLinearConv") == 9 and "Conv" not in ops
        producers = {o: n.op_type for n in proto.graph.node for o in n.output}
        assert all(producers[n.input[0]] == "QLinearConv" for n in proto.graph.node if n.op_type == "MaxPool")
    assert len(int8) < 0.5 * len(fp32)
    p32, p8 = _run(fp32, x).argmax(1), _run(int8, x).argmax(1)
    top32, top8 = (p32 == y.numpy()).mean(), (p8 == y.numpy()).mean()
    assert top32 > 0.85
    assert (p32 == p8).mean() >= 0.95 and top8 >= top32 - 0.03


def test_excluded_layers_stay_fp32(fp32):
    x_cal, _ = _digits("train")
    int8 = q.quantize_bytes(fp32, [x_cal[:32]], q.Int8Config(exclude=("stem", "head", "depthwise")))
    ops = [n.op_type for n in onnx.load_from_string(int8).graph.node]
    assert ops.count("Conv") == 1 + 4 + 1 and ops.count("QLinearConv") == 3  # stem, 4 depthwise, head in fp32


def test_config_and_calibration_errors(fp32, monkeypatch):
    for bad in (dict(format="int4"), dict(calibration="mse"), dict(exclude=("pool",))):
        with pytest.raises(ConfigError, match="must be one of"):
            q.Int8Config(**bad)
    with pytest.raises(ConfigError, match="no calibration images"):
        q.quantize_bytes(fp32, [])
    monkeypatch.setattr(q, "HISTOGRAM_MEMORY", 1000)
    with pytest.raises(ConfigError, match="calibration images or --calibration minmax"):
        q.quantize_bytes(fp32, [torch.randn(16, 1, IMG, IMG)], q.Int8Config(calibration="entropy"))


def test_cli_one_run_report_and_refusal(trained, tmp_path, capsys, monkeypatch):
    ckpt = save_weights(trained, tmp_path / "digits.safetensors", class_names=[str(d) for d in range(10)],
                        extra_meta={"img_size": IMG})
    out, report = tmp_path / "m_int8.onnx", tmp_path / "r.json"
    args = ["quantize", "--checkpoint", str(ckpt), "--data", "digits", "--calib-images", "64", "--eval-images",
            "200", "--batch-size", "50", "--workers", "0", "--threads", "2", "--rounds", "2", "--no-progress"]
    assert main([*args, "--output", str(out), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "fp32 onnxruntime" in text and "int8 onnxruntime" in text and f"wrote {out}" in text
    r = json.loads(report.read_text())
    assert r["eval_images"] == 200 and r["calib_images"] == 64 and r["output"] == str(out)
    assert r["fp32_top1"] > 80 and abs(r["drop"]) <= 3 and r["agreement"] >= 90
    assert set(r["fp32_ms"]) == set(r["int8_ms"]) == {"1", "50"}
    assert all(v > 0 for v in [*r["fp32_ms"].values(), *r["int8_ms"].values()])
    assert len(_run(out.read_bytes(), torch.zeros(3, 1, IMG, IMG))) == 3  # a working int8 model, any batch size
    import vanillanet.quantize as quantize

    def worse_int8(*a, **k):  # int8 made 50 points worse than it is: beyond --max-drop, the file must not appear
        return {**(res := real_evaluate(*a, **k)), "deploy_top1": res["deploy_top1"] - 0.5}

    real_evaluate = quantize.evaluate
    monkeypatch.setattr(quantize, "evaluate", worse_int8)
    refused = tmp_path / "refused.onnx"
    assert main([*args, "--output", str(refused)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was not written" in err and "--max-drop" in err
    assert not refused.exists() and not list(tmp_path.glob(".refused*"))
    before = ckpt.read_bytes()
    assert main([*args, "--output", str(ckpt)]) == 2  # never an output onto an input (nor a non-ONNX name)
    assert "must end in .onnx" in capsys.readouterr().err and ckpt.read_bytes() == before
    with pytest.raises(SystemExit, match="^2$") as bad:  # flags are checked like config keys
        main([*args, "--output", str(out), "--calib-images", "0"])
    assert bad.value.code == 2 and "--calib-images: must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--output", "OUT/x.pth"], r"--output OUT/x.pth must end in .onnx \(it says what the file holds\); e.g. x.onnx"),
    (["--output", "OUT/m.onnx", "--json", "OUT"], "--json OUT would replace a folder that is not JSON"),
    (["--output", "OUT/m.onnx", "--json", "OUT/new/"], "--json OUT/new/ is a folder; give a file name"),
    (["--output", "OUT/m.onnx", "--json", "OUT/FILE/r.json"], r"--json: a file is in the way of the folder "
                                                               r"OUT/FILE \(OUT/FILE is a file\)"),
    (["--output", "OUT/FILE/m.onnx"], "--output: a file is in the way of the folder OUT/FILE"),
    (["--output", "OUT/m.onnx", "--max-drop", "-1"], "argument --max-drop: must be at least 0, got -1"),
    (["--output", "OUT/m.onnx", "--max-drop", "nan"], "argument --max-drop: needs a finite number, got 'nan'"),
])
def test_cli_outputs_and_limits_refused_before_any_work(tmp_path, capsys, monkeypatch, extra, message):
    """Issue 17, findings 6 and 7: refused before the model is even read, so no .onnx is ever written."""
    import re

    import vanillanet.quantize as quantize

    monkeypatch.setattr(quantize, "create_model", lambda *a, **k: pytest.fail("work started before the refusal"))
    (tmp_path / "FILE").write_text("a file")
    argv = ["quantize", "--checkpoint", str(tmp_path / "c.safetensors"), "--data", "digits",
            *(a.replace("OUT", str(tmp_path)) for a in extra)]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(message.replace("OUT", re.escape(str(tmp_path))), err), err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.pth"))


def test_quantize_onnx_checks_its_arguments_first(trained, tmp_path):
    from vanillanet.quantize import quantize_onnx

    for kwargs, message in [({"max_drop": -1}, r"max_drop \(--max-drop\) must be a number of top-1 points in "
                                               r"\[0, 100\], got -1"),
                            ({"output": tmp_path / "x.pth"}, "output .*x.pth must end in .onnx"),
                            ({"rounds": 0}, "rounds must be an integer of at least 1, got 0")]:
        with pytest.raises(ValueError, match=message):
            quantize_onnx(trained, iter(()), **{"output": tmp_path / "m.onnx", **kwargs},
                          eval_batches=iter(()), img_size=IMG)
    assert not list(tmp_path.iterdir())


def test_fast_inference_int8_is_opt_in(trained):
    fast = fast_inference(trained, batch_size=2, image_size=IMG, backend="int8")
    x, _ = _digits("val")
    out = fast(x[:40])  # any batch size runs in the int8 session
    assert fast.backend == "int8" and out.shape == (40, 10) and out.dtype == torch.float32
    assert 0 < fast.max_rel_err <= 1.0  # calibrated on noise: approximate, but not broken
    for device, dtype in (("cpu", torch.float32), ("cpu", torch.bfloat16), ("cuda", torch.float16)):
        assert "int8" not in auto_candidates(torch.device(device), dtype)
    assert "int8" in BACKENDS and "int8" not in EXACT_BACKENDS and "int8" not in best_modes(torch.device("cpu"))
    with pytest.raises(ConfigError, match="runs in fp32 only"):
        fast_inference(trained, dtype=torch.bfloat16, image_size=IMG, backend="int8")
    # eval and predict do not offer it: calibrated on noise, its top-1 means nothing
    with pytest.raises(SystemExit, match="^2$"):
        main(["eval", "--checkpoint", "x.safetensors", "--data", "digits", "--backend", "int8"])
    used: list[int] = []

    def real_images():  # calibration batches reach the quantizer
        for batch in x[:64].split(32):
            used.append(len(batch))
            yield batch

    calibrated = fast_inference(trained, batch_size=2, image_size=IMG, backend="int8", calibration=real_images())
    assert used == [32, 32] and (calibrated(x[:40]).argmax(1) == out.argmax(1)).float().mean() >= 0.9


def test_bench_int8_mode():
    records = run_bench(BenchConfig(models=("vanillanet_5",), modes="onnxruntime,int8", img_size=IMG, repeats=1,
                                    round_s=0.01, width_mult=1 / 16, num_classes=10, threads=2), log=lambda s: None)
    int8 = next(r for r in records if r["mode"] == "int8")
    assert int8["backend"] == "int8" and int8["dtype"] == "int8" and int8["median_ms"] > 0
    assert not int8["channels_last"]  # onnxruntime paths take NCHW as a user passes it
    assert 0 < int8["max_rel_err"] < float("inf")

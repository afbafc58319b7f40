"""ONNX / TorchScript export: parity in onnxruntime for every variant, refusal rules, the CLI."""

from __future__ import annotations

import pytest
import torch
from conftest import build_variant, give_realistic_bn_stats
from torch import nn

from vanillanet.cli import main
from vanillanet.deploy.onnx_graph import StaticAdaptiveMaxPool2d, onnx_session
from vanillanet.export import export_onnx, export_torchscript
from vanillanet.model.variants import VARIANTS
from vanillanet.util.errors import ConversionError

pytest.importorskip("onnxruntime")


# The default (dynamo) exporter for the plain-pooling and the adaptive-pooling designs; the faster legacy exporter
# for the other depths (same graph structure), to keep the suite quick.
DYNAMO = ("vanillanet_5", "vanillanet_13_x1_5_ada_pool")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_onnx_parity_every_variant(name, tmp_path, seeded):
    """Real depth, strides and pooling of each variant at 1/32 width, 48 px; batch axis dynamic (1 and 3 checked)."""
    model = build_variant(name, width_mult=1 / 32, num_classes=7)
    give_realistic_bn_stats(model, (4, 3, 48, 48))
    out = tmp_path / f"{name}.onnx"
    res = export_onnx(model.eval(), out, img_size=48, exporter="dynamo" if name in DYNAMO else "legacy")
    assert out.is_file() and res.max_rel_err < 1e-4
    sess = onnx_session(out)
    x = torch.randn(5, 3, 48, 48)
    got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        ref = model(x)
    assert got.shape == (5, 7)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4
    assert not any(n.startswith("stem1") for n in [i.name for i in sess.get_inputs()])


@pytest.mark.parametrize("n_in,n_out", [(75, 38), (38, 19), (19, 10), (11, 38), (7, 7), (8, 3)])
def test_static_adaptive_max_pool_is_exact(n_in, n_out):
    x = torch.randn(2, 3, n_in, n_in + 1)
    ref = nn.AdaptiveMaxPool2d(n_out)(x)
    assert torch.equal(StaticAdaptiveMaxPool2d((n_in, n_in + 1), (n_out, n_out))(x), ref)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
def test_legacy_exporter_and_torchscript(tmp_path, seeded):
    """Scripted files take any input size; traced ones the exported size (the ada_pool variant's pools are fixed)."""
    model = build_variant("vanillanet_13_x1_5_ada_pool", width_mult=1 / 32).eval()
    assert export_onnx(model, tmp_path / "m.onnx", img_size=40, exporter="legacy").max_rel_err < 1e-5
    for method, sizes in (("script", (40, 56)), ("trace", (40,))):
        res = export_torchscript(model, tmp_path / f"{method}.pt", img_size=40, method=method)
        assert res.max_rel_err < 1e-5 and res.exporter == method
        loaded = torch.jit.load(str(tmp_path / f"{method}.pt"))
        for size in sizes:
            x = torch.randn(2, 3, size, size)
            with torch.no_grad():
                assert float((loaded(x) - model(x)).abs().max() / model(x).abs().max()) < 1e-5


def test_refuses_unconverted_train_form_and_large_error(tmp_path):
    model = build_variant("vanillanet_5", width_mult=1 / 32).eval()
    model.act_learn = 0.5
    with pytest.raises(ConversionError, match="act_learn"):
        export_onnx(model, tmp_path / "a.onnx", img_size=32)
    model.act_learn = 1.0
    with pytest.raises(ConversionError, match="not written"):
        export_onnx(model, tmp_path / "b.onnx", img_size=32, exporter="legacy", tol=0.0)
    assert not list(tmp_path.iterdir())  # neither the file nor a temporary one is left


def test_cli_export_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "v5.onnx"
    argv = ["export", "--model", "vanillanet_5", "--output", str(out), "--img-size", "32", "--exporter", "legacy"]
    # full width at 32 px: the real 15.5M-parameter deploy model, exported and checked
    assert main(argv) == 0
    assert out.is_file() and "max relative error" in capsys.readouterr().out
    assert main(["export", "--model", "vanillanet_5", "--output", str(tmp_path / "x.onnx"), "--img-size", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "too small" in err and len(err.splitlines()) == 1
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "y.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not found" in err and len(err.splitlines()) == 1
    assert main(["export", "--model", "vanillanet_5", "--output", str(tmp_path / "z.bin")]) == 2
    assert "--format" in capsys.readouterr().err

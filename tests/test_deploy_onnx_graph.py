"""deploy/onnx_graph.py: the exact static adaptive max pool that makes the ada_pool variant exportable, the
exportable copy of a model, ONNX bytes from both exporters and the onnxruntime session and runner around them.
(The ``export`` command's files and checks: test_export.py.)"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import build_variant, give_realistic_bn_stats

from vanillanet.deploy.onnx_graph import (
    StaticAdaptiveMaxPool2d,
    make_exportable,
    onnx_bytes,
    onnx_runner,
    onnx_session,
    quiet,
    relu_before_maxpool,
)
from vanillanet.util.errors import ConfigError, ConversionError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("in_hw", "out_hw"), [((7, 7), (3, 3)), ((38, 19), (10, 7)), ((5, 9), (5, 2)),
                                               ((4, 4), (4, 4)), ((3, 8), (1, 1))])
def test_static_pool_equals_adaptive_max_pool(in_hw, out_hw):
    x = torch.randn(2, 3, *in_hw, generator=torch.Generator().manual_seed(0))
    pool = StaticAdaptiveMaxPool2d(in_hw, out_hw)
    assert torch.equal(pool(x), torch.nn.functional.adaptive_max_pool2d(x, out_hw))
    assert repr(pool) == f"StaticAdaptiveMaxPool2d(in_hw={in_hw}, out_hw={out_hw})"


def test_static_pool_refuses_another_input_size():
    with pytest.raises(ConfigError, match=r"expects \(7, 7\) inputs, got \(8, 8\); export again with the image size"):
        StaticAdaptiveMaxPool2d((7, 7), (3, 3))(torch.zeros(1, 1, 8, 8))


def test_exportable_copy_is_the_deploy_form_with_static_pools():
    torch.manual_seed(0)
    model = build_variant("vanillanet_13_x1_5_ada_pool", num_classes=5)
    give_realistic_bn_stats(model, (2, 3, 64, 64))
    model.eval()
    m = make_exportable(model, 64)
    assert any(isinstance(x, StaticAdaptiveMaxPool2d) for x in m.modules())
    assert not any(isinstance(x, torch.nn.AdaptiveMaxPool2d) for x in m.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x), rtol=1e-4, atol=1e-4)
    assert make_exportable(model, 64, deploy=False) is not model and model.training is False


def test_onnx_bytes_run_in_onnxruntime_with_a_dynamic_batch():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_variant("vanillanet_5", num_classes=7)
    give_realistic_bn_stats(model, (2, 3, 32, 32))
    model.eval()
    run = onnx_runner(onnx_session(onnx_bytes(model, 32, exporter="legacy"), threads=1))
    assert run.session.get_session_options().intra_op_num_threads == 1
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model(x), rtol=1e-3, atol=1e-4)


def test_bad_exporter_and_unreadable_model_are_one_line_errors():
    pytest.importorskip("onnxruntime")
    with pytest.raises(ConfigError, match="exporter must be one of dynamo, legacy, got 'jit'"):
        onnx_bytes(build_variant("vanillanet_5"), 32, exporter="jit")
    with pytest.raises(ConversionError, match="onnxruntime cannot run the ONNX model .*; export it with another"):
        onnx_session(b"not an onnx model")


def test_quiet_silences_file_descriptor_1_and_restores_it(capfd):
    with quiet():
        os.write(1, b"C++ dump\n")
        print("progress")
    os.write(1, b"after\n")
    assert capfd.readouterr().out == "after\n"
    with pytest.raises(ValueError, match="still raised"), quiet():
        raise ValueError("still raised")


def _ops(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def test_a_channels_last_model_exports_the_same_short_graph():
    """fast_inference hands the backends a model prepared in channels_last; traced as it is, the exporter wrote
    each conv's bias as a separate Add and the flatten through Shape/Gather/Range. make_exportable puts the weights
    back in NCHW, so both layouts give one graph."""
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = build_variant("vanillanet_5", num_classes=10)
    give_realistic_bn_stats(model, (4, 3, 32, 32))
    plain = _ops(onnx.load_from_string(onnx_bytes(model.eval(), 32)))
    last = _ops(onnx.load_from_string(onnx_bytes(model.to(memory_format=torch.channels_last), 32)))
    assert last == plain and "Add" not in plain and "Range" not in plain
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last)  # the model is untouched


def test_relu_moves_before_every_max_pool_and_the_function_is_unchanged():
    """The rewrite every runtime backend gets (``int8``, ``openvino``): each MaxPool -> Relu pair becomes Relu ->
    MaxPool, the model stays valid ONNX, the input proto is untouched and the outputs are equal to the bit."""
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = build_variant("vanillanet_5", num_classes=10)
    give_realistic_bn_stats(model, (4, 3, 32, 32))
    raw = onnx_bytes(model.eval(), 32)
    proto = onnx.load_from_string(raw)
    before = _ops(proto)
    swapped = relu_before_maxpool(proto)
    after = _ops(swapped)
    pairs = sum(a == "MaxPool" and b == "Relu" for a, b in zip(before, before[1:]))
    assert pairs >= 2 and sum(a == "MaxPool" and b == "Relu" for a, b in zip(after, after[1:])) == 0
    assert sum(a == "Relu" and b == "MaxPool" for a, b in zip(after, after[1:])) == pairs
    assert _ops(proto) == before
    onnx.checker.check_model(swapped, full_check=True)
    x = torch.randn(3, 3, 32, 32)
    got = onnx_runner(onnx_session(swapped.SerializeToString(), threads=1))(x)
    assert torch.equal(got, onnx_runner(onnx_session(raw, threads=1))(x))

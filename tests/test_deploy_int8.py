"""deploy/int8.py: the settings, calibration batches, and int8 ONNX
bytes that onnxruntime runs close to the fp32 model. (The ``quantize`` command and its accuracy:
test_quantize.py.)"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import build_variant, give_realistic_bn_stats

from vanillanet.deploy.int8 import Int8Config, noise_batches, quantize_bytes
from vanillanet.deploy.onnx_graph import onnx_bytes, onnx_runner, onnx_session
from vanillanet.util.errors import ConfigError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fp32():
    """A narrow deploy-form vanillanet_5 (its blocks pool after the conv) and its fp32 ONNX bytes."""
    torch.manual_seed(0)
    model = build_variant("vanillanet_5", num_classes=10)
    give_realistic_bn_stats(model, (4, 3, 32, 32))
    model.eval()
    return model, onnx_bytes(model, 32, exporter="legacy")


def ops(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def test_int8_graph_is_quantized_and_close_to_fp32(fp32):
    model, raw = fp32
    int8 = onnx.load_from_string(quantize_bytes(raw, noise_batches((4, 3, 32, 32), n=2)))
    kinds = ops(int8)
    assert kinds.count("QLinearConv") == sum(k == "Conv" for k in ops(onnx.load_from_string(raw)))
    assert "Conv" not in kinds
    x = noise_batches((16, 3, 32, 32), n=1, seed=1)[0]
    got = onnx_runner(onnx_session(int8.SerializeToString(), threads=1))(x)
    with torch.no_grad():
        want = model(x)
    # an untrained narrow model calibrated on noise: approximate (0.97 here), but a broken graph gives ~0
    assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.9


def test_excluded_layers_stay_in_fp32_in_the_qdq_format(fp32):
    _, raw = fp32
    cfg = Int8Config(format="qdq", exclude=("stem", "head"))
    kinds = ops(onnx.load_from_string(quantize_bytes(raw, noise_batches((2, 3, 32, 32), n=1), cfg)))
    assert "QLinearConv" not in kinds and "QuantizeLinear" in kinds and "DequantizeLinear" in kinds


def test_no_calibration_images_is_a_config_error(fp32):
    with pytest.raises(ConfigError, match="no calibration images were given"):
        quantize_bytes(fp32[1], [])


def test_settings_are_checked_on_construction():
    assert Int8Config().format == "qoperator" and Int8Config().reduce_range
    with pytest.raises(ConfigError, match="format must be one of qoperator, qdq, got 'int4'"):
        Int8Config(format="int4")
    with pytest.raises(ConfigError, match="exclude must be one of stem, head, depthwise, got 'body'"):
        Int8Config(exclude=("body",))


def test_noise_batches_are_seeded():
    a, b = noise_batches((2, 3, 4, 4), n=3, seed=7), noise_batches((2, 3, 4, 4), n=3, seed=7)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1]) and abs(float(torch.cat(a).std()) - 1) < 0.3


def test_quantizing_leaves_the_root_logger_unconfigured(fp32):
    root = logging.getLogger()
    handlers = list(root.handlers)
    quantize_bytes(fp32[1], [np.zeros((1, 3, 32, 32), np.float32) + 0.5])
    assert root.handlers == handlers

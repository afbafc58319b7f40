"""deploy/openvino_model.py at its own level: ONNX bytes compiled by OpenVINO with the settings asked for, a
runner whose output the caller owns, the one-line errors, and the signal stack kept. (The ``openvino`` backends of
``fast_inference``: test_deploy_backends.py.)"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import build_variant, give_realistic_bn_stats

from vanillanet.deploy.onnx_graph import onnx_bytes
from vanillanet.deploy.openvino_model import PRECISION_HINTS, kept_signal_stack, openvino_compiled, openvino_runner
from vanillanet.util.errors import ConfigError, ConversionError

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_bytes():
    pytest.importorskip("onnxruntime")  # the exporters' checker
    torch.manual_seed(0)
    model = build_variant("vanillanet_5", num_classes=6)
    give_realistic_bn_stats(model, (2, 3, 32, 32))
    model.eval()
    return model, onnx_bytes(model, 32, exporter="legacy")


@needs_openvino
def test_compiled_with_the_settings_asked_for_and_exact_in_fp32(model_and_bytes):
    model, raw = model_and_bytes
    compiled = openvino_compiled(raw, torch.float32, threads=1)
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    run = openvino_runner(compiled)
    assert run.compiled is compiled
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    first = run(x)
    with torch.no_grad():
        torch.testing.assert_close(first, model(x), rtol=1e-4, atol=1e-5)
    kept = first.clone()
    run(torch.zeros(3, 3, 32, 32))
    assert torch.equal(first, kept)  # the caller owns each output: the next call does not overwrite it


@needs_openvino
def test_a_model_compiled_for_one_shape_runs_other_shapes_on_a_dynamic_one(model_and_bytes):
    """Static for the built shape; another batch size compiles the dynamic-batch model once, on first use; without
    one it is a one-line error."""
    model, raw = model_and_bytes
    compiled = openvino_compiled(raw, torch.float32, threads=1, shape=(2, 3, 32, 32))
    assert compiled.input(0).get_partial_shape().is_static
    made = []

    def other():
        made.append(openvino_compiled(raw, torch.float32, threads=1))
        return made[-1]

    run = openvino_runner(compiled, other_shapes=other)
    for batch in (2, 3, 1, 2):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(run(x), model(x), rtol=1e-4, atol=1e-5)
    assert len(made) == 1 and not made[0].input(0).get_partial_shape().is_static
    with pytest.raises(ConfigError, match=r"compiled for input shape \(2, 3, 32, 32\), not \(1, 3, 32, 32\); build"):
        openvino_runner(compiled)(torch.zeros(1, 3, 32, 32))


@needs_openvino
def test_wrong_dtype_and_bad_bytes_are_one_line_errors(model_and_bytes):
    assert set(PRECISION_HINTS) == {torch.float32, torch.bfloat16}
    with pytest.raises(ConfigError, match=r"OpenVINO computes in fp32 or bf16 here, not torch.float16"):
        openvino_compiled(model_and_bytes[1], torch.float16)
    with pytest.raises(ConversionError, match="OpenVINO cannot compile the ONNX model .*; use another backend"):
        openvino_compiled(b"not an onnx model")


def test_kept_signal_stack_restores_the_alternate_stack():
    ctypes = pytest.importorskip("ctypes")
    from vanillanet.deploy import openvino_model

    if openvino_model._LIBC is None:
        pytest.skip("Linux only")
    libc = openvino_model._LIBC
    before, inside, after = (openvino_model._StackT() for _ in range(3))
    libc.sigaltstack(None, ctypes.byref(before))
    buf = ctypes.create_string_buffer(1 << 16)
    with kept_signal_stack():
        new = openvino_model._StackT(ctypes.cast(buf, ctypes.c_void_p), 0, len(buf))
        libc.sigaltstack(ctypes.byref(new), None)  # what a library may do while it runs
        libc.sigaltstack(None, ctypes.byref(inside))
    libc.sigaltstack(None, ctypes.byref(after))
    assert inside.ss_sp == ctypes.cast(buf, ctypes.c_void_p).value
    assert (after.ss_sp, after.ss_size, after.ss_flags) == (before.ss_sp, before.ss_size, before.ss_flags)

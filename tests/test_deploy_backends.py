"""The backend table (deploy/backends.py) and the OpenVINO backend (deploy/openvino_model.py): exact fp32 against
eager, bf16 on CPUs with native bf16, ``auto``'s candidates, bench modes, and a one-line message where a backend's
package is missing."""

from __future__ import annotations

import ctypes
import importlib.util
import sys

import pytest
import torch
from conftest import build_variant, give_realistic_bn_stats, rel_err

from vanillanet.deploy import backends
from vanillanet.deploy.backends import BACKENDS, EXACT_BACKENDS, best_modes, dtype_supported, parse_modes
from vanillanet.deploy.inference import auto_candidates, fast_inference
from vanillanet.deploy.openvino_model import openvino_compiled
from vanillanet.util.errors import ConfigError, ConversionError

CPU = torch.device("cpu")
BF16 = dtype_supported(CPU, torch.bfloat16)
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_variant("vanillanet_6", width_mult=1 / 16, num_classes=10)
    give_realistic_bn_stats(m, (4, 3, 32, 32))
    return m.eval()


def _ref(model, x):
    with torch.no_grad():
        return model(x)


@needs_openvino
def test_openvino_fp32_is_exact_at_any_batch_and_layout(model):
    """fp32 means fp32: the precision hint is set to f32 (OpenVINO's default on a bf16 CPU is bf16), the threads
    are torch's, and no torch op runs around the call (torch's threads would spin on OpenVINO's cores)."""
    fast = fast_inference(model, "cpu", torch.float32, batch_size=2, image_size=32, backend="openvino")
    assert fast.backend == "openvino" and fast.max_rel_err < 1e-5
    compiled = fast._fast.compiled
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == torch.get_num_threads()
    x = torch.randn(3, 3, 32, 32)
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x[:1]):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = fast(inp)
        assert not {e.name for e in prof.events()} & {"aten::copy_", "aten::clone", "aten::_to_copy"}
        assert out.dtype == torch.float32 and rel_err(out, _ref(model, inp)) < 1e-5
    out1 = fast(x)
    fast(2 * x)
    assert rel_err(out1, _ref(model, x)) < 1e-5  # a fresh output per call: a later call does not overwrite it
    assert not model.deploy  # the original is untouched


@needs_openvino
def test_openvino_compiles_the_relu_before_pool_graph(model, monkeypatch):
    """OpenVINO gets the exact ReLU-before-max-pool rewrite (so it fuses each ReLU into its conv), not the graph
    as exported."""
    onnx = pytest.importorskip("onnx")
    seen = []

    def spy(data, dtype, *args, **kwargs):
        seen.append(([n.op_type for n in onnx.load_from_string(data).graph.node], kwargs.get("shape")))
        return openvino_compiled(data, dtype, *args, **kwargs)

    monkeypatch.setattr(backends, "openvino_compiled", spy)
    fast = fast_inference(model, "cpu", torch.float32, batch_size=2, image_size=32, backend="openvino")
    ops, shape = seen[0]
    assert sum(a == "Relu" and b == "MaxPool" for a, b in zip(ops, ops[1:])) >= 2
    assert not any(a == "MaxPool" and b == "Relu" for a, b in zip(ops, ops[1:]))
    assert fast.max_rel_err < 1e-5
    assert shape == (2, 3, 32, 32) and len(seen) == 1  # compiled for the built shape; the dynamic one not yet
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    assert len(seen) == 2 and seen[1][1] is None and seen[1][0] == ops  # another batch size: the same graph, dynamic


@needs_openvino
@pytest.mark.skipif(not BF16, reason="needs a CPU with native bf16")
def test_openvino_bf16_computes_in_bf16_with_fp32_in_and_out(model):
    fast = fast_inference(model, "cpu", torch.bfloat16, batch_size=2, image_size=32, backend="openvino")
    assert str(fast._fast.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"
    assert 1e-5 < fast.max_rel_err < 5e-2  # rounded (not fp32), within the half-precision gate
    x = torch.randn(4, 3, 32, 32)
    out = fast(x)
    assert out.dtype == torch.float32 and rel_err(out, _ref(model, x)) < 1e-1


@needs_openvino
def test_openvino_int8_runs_the_same_quantization_as_int8(model):
    """openvino_int8 is by name only, approximate, and computes what onnxruntime's int8 of the same calibration
    computes (the same QDQ ranges), up to the rounding of the two runtimes."""
    pytest.importorskip("onnxruntime")
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(4)]
    ov8 = fast_inference(model, batch_size=2, image_size=32, backend="openvino_int8", calibration=calib)
    ort8 = fast_inference(model, batch_size=2, image_size=32, backend="int8", calibration=calib)
    assert "openvino_int8" not in auto_candidates(CPU, torch.float32) and "openvino_int8" not in EXACT_BACKENDS
    x = torch.randn(3, 3, 32, 32, generator=gen)
    assert ov8.max_rel_err < 0.5 and rel_err(ov8(x), _ref(model, x)) < 0.5
    assert rel_err(ov8(x), ort8(x)) < 0.15
    with pytest.raises(ConfigError, match="runs in fp32 only"):
        parse_modes("openvino_int8:bf16", CPU)


@needs_openvino
@pytest.mark.skipif(sys.platform != "linux", reason="sigaltstack via the C library")
def test_openvino_leaves_the_signal_stack_as_found(model):
    """OpenVINO's CPU plugin leaves a freed alternate signal stack installed; the next Python signal handler (a
    DataLoader worker's SIGCHLD) then crashes the process. Our calls put the thread's stack back."""
    from vanillanet.deploy import openvino_model

    def stack():
        s = openvino_model._StackT()
        openvino_model._LIBC.sigaltstack(None, ctypes.byref(s))
        return s.ss_sp, s.ss_flags, s.ss_size

    before = stack()
    for dtype in (torch.float32, *((torch.bfloat16,) if BF16 else ())):
        fast = fast_inference(model, "cpu", dtype, batch_size=2, image_size=32, backend="openvino")
        fast(torch.randn(2, 3, 32, 32))
        assert stack() == before


def test_openvino_bf16_needs_native_bf16(monkeypatch):
    monkeypatch.setattr(backends, "dtype_supported", lambda device, dtype: dtype == torch.float32)
    reason = BACKENDS["openvino"].unavailable(CPU, torch.bfloat16)
    assert reason and "native bf16" in reason and "float32" in reason
    assert "openvino" not in auto_candidates(CPU, torch.bfloat16)


@needs_openvino
def test_openvino_joins_auto_and_bench_modes():
    assert "openvino" in auto_candidates(CPU, torch.float32) and "openvino" in EXACT_BACKENDS
    assert "openvino" in best_modes(CPU)
    assert ("openvino:bf16" in best_modes(CPU)) == BF16
    mode, = parse_modes("openvino", CPU)
    assert (mode.backend, mode.dtype, mode.channels_last) == ("openvino", torch.float32, False)
    if BF16:
        assert "openvino" in auto_candidates(CPU, torch.bfloat16)  # only when the caller asks for bf16


def test_missing_package_is_a_one_line_message_naming_the_extra(model, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    reason = BACKENDS["openvino"].unavailable(CPU, torch.float32)
    assert reason == "the openvino backend needs openvino; run pip install 'vanillanet[openvino]'"
    assert "openvino" not in auto_candidates(CPU, torch.float32)
    with pytest.raises(ConfigError, match=r"pip install 'vanillanet\[openvino\]'"):
        fast_inference(model, image_size=32, backend="openvino")
    with pytest.raises(ConfigError, match=r"pip install 'vanillanet\[openvino\]'"):
        parse_modes("openvino", CPU)
    monkeypatch.setitem(sys.modules, "openvino", None)  # the import itself fails
    with pytest.raises(ConfigError, match=r"openvino is not installed; run pip install 'vanillanet\[openvino\]'"):
        openvino_compiled(b"")


@needs_openvino
def test_openvino_rejects_a_bad_graph_and_dtype_in_one_line():
    with pytest.raises(ConfigError, match="fp32 or bf16"):
        openvino_compiled(b"", torch.float16)
    with pytest.raises(ConversionError, match="OpenVINO cannot compile the ONNX model") as err:
        openvino_compiled(b"not an onnx graph")
    assert "\n" not in str(err.value)


def test_every_backend_names_what_it_needs_and_where_it_runs():
    for b in BACKENDS.values():
        assert b.devices and b.dtypes and b.summary
        assert all(isinstance(m, str) for m in b.requires)
        assert b.exact or not b.auto  # approximate entries are never auto candidates

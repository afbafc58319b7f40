"""``deploy.inference``: ``fast_inference``: every CPU backend reproduces the fp32 eager output; auto picks a
verified backend; shape fallback; one-line errors; GPU paths on CUDA."""

from __future__ import annotations

import pytest
import torch
from conftest import build_variant, give_realistic_bn_stats, rel_err

from vanillanet.deploy import inference
from vanillanet.deploy.inference import fast_inference
from vanillanet.util.devices import global_settings
from vanillanet.util.errors import ConfigError, ConversionError

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_variant("vanillanet_6", width_mult=1 / 16, num_classes=10)
    give_realistic_bn_stats(m, (4, 3, 32, 32))
    return m.eval()


def _ref(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("backend", ["eager", "onnxruntime", "compile"])
def test_cpu_backends_match_fp32_train_form(model, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    fast = fast_inference(model, "cpu", torch.float32, batch_size=2, image_size=32, backend=backend)
    assert fast.backend == backend and fast.max_rel_err < 1e-5
    x = torch.randn(2, 3, 32, 32)
    out = fast(x)
    assert out.dtype == torch.float32 and rel_err(out, _ref(model, x)) < 1e-5
    # other batch sizes: onnxruntime runs them natively, the fixed-shape backends fall back to eager
    x3 = torch.randn(3, 3, 32, 32)
    assert rel_err(fast(x3), _ref(model, x3)) < 1e-5
    assert not model.deploy  # the original is untouched


def test_bf16_error_is_reported_and_bounded(model):
    fast = fast_inference(model, "cpu", torch.bfloat16, batch_size=1, image_size=32, backend="eager")
    assert 1e-5 < fast.max_rel_err < 5e-2
    x = torch.randn(1, 3, 32, 32)
    assert rel_err(fast(x), _ref(model, x)) < 5e-2


def test_auto_picks_a_verified_backend_and_records_timings(model):
    pytest.importorskip("onnxruntime")
    fast = fast_inference(model, "cpu", batch_size=1, image_size=32, backend=["eager", "onnxruntime"])
    assert set(fast.timings_ms) == {"eager", "onnxruntime"}
    best = min(fast.timings_ms.values())
    assert fast.timings_ms[fast.backend] <= best * 1.03  # the fastest, or the simpler one within 3 %
    if fast.backend == "onnxruntime":
        assert fast.timings_ms["eager"] > best * 1.03
    assert fast.max_rel_err < 1e-5


def test_onnxruntime_path_runs_no_torch_op_around_the_session(model):
    """A torch copy wakes torch's OpenMP threads, which then spin on the cores onnxruntime's threads need: the
    onnxruntime backend converts inputs with numpy and returns the session's array without a copy."""
    pytest.importorskip("onnxruntime")
    fast = fast_inference(model, batch_size=2, image_size=32, backend="onnxruntime")
    opts = fast._fast.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (torch.get_num_threads(), 1)
    x = torch.randn(2, 3, 32, 32)
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x[:1]):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = fast(inp)
        ops = {e.name for e in prof.events()}
        assert not ops & {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::empty_like"}
        assert rel_err(out, _ref(model, inp)) < 1e-5


def test_bad_inputs_give_one_line_errors(model):
    fast = fast_inference(model, "cpu", batch_size=1, image_size=32, backend="eager")
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\)"):
        fast(torch.randn(1, 1, 32, 32))
    with pytest.raises(ConfigError, match="too small"):
        fast_inference(model, image_size=16)
    with pytest.raises(ConfigError, match="runs on cuda only"):
        fast_inference(model, backend="cudagraph", image_size=32)
    with pytest.raises(ConfigError, match="backend"):
        fast_inference(model, backend="tensorrt", image_size=32)
    with pytest.raises(ConversionError, match="above"):
        fast_inference(model, image_size=32, backend="eager", dtype=torch.bfloat16, tol=1e-7)
    half_trained = build_variant("vanillanet_5", width_mult=1 / 32)
    half_trained.act_learn = 0.3
    with pytest.raises(ConversionError, match="act_learn"):
        fast_inference(half_trained, image_size=32)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        same = torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
        assert same, f"{k}: {a[k]} -> {b[k]}"


@pytest.mark.parametrize("backend", [["eager", "onnxruntime"], "int8", "eager"])
def test_global_settings_are_left_as_found(model, backend):
    """fast_inference (build, verify, time, and a failing candidate) changes no process-wide setting: threads,
    matmul precision, cuDNN's flags, oneDNN, grad mode, default dtype and the global RNG are as before."""
    if backend != "eager":
        pytest.importorskip("onnxruntime")
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    try:
        torch.set_float32_matmul_precision("high")
        torch.set_num_threads(1)
        torch.backends.cudnn.benchmark = False
        before = global_settings()
        fast = fast_inference(model, batch_size=1, image_size=32, backend=backend)
        fast(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        _same(before, global_settings())
        with pytest.raises(ConversionError, match="above"):  # the failure path restores too
            fast_inference(model, image_size=32, backend="eager", dtype=torch.bfloat16, tol=1e-9)
        _same(before, global_settings())
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.set_num_threads(threads)


def test_cudnn_autotuner_is_scoped_to_the_call():
    """On CUDA the builds and each call run with cuDNN's autotuner on (fixed shapes), and switch it back after."""
    torch.backends.cudnn.benchmark = False
    with inference._cudnn_benchmark(torch.device("cuda")):
        assert torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.benchmark
    with inference._cudnn_benchmark(torch.device("cpu")):
        assert not torch.backends.cudnn.benchmark


def test_fast_inference_parts_are_short():
    """The build-and-verify and the choose parts are separate functions, none over the house limit of 80 lines."""
    import inspect

    for fn in (fast_inference, inference.build_verified, inference.choose_fastest, inference._reference):
        assert len(inspect.getsource(fn).splitlines()) <= 80, fn.__name__


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend,dtype", [("cudagraph", torch.float16), ("cudagraph", torch.float32),
                                           ("compile", torch.float16), ("eager", torch.bfloat16)])
def test_gpu_backends(model, backend, dtype):
    fast = fast_inference(model, "cuda", dtype, batch_size=4, image_size=32, backend=backend)
    x = torch.randn(4, 3, 32, 32)
    tol = 1e-4 if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32 else 5e-2
    assert fast.max_rel_err < tol
    out1, out2 = fast(x), fast(2 * x)  # the static output buffer must not alias earlier results
    assert rel_err(out1.cpu(), _ref(model, x)) < tol
    assert rel_err(out2.cpu(), _ref(model, 2 * x)) < tol
    assert rel_err(fast(x[:3]).cpu(), _ref(model, x[:3])) < tol  # other shape: eager fallback
    assert not torch.backends.cudnn.benchmark  # PyTorch's default, left as found


def _narrow_images(n: int, seed: int) -> torch.Tensor:
    """Images in a narrow range (as preprocessed photos are, against unit noise): int8 ranges calibrated on them do
    not cover standard-normal noise."""
    return 0.05 * torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_int8_calibrated_on_images_is_verified_on_them(model):
    """With calibration images the check runs on them, not on noise their ranges were never meant for (noise
    saturates every calibrated range, and the check refused a sound int8 model); a generator is read once and
    serves every backend asked for."""
    calib = [_narrow_images(4, 0), _narrow_images(4, 1)]
    clf = fast_inference(model, batch_size=2, image_size=32, backend="int8", calibration=calib)
    x = _narrow_images(2, 0)
    assert clf.max_rel_err == pytest.approx(rel_err(clf(x), _ref(model, x)), abs=1e-5)
    assert clf.max_rel_err < 0.2
    both = fast_inference(model, batch_size=2, image_size=32, backend=["int8", "int8"],
                          calibration=(b for b in calib))
    assert torch.equal(both(x), clf(x))


@pytest.mark.parametrize("calibration,match", [
    ([torch.rand(2, 3, 16, 16)], r"calibration batch 0 is \(2, 3, 16, 16\) torch.float32, not \(N, 3, 32, 32\)"),
    ([torch.rand(2, 3, 32, 32), torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)],
     r"batch 1 is \(2, 3, 32, 32\) torch.uint8, not .* floating point images"),
    ([torch.rand(0, 3, 32, 32)], r"batch 0 is \(0, 3, 32, 32\)"),
    (["image.jpg"], r"batch 0 is a str, not \(N, 3, 32, 32\)"),
    ([], r"calibration holds no batch"),
])
def test_bad_calibration_batches_are_named(model, calibration, match):
    with pytest.raises(ConfigError, match=match):
        fast_inference(model, batch_size=2, image_size=32, backend="int8", calibration=calibration)

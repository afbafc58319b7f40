"""deploy/checks.py: fast_inference's arguments refused before any work, in one TypeError or ValueError naming the
argument and the values it accepts (issue 17, finding 10)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_variant

from vanillanet.deploy import inference
from vanillanet.deploy.inference import fast_inference
from vanillanet.util.errors import ConfigError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_variant("vanillanet_5", width_mult=1 / 32, num_classes=3).eval()


@pytest.fixture
def no_work(monkeypatch):
    """Any call that got past the checks would convert the model: make that fail loudly."""
    def boom(*_a, **_k):
        raise AssertionError("fast_inference did work before refusing its arguments")
    monkeypatch.setattr(inference, "reparameterize_model", boom)


VALUE_ERRORS = [
    ({"device": "bogus"}, r"device must be 'cpu', 'cuda' or 'cuda:N', got 'bogus'"),
    ({"device": "meta"}, r"device must be 'cpu', 'cuda' or 'cuda:N' \(the devices this package runs on\), got 'meta'"),
    ({"backend": []}, r"backend is an empty list; pass 'auto', one of eager, .*or a non-empty list of them"),
    ({"backend": "tensorrt"}, r"backend must be auto or one of eager, .*got 'tensorrt'"),
    ({"backend": ["eager", "nope"]}, r"backend must be auto or one of .*got 'nope'"),
    ({"image_size": 100000}, r"image_size 100000 px is above the 4096 px limit .*allow_large=True"),
    ({"image_size": 0}, r"image_size must be at least 1, got 0"),
    ({"image_size": 16}, r"input size 16 px is too small for this model .*at least 32 px"),
    ({"batch_size": 4096, "image_size": 4096}, r"batch_size and image_size \(4096 x 3 x 4096 x 4096\) make a 824.6 GB "
                                               r"input batch, above the 4.3 GB limit.*allow_large=True"),
    ({"batch_size": 0}, r"batch_size must be at least 1, got 0"),
    ({"tol": -1}, r"tol must be None \(the backend's own gate\) or a finite number above 0 .*got -1"),
    ({"tol": float("nan")}, r"tol must be None .*got nan"),
    ({"dtype": torch.int8}, r"dtype must be torch.float32, torch.float16 or torch.bfloat16, got torch.int8"),
]


@pytest.mark.parametrize(("kwargs", "message"), VALUE_ERRORS, ids=[str(k) for k, _ in VALUE_ERRORS])
def test_bad_values_are_one_value_error_naming_the_argument(model, no_work, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        fast_inference(model, **{"image_size": 32, **kwargs})
    assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)
    assert "try dtype=float32" not in str(info.value)  # the misleading fix of before


TYPE_ERRORS = [
    ((None,), {}, r"model must be a torch.nn.Module \(e.g. from vanillanet.create_model\), got NoneType None"),
    (("MODEL",), {"device": 0}, r"device must be a str or torch.device \('cpu', 'cuda' or 'cuda:N'\), got int 0"),
    (("MODEL",), {"dtype": "float32"}, r"dtype must be a torch.dtype \(torch.float32, .*got str 'float32'"),
    (("MODEL",), {"batch_size": 2.0}, r"batch_size must be an integer, got float 2.0"),
    (("MODEL",), {"image_size": "224"}, r"image_size must be an integer, got str '224'"),
    (("MODEL",), {"tol": "1e-4"}, r"tol must be None \(the backend's own gate\) or a positive number, got str"),
    (("MODEL",), {"backend": 3}, r"backend must be 'auto', a backend name or a list of names \(eager, "),
    (("MODEL",), {"deploy": "yes"}, r"deploy must be True or False, got str 'yes'"),
    (("MODEL",), {"calibration": torch.zeros(2, 3, 32, 32)}, r"calibration must be None or an iterable of image "
                                                             r"batches"),
]


@pytest.mark.parametrize(("args", "kwargs", "message"), TYPE_ERRORS, ids=[m[:30] for *_, m in TYPE_ERRORS])
def test_wrong_kinds_are_one_type_error_naming_the_argument(model, no_work, args, kwargs, message):
    args = tuple(model if a == "MODEL" else a for a in args)
    with pytest.raises(TypeError, match=f"^fast_inference: {message}"):
        fast_inference(*args, **{"image_size": 32, **kwargs})


def test_a_gpu_that_is_not_there_is_named(model, no_work):
    visible = torch.cuda.device_count()
    with pytest.raises(ValueError, match="no CUDA device is visible; use 'cpu'" if not visible else
                       f"names GPU {visible} but {visible} is/are visible"):
        fast_inference(model, device=f"cuda:{visible}", image_size=32)


def test_good_arguments_still_build(model):
    fast = fast_inference(model, torch.device("cpu"), batch_size=1, image_size=32, backend=("eager",), tol=1e-3)
    assert fast.backend == "eager" and fast.max_rel_err < 1e-3

"""Shared test helpers: seeded, CPU-only, small models."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels are tested in Triton's interpreter, which must be chosen before triton is
    # first imported (vanillanet imports timm, which imports triton); the kernels then run on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import vanillanet  # noqa: E402, F401  (registers the models with timm)
from vanillanet.model.network import VanillaNet  # noqa: E402
from vanillanet.model.registry import create_model  # noqa: E402
from vanillanet.model.reparam import calibrate_bn, rel_err, reparameterize_model  # noqa: E402, F401  (re-exported)
from vanillanet.model.variants import VARIANTS  # noqa: E402
from vanillanet.util.errors import CheckpointError  # noqa: E402

torch.set_num_threads(2)


def build_variant(name: str, width_mult: float = 1 / 16, **kwargs) -> VanillaNet:
    """A VanillaNet with the real depth, strides and pooling of ``name`` but ``width_mult`` of its widths."""
    spec = VARIANTS[name]
    return VanillaNet(dims=spec.dims, strides=spec.strides, ada_pool=spec.ada_pool, width_mult=width_mult, **kwargs)


def give_realistic_bn_stats(model: nn.Module, in_shape: tuple[int, ...], seed: int = 0, batches: int = 3) -> None:
    """Random BN affine parameters, and running statistics gathered from forward passes (cumulative average)."""
    calibrate_bn(model, in_shape, batches=batches, seed=seed, randomize_affine=True)


@pytest.fixture(autouse=True)
def _no_trace_logging():
    """torch.export logs large structured-trace records at DEBUG; pytest's log capture makes them cost seconds."""
    trace = logging.getLogger("torch.__trace")
    old, trace.disabled = trace.disabled, True
    yield
    trace.disabled = old


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine run many times faster on one thread (no OpenMP contention); used by
    the training tests through ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    yield


# ---- data ---------------------------------------------------------------------------------------------------------
def save_image(path: Path, color: int = 128, size: int = 12) -> None:
    """A small RGB image of one colour (its channels differ) at ``path``, parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (color, color // 2, 255 - color)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An ImageFolder root: train/{cat,dog} with 3 images each, val/{cat,dog} with 1 each."""
    for split, n in (("train", 3), ("val", 1)):
        for c, name in enumerate(("cat", "dog")):
            for i in range(n):
                save_image(tmp_path / split / name / f"{i}.png", 40 + 100 * c + i)
    return tmp_path


def one_line_dataset_error(match: str, *args, **kwargs) -> str:
    """The DataError of ``build_dataset(*args, **kwargs)``: it matches ``match`` and is one line."""
    from vanillanet.data.sources import build_dataset
    from vanillanet.util.errors import DataError

    with pytest.raises(DataError, match=match) as info:
        build_dataset(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---- checkpoints: a narrow vanillanet_5 and its files in every layout ----------------------------------------------
CKPT_WIDTH = 0.125  # vanillanet_5 at width 0.125: dims 64, 128, 256, 512
CKPT_CLASSES = [f"class_{i}" for i in range(10)]


def narrow_model(name="vanillanet_5", **kwargs):
    """``name`` at ``CKPT_WIDTH`` of its widths (the checkpoint tests' model)."""
    return build_variant(name, width_mult=CKPT_WIDTH, **kwargs)


@pytest.fixture(scope="module")
def ckpt_source():
    """A narrow train-form vanillanet_5 (10 classes) with realistic BN statistics, and an 'EMA' that differs."""
    torch.manual_seed(0)
    model = narrow_model(num_classes=10)
    give_realistic_bn_stats(model, (4, 3, 32, 32))
    model.eval()
    ema = {k: (v + 0.01 if v.is_floating_point() else v.clone()) for k, v in model.state_dict().items()}
    return model, ema


@pytest.fixture(scope="module")
def ckpt_input():
    """A fixed batch of two 32 px images."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def original_args():
    """The ``args`` namespace the original training script pickles into its checkpoints."""
    return argparse.Namespace(model="vanillanet_5", lr=3.5e-3, decay_epochs=100, model_ema=True)


def layouts(model, ema):
    """Checkpoint dicts in every supported layout, built here (released files cannot be downloaded)."""
    sd = model.state_dict()
    deploy_sd = reparameterize_model(model).state_dict()
    return {
        "original": {"model": sd, "model_ema": ema, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                     "epoch": 299, "scaler": {"scale": 65536.0}, "args": original_args()},
        "original_ddp": {"model": {f"module.{k}": v for k, v in sd.items()}, "args": original_args()},
        "original_deploy": {"model": deploy_sd},
        "bare": dict(sd),
        "compiled_ddp": {f"_orig_mod.module.{k}": v for k, v in sd.items()},
        "openmixup": {"state_dict": {("head." if k.startswith("cls") else "backbone.") + k: v for k, v in sd.items()},
                      "meta": {"epoch": 300, "mmcv_version": "1.7.0"}},
        "ours_training": {"model": sd, "model_ema": ema, "optimizer": {"state": {}}, "epoch": 3, "scaler": None,
                          "config": {"model": "vanillanet_5", "lr": 0.001}, "act_learn": 1.0, "step": 30,
                          "rng": torch.get_rng_state(), "class_names": CKPT_CLASSES,
                          "arch": {"name": "vanillanet_5", "kwargs": {"width_mult": CKPT_WIDTH, "num_classes": 10}}},
    }


def assert_same_weights(model, reference_sd, skip=()):
    """``model`` holds exactly ``reference_sd`` (keys starting with ``skip`` excepted)."""
    got = model.state_dict()
    assert list(got) == list(reference_sd) or set(got) == set(reference_sd)
    for key, value in reference_sd.items():
        if not key.startswith(skip):
            assert torch.equal(got[key], value), key


def checkpoint_error(path, match, **kwargs):
    """The CheckpointError of ``create_model("vanillanet_5", path, **kwargs)``: it matches ``match``, one line."""
    with pytest.raises(CheckpointError, match=match) as info:
        create_model("vanillanet_5", path, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---- kernels ------------------------------------------------------------------------------------------------------
# Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1 is set above, before triton
# is imported); with one they run compiled on CUDA. The interpreter's cost is per program and per op, not per
# element, so the kernel tests use tiny shapes.
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
KERNEL_TOL = {F32: 1e-5, F16: 1e-2, BF16: 1e-2}


def kernel_device() -> str:
    """Where the kernel tests of a module run, called at its top: the module is skipped without Triton and fails
    when Triton cannot define the kernels; "cpu" in Triton's interpreter, else "cuda"."""
    pytest.importorskip("triton", reason="the kernels need Triton (CUDA builds of torch ship it)")
    import vanillanet.kernels as K

    if not K.available():
        pytest.fail(f"Triton is installed but the kernels could not be defined: {K.unavailable_reason()}",
                    pytrace=False)
    device = "cpu" if K.interpreted() else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.fail("triton runs compiled here but there is no GPU: set TRITON_INTERPRET=1 before triton is imported "
                    "(tests/conftest.py does this)", pytrace=False)
    return device


def channels_last_tensor(*shape: int, device: str, dtype: torch.dtype = F32, seed: int = 0,
                         scale: float = 1.0) -> torch.Tensor:
    """A seeded normal tensor of ``shape`` in channels_last on ``device`` (the kernels' input layout)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen) * scale
    return x.to(device, dtype).contiguous(memory_format=torch.channels_last)


def depthwise_taps(c: int, act_num: int = 3, *, device: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded depthwise weights (c, 1, k, k), k = 2 act_num + 1, scaled by 1/k, and a bias (c,)."""
    gen = torch.Generator().manual_seed(seed)
    k = 2 * act_num + 1
    w = torch.randn(c, 1, k, k, generator=gen) / k
    return w.to(device), torch.randn(c, generator=gen).to(device)


def photo_jpeg(rng, width: int, height: int, quality: int = 90, mode: str = "RGB") -> bytes:
    """A seeded photo-like JPEG: a smooth colour field with a per-image colour cast (channels differ, so a swapped
    channel order shows), shapes and grain, as ``mode`` (RGB, L or CMYK)."""
    import io

    import numpy as np
    from PIL import Image

    coarse = rng.uniform(0, 255, (4, 4, 3)) * np.array([1.0, 0.7, 0.4]) + rng.uniform(0, 60, 3)
    base = np.asarray(Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((width, height),
                                                                                        Image.BICUBIC), np.float32)
    noise = rng.normal(0, 12, (height, width, 1))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).convert(mode).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory):
    """An ImageFolder root of photo-like JPEGs (train: 2 classes x 24, val: 2 x 8; 96x72 and 72x96 px)."""
    import numpy as np

    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 24), ("val", 8)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                size = (96, 72) if i % 2 else (72, 96)
                (root / split / c / f"{i:03d}.jpg").write_bytes(photo_jpeg(rng, *size))
    return root


# ---- training: a small TrainState ---------------------------------------------------------------------------------
STEPS_PER_EPOCH = 4


def make_state(lr: float = 1e-3, opt: str = "adamw", ema: bool = True, seed: int = 0, epochs: int = 3, **optim):
    """A ``TrainState`` of a narrow vanillanet_5 (4 classes): ``opt`` at ``lr``, the run's cosine schedule with one
    warm-up epoch of ``STEPS_PER_EPOCH`` steps, an EMA (decay 0.9) unless ``ema`` is False, no gradient scaler;
    ``optim``: other ``OptimConfig`` fields."""
    from timm.utils import ModelEmaV3

    from vanillanet.training.builders import build_optimizer, build_scheduler
    from vanillanet.training.config import OptimConfig
    from vanillanet.training.state import TrainState

    torch.manual_seed(seed)
    model = build_variant("vanillanet_5", num_classes=4, width_mult=1 / 32)
    optim = OptimConfig(opt=opt, lr=lr, warmup_epochs=1.0, **optim)
    optimizer = build_optimizer(model, optim, lr)
    return TrainState(model=model, ema=ModelEmaV3(model, decay=0.9) if ema else None, optimizer=optimizer,
                      scheduler=build_scheduler(optimizer, optim, STEPS_PER_EPOCH, epochs),
                      scaler=torch.amp.GradScaler("cpu", enabled=False))


# ---- training: the tiny training config, written once -----------------------------------------------------------
# 16 synthetic 32 px images, batch 4: 4 steps per epoch, 2 epochs, at 1/16 of the widths; mixup/cutmix, LAMB, the
# EMA and per-epoch act_learn on as in the recipe. ``tiny_config`` takes ``key=value`` overrides.
TINY_TRAIN = {"data": "synthetic", "synthetic_size": 16, "width_mult": 0.0625, "epochs": 2, "decay_epochs": 1,
              "batch_size": 4, "workers": 0, "warmup_epochs": 1, "img_size": 32, "progress": False, "seed": 5,
              "log_every": 1}


def _tiny(changes: dict) -> dict:
    """``TINY_TRAIN`` with ``changes``; a change to None drops the key (its default applies)."""
    return {k: v for k, v in {**TINY_TRAIN, **changes}.items() if v is not None}


def tiny_sets(**changes) -> list[str]:
    """``TINY_TRAIN`` with ``changes`` as ``--set`` strings (``key=value``)."""
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in _tiny(changes).items()]


def tiny_flags(**changes) -> list[str]:
    """``TINY_TRAIN`` with ``changes`` as ``vanillanet train`` flags (``--key-name value``, ``--name``/``--no-name``
    for booleans)."""
    flags: list[str] = []
    for key, value in _tiny(changes).items():
        name = key.replace("_", "-")
        flags += [f"--{name}" if value else f"--no-{name}"] if isinstance(value, bool) else [f"--{name}", str(value)]
    return flags


def tiny_config(out: Path, *extra: str, **changes):
    """The resolved ``TrainConfig`` of the tiny run into ``out``; ``extra``: further ``key=value`` overrides."""
    from vanillanet.training.config import resolve_config

    return resolve_config(None, {}, [*tiny_sets(**changes), f"output={out}", *extra])


def built_run(out: Path, *extra: str, **changes):
    """``(state, run, log lines)`` of ``build_run`` for the tiny config into ``out`` (one CPU process)."""
    from vanillanet.training.builders import build_run
    from vanillanet.training.loop import Log
    from vanillanet.training.run_folder import RunFolder
    from vanillanet.util.devices import DistInfo

    said: list[str] = []

    class Said(Log):  # the loop's log, its lines kept
        def __call__(self, msg: str) -> None:
            said.append(msg)

    log = Said(True)
    state, run = build_run(tiny_config(out, *extra, **changes), DistInfo(), torch.device("cpu"),
                           RunFolder(out, log), log)
    return state, run, said


@pytest.fixture(scope="module")
def straight(request, tmp_path_factory):
    """``(output folder, summary)`` of one uninterrupted run of the test module's ``straight_config(out)``, on one
    thread, trained once per module: what an interrupted and resumed run must reproduce exactly."""
    from vanillanet.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("straight")
        summary = train(request.module.straight_config(out))
    finally:
        torch.set_num_threads(threads)
    return out, summary


# ---- shards: small image folders and an S3-compatible object store on the loopback ---------------------------------
def make_image_tree(root, classes=("ant", "bee", "cat"), train: int = 8, val: int = 3, size=(24, 32), seed: int = 0):
    """An ImageFolder root with train/ and val/, ``train``/``val`` seeded RGB JPEGs (``size`` = (h, w)) per class;
    returns the root."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.full((*size, 3), 40 + 80 * c, np.uint8)
                img = np.clip(base + rng.integers(0, 60, (*size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{name}_{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def s3_store():
    """moto's S3 server on 127.0.0.1 (a free port) with authentication on: an IAM user whose key may use S3; the
    endpoint and that key. Stopped after the session."""
    import json
    import urllib.request

    server_mod = pytest.importorskip("moto.server", reason="moto[server] is a test dependency: pip install -e '.[dev]'")
    boto3 = pytest.importorskip("boto3")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log record per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap")
    iam.create_user(UserName="vanillanet-tests")
    policy = iam.create_policy(PolicyName="s3-all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    iam.attach_user_policy(UserName="vanillanet-tests", PolicyArn=policy["Policy"]["Arn"])
    key = iam.create_access_key(UserName="vanillanet-tests")["AccessKey"]

    def set_auth(count: str) -> None:  # requests after the first `count` ones are authenticated
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(),
                                                      method="POST", headers={"Content-Type": "text/plain"}))

    set_auth("0")
    yield {"endpoint": endpoint, "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    set_auth("inf")
    server.stop()


@pytest.fixture
def s3_bucket(s3_store, monkeypatch):
    """A fresh bucket on the loopback S3 store, the AWS settings pointing at it (also for subprocesses); its
    ``s3://`` URL. Short timeouts so that a failure cannot hang a test."""
    import uuid

    import boto3

    from vanillanet.data import remote

    env = {"AWS_ENDPOINT_URL": s3_store["endpoint"], "AWS_ACCESS_KEY_ID": s3_store["key_id"],
           "AWS_SECRET_ACCESS_KEY": s3_store["secret"], "AWS_DEFAULT_REGION": "us-east-1",
           "VANILLANET_IO_TIMEOUT": "10", "VANILLANET_IO_RETRIES": "2"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"vn-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_store["endpoint"], region_name="us-east-1",
                 aws_access_key_id=s3_store["key_id"], aws_secret_access_key=s3_store["secret"]).create_bucket(
        Bucket=bucket)
    remote._FILESYSTEMS.clear()
    yield f"s3://{bucket}"
    remote._FILESYSTEMS.clear()


# ---- ablation studies (tests/test_ablate_*.py) --------------------------------------------------------------------
def ablation_study(tmp_path: Path, **base) -> Path:
    """A study file of two tiny variations (base, relu) x two seeds on synthetic data, written in ``tmp_path``."""
    study = {
        "description": "two tiny variations",
        "seeds": [0, 1],
        "base": {"data": "synthetic", "synthetic_size": 32, "img_size": 32, "width_mult": 0.0625, "epochs": 2,
                 "decay_epochs": 1, "warmup_epochs": 0.5, "batch_size": 8, "workers": 0, "mixup": 0.0,
                 "cutmix": 0.0, "model_ema": False, "log_every": 100, **base},
        "variations": {"base": {"group": "tricks", "paper": 76.36, "note": "both tricks"},
                       "relu": {"group": "tricks", "set": {"series_act": False}, "note": "plain ReLU"}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def ablation_rows(values: dict[str, list[float]]) -> list[dict]:
    """runs.jsonl rows with these test top-1 values per variation (seeds 0, 1, ...)."""
    return [dict(variation=name, seed=s, test_top1=v, deploy_top1=v if name != "relu" else None,
                 deploy_agreement=1.0 if name != "relu" else None, params_train=1000, params_deploy=500,
                 macs_train=2e6, macs_deploy=1e6, wall_seconds=10.0, cpu_seconds=9.0)
            for name, vs in values.items() for s, v in enumerate(vs)]


@pytest.fixture
def nothing_runs(monkeypatch):
    """Any training run of an ablation study fails the test (what is checked must be refused before any run)."""
    import vanillanet.ablate.runs

    monkeypatch.setattr(vanillanet.ablate.runs, "_execute", lambda cfg: pytest.fail(f"a run started: {cfg.output}"))

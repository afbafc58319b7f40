"""Shared test helpers: seeded, CPU-only, small models."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels are tested in Triton's interpreter, which must be chosen before triton is
    # first imported (vanillanet imports timm, which imports triton); the kernels then run on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import vanillanet  # noqa: E402, F401  (registers the models with timm)
from vanillanet.model.network import VanillaNet  # noqa: E402
from vanillanet.model.reparam import calibrate_bn, rel_err  # noqa: E402, F401  (re-exported for the tests)
from vanillanet.model.variants import VARIANTS  # noqa: E402

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

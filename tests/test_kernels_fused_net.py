"""``kernels.fused_net``: the deploy network as fused kernels equals the eager deploy form; what it cannot run
falls back or is refused in one line."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import (
    F16,
    F32,
    build_variant,
    channels_last_tensor,
    give_realistic_bn_stats,
    kernel_device,
    rel_err,
)
from torch import nn

import vanillanet.kernels as K
from vanillanet.model.network import VanillaNet
from vanillanet.model.reparam import reparameterize_model
from vanillanet.util.errors import ConversionError

DEV = kernel_device()  # skips without Triton; cpu in Triton's interpreter, else cuda

from vanillanet.kernels.fused_net import FusedDeployNet, build_fused  # noqa: E402

_cl = functools.partial(channels_last_tensor, device=DEV)


def _deploy(model: VanillaNet, img: int) -> nn.Module:
    give_realistic_bn_stats(model, (2, model.in_chans, img, img))
    return reparameterize_model(model).to(DEV)


def _check_net(deploy: nn.Module, img: int, batch: int, dtype=F32, **plans) -> FusedDeployNet:
    x = _cl(batch, deploy.in_chans, img, img, seed=7)
    with torch.no_grad():
        want = deploy(x.float().contiguous())
        net = FusedDeployNet(deploy.to(dtype).eval(), dtype, **plans)
        out = net(x.to(dtype))
        deploy.float()
    assert out.shape == want.shape
    assert rel_err(out.float(), want) <= (1e-5 if dtype == F32 else 1e-2), plans
    return net


def test_fused_vanillanet_5_equals_eager_deploy():
    deploy = _deploy(build_variant("vanillanet_5", width_mult=1 / 32, num_classes=10), 32)
    net = _check_net(deploy, 32, batch=2)
    assert net.plans == {"stem": "patch", "stages.0": "fused-pool", "stages.1": "fused-pool",
                         "stages.2": "fused-pool"}


@pytest.mark.parametrize("plan,stem_plan,dtype", [("gemm", "conv", F32), ("linear", "patch", F32),
                                                  ("fused-pool", "patch", F16)])
def test_fused_plans_equal_eager_deploy(plan, stem_plan, dtype):
    model = VanillaNet(dims=(16, 24, 20), strides=(2, 1), act_num=2, num_classes=7)
    net = _check_net(_deploy(model, 16), 16, batch=1, dtype=dtype, plan=plan, stem_plan=stem_plan)
    assert net.plans["stages.0"] == plan and net.plans["stages.1"] in ("gemm", "linear")


def test_fused_ada_pool_and_headless_fall_back_cleanly():
    """Overlapping stride-3 stem -> cuDNN/torch conv; adaptive max-pool -> torch op between GEMM and activation;
    num_classes=0 -> pooled features."""
    model = VanillaNet(dims=(16, 24, 20), strides=(2, 2), ada_pool=(38, 0), act_num=4, num_classes=0)
    net = _check_net(_deploy(model, 24), 24, batch=1)
    assert net.plans["stem"] == "conv" and net.blocks[0].pool == 0


def test_build_fused_and_fast_inference_backend():
    from vanillanet.deploy.inference import fast_inference

    model = VanillaNet(dims=(16, 24), strides=(2,), act_num=2, num_classes=5)
    deploy = _deploy(model, 16)
    fn = K.build_fused(deploy, torch.zeros(1, 3, 16, 16, device=DEV).contiguous(memory_format=torch.channels_last))
    x = _cl(1, 3, 16, 16, seed=9)
    with torch.no_grad():
        assert rel_err(fn(x), deploy(x)) <= 1e-5
    clf = fast_inference(deploy, DEV, batch_size=1, image_size=16, backend="fused")
    assert clf.backend == "fused" and clf.max_rel_err <= 1e-5


def test_build_fused_refuses_what_it_cannot_run():
    model = VanillaNet(dims=(16, 24), strides=(2,), act_num=2, num_classes=5).to(DEV).eval()
    example = torch.zeros(1, 3, 16, 16, device=DEV)
    with pytest.raises(ConversionError, match="reparameterize_model"):
        build_fused(model, example)
    deploy = reparameterize_model(model)
    with pytest.raises(ConversionError, match="eval"):
        build_fused(deploy.train(), example)
    deploy.eval()
    with pytest.raises(ConversionError, match="run on"):
        build_fused(deploy, torch.zeros(1, 3, 16, 16, device="meta"))
    with pytest.raises(ConversionError, match="cannot run this model"):
        build_fused(deploy, torch.zeros(1, 3, 3, 3, device=DEV))  # too small: the stem gives no pixels
    relu = reparameterize_model(VanillaNet(dims=(16, 24), strides=(2,), num_classes=5, series_act=False).to(DEV))
    with pytest.raises(ConversionError, match="series_act=False"):
        build_fused(relu.eval(), example)

"""Exact conversion to the deploy form, for every variant, and the act_learn schedule."""

import copy

import pytest
import timm
import torch
from conftest import build_variant, give_realistic_bn_stats, rel_err

from vanillanet import ConversionError, VanillaNet, act_learn_schedule, reparameterize_model
from vanillanet.model.variants import VARIANTS

ALL = list(VARIANTS)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_every_variant_converts_exactly(name, dtype, tol):
    torch.manual_seed(0)
    model = build_variant(name, num_classes=7).to(dtype)
    shape = (4, 3, 64, 64)
    give_realistic_bn_stats(model, shape)
    model.eval()
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        y_train = model(x)
        deploy = reparameterize_model(model)
        y_deploy = deploy(x)
    err = rel_err(y_deploy, y_train)
    assert err <= tol, f"{name} {dtype}: relative error {err:.3g} > {tol}"
    reference = build_variant(name, num_classes=7, deploy=True)
    ref_sd, got_sd = reference.state_dict(), deploy.state_dict()
    assert list(got_sd) == list(ref_sd)
    assert all(got_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    for key, tensor in got_sd.items():
        assert tensor.stride() == torch.empty(tensor.shape).stride(), f"{key} is not plainly (NCHW) laid out"
    assert deploy.deploy and not deploy.training


def test_conversion_leaves_original_untouched_and_is_idempotent():
    torch.manual_seed(1)
    model = build_variant("vanillanet_6", num_classes=5)
    give_realistic_bn_stats(model, (2, 3, 64, 64))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deploy = reparameterize_model(model)
    assert model.training and not model.deploy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = reparameterize_model(deploy)
    sd1, sd2 = deploy.state_dict(), again.state_dict()
    assert list(sd1) == list(sd2) and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    deploy.reparameterize()  # in place on a deploy model: a no-op
    assert all(torch.equal(sd1[k], v) for k, v in deploy.state_dict().items())


@pytest.mark.parametrize("act_learn", [0.0, 0.5, 0.99])
def test_refuses_when_act_learn_is_not_one(act_learn):
    torch.manual_seed(2)
    model = build_variant("vanillanet_5", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    model.act_learn = act_learn
    y = model(x)
    with pytest.raises(ConversionError, match="act_learn is"):
        model.reparameterize()
    with pytest.raises(ConversionError):
        reparameterize_model(model)
    with pytest.raises(ConversionError):
        model.stages[0].reparameterize()
    assert not model.deploy and not model.stages[0].deploy
    assert torch.equal(model(x), y)


def test_timm_reparameterize_model_gives_the_deploy_form():
    torch.manual_seed(3)
    model = build_variant("vanillanet_7", num_classes=6)
    give_realistic_bn_stats(model, (2, 3, 64, 64))
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    ours = reparameterize_model(model)
    theirs = timm.utils.reparameterize_model(model)
    assert theirs.deploy and not model.deploy
    assert list(theirs.state_dict()) == list(ours.state_dict())
    with torch.no_grad():
        assert torch.equal(theirs(x), ours(x))
        assert rel_err(theirs(x), model(x)) < 1e-5


def test_act_learn_setter_reaches_every_layer():
    torch.manual_seed(4)
    model = build_variant("vanillanet_6", num_classes=5)
    model.act_learn = 0.25
    assert model.act_learn == 0.25
    slopes = {id(m.slope) for m in model.stages}
    assert slopes == {id(model.slope)}
    assert all(m.slope.value == 0.25 for m in model.stages)
    ema = copy.deepcopy(model)  # a copy has its own slope, shared among its own blocks
    ema.act_learn = 0.75
    assert model.act_learn == 0.25 and all(m.slope.value == 0.75 for m in ema.stages)
    assert "slope" not in "".join(model.state_dict())  # not a state_dict key: original layout kept


def test_slope_is_leaky_relu_with_act_learn():
    torch.manual_seed(5)
    block = build_variant("vanillanet_5").stages[0].eval()
    block.slope.value = 0.3
    x = torch.randn(1, 32, 8, 8)
    expected = block.act(block.pool(block.conv2(torch.nn.functional.leaky_relu(block.conv1(x), 0.3))))
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_act_learn_is_validated():
    model = build_variant("vanillanet_5")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            model.act_learn = bad
    deploy = build_variant("vanillanet_5", deploy=True)
    assert deploy.act_learn == 1.0
    deploy.act_learn = 1.0
    with pytest.raises(ConversionError, match="deploy form"):
        deploy.act_learn = 0.5


def test_full_size_vanillanet_5_converts_within_tolerance():
    """The real widths (512..4096), at a small input: fp32 relative error <= 1e-5."""
    torch.manual_seed(6)
    model = VanillaNet(num_classes=1000)
    give_realistic_bn_stats(model, (2, 3, 32, 32), batches=2)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        model.reparameterize()
        assert rel_err(model(x), y) <= 1e-5


@pytest.mark.parametrize("mode", ["linear", "cosine"])
def test_schedule_endpoints(mode):
    assert act_learn_schedule(0, 100, mode) == 0.0
    assert act_learn_schedule(50, 100, mode) == pytest.approx(0.5)
    assert act_learn_schedule(100, 100, mode) == 1.0
    assert act_learn_schedule(300, 100, mode) == 1.0
    assert act_learn_schedule(99.999, 100, mode) < 1.0
    values = [act_learn_schedule(s / 7, 10, mode) for s in range(0, 71)]  # per iteration, 7 steps an epoch
    assert values == sorted(values) and values[-1] == 1.0


def test_schedule_shapes_and_errors():
    assert act_learn_schedule(25, 100, "linear") == 0.25
    assert act_learn_schedule(25, 100, "cosine") == pytest.approx((1 - 2**-0.5) / 2)
    assert act_learn_schedule(0, 0) == 1.0
    with pytest.raises(ValueError, match="linear"):
        act_learn_schedule(1, 10, "step")

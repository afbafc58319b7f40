"""``model.reparam``: every variant converts exactly to the deploy form (fp32/fp16/bf16), the original is left
untouched, conversion is idempotent and refused while act_learn is not 1; timm's reparameterize hook."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import build_variant, give_realistic_bn_stats, rel_err

from vanillanet import ConversionError, VanillaNet, reparameterize_model
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
    with pytest.raises(ConversionError, match="act_learn is .*, not 1: the two convs of each layer"):
        reparameterize_model(model)
    with pytest.raises(ConversionError, match="act_learn is .*, not 1: the two convs of each layer"):
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

"""``model.network``: ``VanillaNet`` with timm beyond the generic contract (test_model_network_contract.py):
construction arguments and their errors, conversion after a head reset, the detection taps, pooling options, the
ada_pool sizes."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import build_variant, give_realistic_bn_stats, rel_err

from vanillanet import reparameterize_model
from vanillanet.model.network import VanillaNet
from vanillanet.model.variants import VARIANTS

NARROW = dict(width_mult=1 / 16)


def test_reset_classifier_keeps_train_form_convertible():
    torch.manual_seed(2)
    model = build_variant("vanillanet_5", num_classes=1000)
    model.reset_classifier(4)
    give_realistic_bn_stats(model, (2, 3, 64, 64))
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    deploy = reparameterize_model(model)
    assert deploy(x).shape == (2, 4) and rel_err(deploy(x), model(x)) < 1e-5
    assert list(deploy.state_dict()) == list(build_variant("vanillanet_5", num_classes=4, deploy=True).state_dict())


@pytest.mark.parametrize("deploy", [False, True])
def test_features_only_detection_taps(deploy):
    """vanillanet_13 features for detection: blocks 0, 1, 8, 10 at strides 4/8/16/32 (docs/models.md)."""
    model = timm.create_model("vanillanet_13", features_only=True, deploy=deploy, act_num=4, **NARROW)
    assert model.feature_info.channels() == [512 // 16, 1024 // 16, 2048 // 16, 4096 // 16]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    feats = model(torch.randn(1, 3, 128, 128))
    assert [f.shape[1:] for f in feats] == [(32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]


def test_constructor_arguments_and_errors():
    model = timm.create_model("vanillanet_5", in_chans=1, num_classes=3, drop_rate=0.1, act_num=4, **NARROW)
    assert model.stages[0].act.weight.shape[-1] == 9 and model.cls1[1].p == 0.1
    assert model(torch.randn(2, 1, 48, 80)).shape == (2, 3)
    custom = timm.create_model("vanillanet_5", dims=(16, 32, 64), strides=(2, 2), num_classes=2).eval()
    assert custom(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'not_an_argument'"):
        timm.create_model("vanillanet_5", not_an_argument=1)
    with pytest.raises(ValueError, match="drop_path_rate"):
        timm.create_model("vanillanet_5", drop_path_rate=0.1, **NARROW)
    with pytest.raises(ValueError, match="len"):
        timm.create_model("vanillanet_5", dims=(16, 32), strides=(2, 2))
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("vanillanet_5", global_pool="max", **NARROW)


def test_grad_checkpointing_same_result():
    torch.manual_seed(4)
    model = build_variant("vanillanet_5", num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    model.set_grad_checkpointing(True)
    assert torch.equal(model(x), ref)


@pytest.mark.parametrize("deploy", [False, True])
def test_no_pooling_with_classes_gives_per_position_logits(deploy):
    """global_pool="" keeps the (pointwise) classifier: per-position logits whose mean is the pooled model's output
    (eval mode, act_learn 1: everything after the pooling is affine)."""
    torch.manual_seed(5)
    pooled = build_variant("vanillanet_6", num_classes=4)
    give_realistic_bn_stats(pooled, (2, 3, 64, 64))
    if deploy:
        pooled = reparameterize_model(pooled)
    dense = build_variant("vanillanet_6", num_classes=4, deploy=deploy, global_pool="")
    dense.load_state_dict(pooled.state_dict())
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        out = dense.eval()(x)
        assert out.shape == (2, 4, 3, 2)
        assert rel_err(out.mean((2, 3)), pooled.eval()(x)) < 1e-5
        dense.reset_classifier(0)  # keeps the (absent) pooling
        assert dense(x).shape == (2, dense.num_features, 3, 2)


def test_ada_pool_sizes_must_be_the_ceil_rule():
    """Adaptive pools scale with the input, so fixed sizes other than ceil(side / stride) at 224 px are refused."""
    spec = VARIANTS["vanillanet_13_x1_5_ada_pool"]
    VanillaNet(dims=spec.dims, strides=spec.strides, ada_pool=spec.ada_pool, width_mult=1 / 64)  # accepted
    wrong = (0, 37, 19, 0, 0, 0, 0, 0, 0, 10, 0)
    with pytest.raises(ValueError, match=r"ada_pool=\(0, 38, 19, 0, 0, 0, 0, 0, 0, 10, 0\)"):
        VanillaNet(dims=spec.dims, strides=spec.strides, ada_pool=wrong, width_mult=1 / 64)
    with pytest.raises(ValueError, match="one entry per block"):
        VanillaNet(dims=spec.dims, strides=spec.strides, ada_pool=(0, 38), width_mult=1 / 64)

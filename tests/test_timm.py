"""timm integration: registration, the generic model interface, features_only, construction arguments."""

import pytest
import timm
import torch
from conftest import build_variant, give_realistic_bn_stats, rel_err

from vanillanet import reparameterize_model
from vanillanet.models import VARIANTS

NARROW = dict(width_mult=1 / 16)


def test_every_variant_is_registered():
    assert set(timm.list_models("vanillanet*")) >= set(VARIANTS)


@pytest.mark.parametrize(
    "name,size",
    [("vanillanet_5", 32), ("vanillanet_5", 64), ("vanillanet_5", (48, 80)), ("vanillanet_8", 32),
     ("vanillanet_8", 96), ("vanillanet_13_x1_5_ada_pool", 32)],
)
def test_forward_backward_all_parameters_get_gradients(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, in_chans=1, **NARROW)
    model.act_learn = 0.5
    h, w = (size, size) if isinstance(size, int) else size
    out = model(torch.randn(2, 1, h, w))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    # (a conv bias followed by train-mode BN has a gradient of zero in exact arithmetic, so check presence)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"
    assert model.stem1[0].weight.grad.abs().sum() > 0 and model.cls2[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("deploy", [False, True])
def test_generic_interface(deploy):
    torch.manual_seed(1)
    model = timm.create_model("vanillanet_6", num_classes=10, deploy=deploy, **NARROW).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 2, 2) and model.num_features == 4096 // 16
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert torch.equal(model.forward_head(feats), model(x))
    assert model.get_classifier().out_channels == 10
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert tuple(cfg["mean"]) == (0.485, 0.456, 0.406) and tuple(cfg["std"]) == (0.229, 0.224, 0.225)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    assert torch.allclose(model(x), feats.mean((2, 3)), atol=1e-6)


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


def test_features_only_out_indices_and_matches_full_model():
    torch.manual_seed(3)
    full = timm.create_model("vanillanet_5", **NARROW).eval()
    feat = timm.create_model("vanillanet_5", features_only=True, out_indices=(1, 2), **NARROW).eval()
    feat.model.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("cls")})
    x = torch.randn(1, 3, 64, 64)
    outs = feat(x)
    assert len(outs) == 2 and feat.feature_info.reduction() == [16, 32]
    assert torch.equal(outs[-1], full.forward_features(x))


def test_forward_intermediates():
    model = build_variant("vanillanet_6").eval()
    x = torch.randn(1, 3, 64, 64)
    final, inter = model.forward_intermediates(x, indices=[0, 3])
    assert len(inter) == 2 and torch.equal(final, model.forward_features(x))
    assert model.forward_intermediates(x, indices=2, intermediates_only=True)[-1].shape == final.shape


def test_constructor_arguments_and_errors():
    model = timm.create_model("vanillanet_5", in_chans=1, num_classes=3, drop_rate=0.1, act_num=4, **NARROW)
    assert model.stages[0].act.weight.shape[-1] == 9 and model.cls1[1].p == 0.1
    custom = timm.create_model("vanillanet_5", dims=(16, 32, 64), strides=(2, 2), num_classes=2).eval()
    assert custom(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    with pytest.raises(TypeError):
        timm.create_model("vanillanet_5", not_an_argument=1)
    with pytest.raises(ValueError, match="drop_path_rate"):
        timm.create_model("vanillanet_5", drop_path_rate=0.1, **NARROW)
    with pytest.raises(ValueError, match="len"):
        timm.create_model("vanillanet_5", dims=(16, 32), strides=(2, 2))


def test_grad_checkpointing_same_result():
    torch.manual_seed(4)
    model = build_variant("vanillanet_5", num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    model.set_grad_checkpointing(True)
    assert torch.equal(model(x), ref)


def test_ada_pool_stem_geometry():
    """The ada_pool variant's stem uses stride 3, padding 1: 224 -> 75, then adaptive pools to 38, 19, 10."""
    model = build_variant("vanillanet_13_x1_5_ada_pool", deploy=True).eval()
    _, inter = model.forward_intermediates(torch.randn(1, 3, 224, 224), indices=[0, 1, 2, 9])
    assert [t.shape[-1] for t in inter] == [75, 38, 19, 10]

"""``model.baselines``: plain_cnn_6 is the plain VanillaNet with 3x3 convs, and round-trips through a hub folder."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import build_variant, give_realistic_bn_stats, rel_err

from vanillanet import ConfigError
from vanillanet.model.baselines import PlainCNN, baseline_kwargs
from vanillanet.model.registry import create_model


def test_plain_cnn_is_the_plain_vanillanet_with_3x3_convs():
    net = timm.create_model("plain_cnn_6", num_classes=10, in_chans=1, width_mult=1 / 16)
    neither = build_variant("vanillanet_6", num_classes=10, in_chans=1, deep_training=False, series_act=False)
    assert sum(p.numel() for p in PlainCNN(1, 10, width_mult=1 / 16, kernel_size=1).parameters()) == sum(
        p.numel() for p in neither.parameters())
    assert [m.kernel_size for m in net.modules() if isinstance(m, torch.nn.Conv2d)] == [(4, 4)] + [(3, 3)] * 4 + [
        (1, 1)]
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    resnet = timm.create_model("resnet18", **baseline_kwargs("resnet18", num_classes=10, in_chans=1, drop_rate=0.0,
                                                             width_mult=0.25))
    assert [resnet.layer1[0].conv1.out_channels, resnet.layer4[0].conv1.out_channels] == [16, 128]
    with pytest.raises(ConfigError, match="unknown baseline"):
        baseline_kwargs("resnet50", num_classes=10, in_chans=1, drop_rate=0.0, width_mult=1.0)


def test_plain_relu_network_round_trips_through_a_hub_folder(tmp_path):
    """series_act=False is the one option a deploy form keeps: the Hub folder records it so that it reloads."""
    from vanillanet.hub import export_hf

    torch.manual_seed(6)
    model = build_variant("vanillanet_6", num_classes=3, series_act=False)
    give_realistic_bn_stats(model, (2, 3, 32, 32))
    export_hf(model.eval(), tmp_path / "hub")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reloaded = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
        assert not reloaded.series_act and rel_err(reloaded(x), model(x)) <= 1e-5
        assert rel_err(create_model(None, tmp_path / "hub").eval()(x), model(x)) <= 1e-5

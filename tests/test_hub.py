"""Hugging Face Hub folders: export, offline reload through timm's local-dir and our loaders, identical outputs,
the model card, and the refusals."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import give_realistic_bn_stats, rel_err

from vanillanet.cli import main
from vanillanet.hub import export_hf
from vanillanet.model.checkpoint_files import save_weights
from vanillanet.model.network import VanillaNet
from vanillanet.model.registry import create_model
from vanillanet.model.reparam import reparameterize_model
from vanillanet.util.errors import ConfigError, ConversionError

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A narrow train-form vanillanet_6 with realistic BN statistics, saved with class names and preprocessing."""
    torch.manual_seed(0)
    model = create_model("vanillanet_6", num_classes=3, width_mult=1 / 16, in_chans=1)
    give_realistic_bn_stats(model, (4, 1, 32, 32))
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    save_weights(model.eval(), path, class_names=CLASSES, extra_meta={"top1": 0.875, "dataset": "toy", "img_size": 32,
                                                                       "mean": [0.5], "std": [0.25], "crop_pct": 1.0})
    return model, path


def test_round_trip_through_timm_and_our_loaders(trained, tmp_path):
    model, path = trained
    out = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(path), "--format", "hf", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vanillanet_6" and config["num_classes"] == 3
    assert config["label_names"] == CLASSES and config["model_args"]["deploy"] is True
    assert config["pretrained_cfg"]["input_size"] == [1, 32, 32] and config["pretrained_cfg"]["mean"] == [0.5]
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reparameterize_model(model)(x)
        via_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert via_timm.deploy and torch.equal(via_timm(x), ref)
        ours = create_model(None, out).eval()
        assert rel_err(ours(x), ref) == 0.0
    assert ours.checkpoint_meta["class_names"] == CLASSES and ours.checkpoint_meta["img_size"] == 32
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and "87.50 %" in card and "cat, dog, fox" in card
    assert f"{sum(p.numel() for p in via_timm.parameters()):,}" in card


def test_predict_and_eval_accept_the_folder(trained, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "hub"
    export_hf(create_model(None, trained[1]), out)
    Image.new("L", (40, 40), 128).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(out), "--topk", "2"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(str(tmp_path / "x.png")) and any(c in line for c in CLASSES)


def test_refusals(trained, tmp_path):
    model, _ = trained
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_hf(model, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    odd = VanillaNet(dims=(8, 16, 24), strides=(2, 1), num_classes=2)
    odd.act_learn = 1.0
    with pytest.raises(ConversionError, match="only registered variants"):
        export_hf(odd, tmp_path / "odd")
    assert not (tmp_path / "odd").exists() and not list(tmp_path.glob(".odd*"))

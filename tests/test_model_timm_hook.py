"""``model.timm_hook``: ``timm.create_model(..., pretrained=True)`` with our files: the overlay, fine-tuning and
``in_chans``, partly trained files."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from conftest import (
    CKPT_WIDTH,
    assert_same_weights,
    layouts,
    narrow_model,
    rel_err,
)

from vanillanet import ConversionError
from vanillanet.model.checkpoint_files import save_weights


@pytest.mark.parametrize("layout", ["original", "openmixup", "safetensors"])
def test_timm_pretrained_overlay(ckpt_source, ckpt_input, tmp_path, layout):
    model, ema = ckpt_source
    if layout == "safetensors":
        path = save_weights(model, tmp_path / "w.safetensors")
        expected = model.state_dict()
    else:
        path = tmp_path / "w.pth"
        torch.save(layouts(model, ema)[layout], path)
        expected = ema if layout == "original" else model.state_dict()
    loaded = timm.create_model("vanillanet_5", pretrained=True, width_mult=CKPT_WIDTH, num_classes=10,
                               pretrained_cfg_overlay=dict(file=str(path)))
    assert_same_weights(loaded, expected)  # the 10-class head is kept although the default config says 1000
    deploy = timm.create_model("vanillanet_5", pretrained=True, width_mult=CKPT_WIDTH, num_classes=10, deploy=True,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    reference = narrow_model(num_classes=10).eval()
    reference.load_state_dict(expected)
    with torch.no_grad():
        assert rel_err(deploy(ckpt_input), reference(ckpt_input)) < 1e-5


def test_timm_pretrained_finetune_and_in_chans(ckpt_source, tmp_path, caplog):
    path = save_weights(ckpt_source[0], tmp_path / "w.safetensors")
    with caplog.at_level(logging.INFO, logger="vanillanet"):
        tuned = timm.create_model("vanillanet_5", pretrained=True, width_mult=CKPT_WIDTH, num_classes=4, in_chans=1,
                                  pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    lines = [r.getMessage() for r in caplog.records if r.name == "vanillanet"]
    assert any("4-class head is freshly initialised" in line for line in lines)
    assert any("adapted the 3-channel stem to in_chans=1" in line for line in lines)
    assert tuned(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    assert torch.equal(tuned.stem1[0].weight, ckpt_source[0].stem1[0].weight.sum(1, keepdim=True))


@pytest.mark.parametrize("kind", ["pth", "legacy pth", "safetensors", "whole dict"])
def test_timm_pretrained_partly_trained_file(ckpt_source, tmp_path, kind):
    """timm unpacks local files (dropping act_learn); the hook reads it back, so a deploy model still refuses."""
    half = narrow_model(num_classes=10)
    half.load_state_dict(ckpt_source[0].state_dict())
    half.act_learn = 0.5
    ckpt = {"model": half.state_dict(), "model_ema": half.state_dict(), "act_learn": 0.5}
    if kind == "whole dict":
        overlay = dict(state_dict=ckpt, num_classes=10)
    else:
        path = tmp_path / ("half.safetensors" if kind == "safetensors" else "half.pth")
        if kind == "safetensors":
            save_weights(half, path)
        else:
            torch.save(ckpt, path, _use_new_zipfile_serialization=kind == "pth")
        overlay = dict(file=str(path), num_classes=10)
    kwargs = dict(pretrained=True, width_mult=CKPT_WIDTH, num_classes=10, pretrained_cfg_overlay=overlay)
    with pytest.raises(ConversionError, match="act_learn is 0.5"):
        timm.create_model("vanillanet_5", deploy=True, **kwargs)
    assert timm.create_model("vanillanet_5", **kwargs).act_learn == 0.5  # the recorded slope comes with the weights

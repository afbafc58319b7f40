"""``model.weight_loading``: fitting a file's weights to a model: EMA preference, conversion on load,
architecture inference and its one-line refusals, fine-tuning with a new head, timm's filter."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from conftest import (
    CKPT_WIDTH,
    assert_same_weights,
    build_variant,
    checkpoint_error,
    layouts,
    narrow_model,
    rel_err,
)

from vanillanet import ConversionError
from vanillanet.model.checkpoint_files import load_checkpoint_file, save_weights
from vanillanet.model.registry import create_model
from vanillanet.model.reparam import reparameterize_model
from vanillanet.model.weight_loading import filter_state_dict, load_weights
from vanillanet.util.errors import CheckpointError

HEAD = ("cls1.2.", "cls1.3.", "cls2.0.")


def test_ema_preferred_and_use_ema_false_picks_model(ckpt_source, tmp_path):
    model, ema = ckpt_source
    path = tmp_path / "original.pth"
    torch.save(layouts(model, ema)["original"], path)
    target = narrow_model(num_classes=10)
    report = load_weights(target, path)
    assert report.source == "model_ema" and report.layout == "original"
    assert_same_weights(target, ema)
    report = load_weights(target, path, use_ema=False)
    assert report.source == "model"
    assert_same_weights(target, model.state_dict())
    meta = load_checkpoint_file(path)["meta"]
    assert meta["architecture"] == "vanillanet_5" and meta["args"]["decay_epochs"] == 100 and meta["epoch"] == 299


def test_train_file_into_deploy_model_converts(ckpt_source, ckpt_input, tmp_path):
    model, _ = ckpt_source
    path = tmp_path / "train.pth"
    torch.save({"model": model.state_dict()}, path)
    deploy = create_model("vanillanet_5", path, deploy=True).eval()
    assert deploy.deploy and "stem.0.weight" in deploy.state_dict()
    with torch.no_grad():
        assert rel_err(deploy(ckpt_input), model(ckpt_input)) < 1e-5
    target = narrow_model(num_classes=10, deploy=True)
    assert load_weights(target, path).converted


def test_deploy_from_partly_trained_file_refused(ckpt_source, tmp_path):
    model, _ = ckpt_source
    path = tmp_path / "mid.pth"
    torch.save({"model": model.state_dict(), "act_learn": 0.5}, path)
    with pytest.raises(ConversionError, match="act_learn is 0.5"):
        create_model("vanillanet_5", path, deploy=True)
    train = create_model("vanillanet_5", path)
    assert train.act_learn == 0.5  # the recorded slope comes with the weights


def test_wrong_architecture_names_the_variant(tmp_path):
    path = tmp_path / "v6.pth"
    torch.save({"model": narrow_model("vanillanet_6", num_classes=10).state_dict()}, path)
    checkpoint_error(path, "holds weights for vanillanet_6 with width_mult 0.125 .*not vanillanet_5: create "
                     "vanillanet_6")
    with pytest.raises(CheckpointError, match="holds weights for vanillanet_6 .* but the model is vanillanet_5"):
        load_weights(timm.create_model("vanillanet_5", width_mult=CKPT_WIDTH, num_classes=10), path)


def test_act_num_mismatch(tmp_path):
    path = tmp_path / "act4.pth"
    torch.save({"model": narrow_model(num_classes=10, act_num=4).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"9x9 activation kernels \(act_num=4\) but the model has 7x7 "
                                              r"\(act_num=3\): build the model with act_num=4"):
        load_weights(narrow_model(num_classes=10), path)
    checkpoint_error(path, "act_num=4", act_num=3)
    assert create_model("vanillanet_5", path).act_num == 4  # read from the file by default


def test_num_classes_and_in_chans_mismatch(ckpt_source, tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"model": ckpt_source[0].state_dict()}, path)
    with pytest.raises(CheckpointError, match="10-class head but the model has 5 classes: build the model with "
                                              "num_classes=10"):
        load_weights(narrow_model(num_classes=5), path, reset_head=False)
    checkpoint_error(path, "expects 3-channel input but the model has in_chans=1: build the model with in_chans=3",
                     in_chans=1)


def test_deploy_file_into_train_model(ckpt_source, tmp_path):
    path = save_weights(reparameterize_model(ckpt_source[0]), tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="deploy-form .* cannot be split back into the train form"):
        load_weights(narrow_model(num_classes=10), path)


def test_not_vanillanet_weights(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 3, 3)}}, path)
    checkpoint_error(path, "holds no VanillaNet weights")


def test_ambiguous_variant_needs_a_name(tmp_path):
    path = tmp_path / "x15.pth"
    torch.save({"model": build_variant("vanillanet_13_x1_5_ada_pool", num_classes=4).state_dict()}, path)
    with pytest.raises(CheckpointError, match="vanillanet_13_x1_5 and vanillanet_13_x1_5_ada_pool.*--model NAME"):
        create_model(None, path)
    assert create_model("vanillanet_13_x1_5_ada_pool", path).ada_pool is not None


@pytest.mark.parametrize("deploy", [False, True])
def test_finetune_resets_only_the_head_and_says_so(ckpt_source, tmp_path, caplog, deploy):
    model, _ = ckpt_source
    path = tmp_path / "w.pth"
    torch.save({"model": model.state_dict()}, path)
    with caplog.at_level(logging.INFO, logger="vanillanet"):
        tuned = create_model("vanillanet_5", path, num_classes=3, deploy=deploy)
    lines = [r.getMessage() for r in caplog.records if r.name == "vanillanet"]
    assert len(lines) == 1 and "10-class head" in lines[0] and "3-class head is freshly initialised" in lines[0]
    assert tuned.num_classes == 3 and tuned.get_classifier().out_channels == 3
    reference = reparameterize_model(model).state_dict() if deploy else model.state_dict()
    head = ("cls.2.",) if deploy else HEAD
    got = tuned.state_dict()
    for key, value in reference.items():
        if not key.startswith(head):
            assert torch.equal(got[key], value), key
    classifier = tuned.get_classifier()
    assert classifier.weight.std() > 0 and torch.all(classifier.bias == 0)  # trunc-normal init, not stale weights


def test_filter_accepts_a_whole_checkpoint(ckpt_source):
    model, ema = ckpt_source
    fitted = filter_state_dict(layouts(model, ema)["original_ddp"], narrow_model(num_classes=10))
    assert all(torch.equal(fitted[k], v) for k, v in model.state_dict().items())

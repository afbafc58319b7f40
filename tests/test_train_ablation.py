"""Training the ablation variants and baselines through the same train(cfg): no act_learn without deep training,
no deploy metrics without a deploy form, the options recorded in the checkpoint, and a fixed training subset."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from vanillanet.model.checkpoint_files import load_checkpoint_file
from vanillanet.model.registry import create_model
from vanillanet.train import train
from vanillanet.util.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out, *extra):
    return tiny_config(out, *extra, synthetic_size=32, batch_size=8, warmup_epochs=0.5, mixup=0, cutmix=0,
                       model="vanillanet_6", seed=None, log_every=None)


@pytest.mark.parametrize("extra,deploy", [(["deep_training=false"], True), (["shortcut=true"], False),
                                          (["model=resnet18", "width_mult=0.125"], False),
                                          (["model=plain_cnn_6"], False)])
def test_variants_and_baselines_train(tmp_path, extra, deploy):
    seen = []
    summary = train(tiny(tmp_path, *extra), on_step=seen.append)
    assert summary["status"] == "completed" and 0 <= summary["test_top1"] <= 1
    deep = extra[0].startswith("shortcut")  # the only one of these with deep training
    assert summary["act_learn"] == 1.0
    # act_learn is scheduled (0 -> 1) with deep training only; without it the layers are single convs: 1 throughout
    assert (seen[0]["act_learn"] < 1.0) == deep and all(r["act_learn"] == 1.0 for r in seen if not deep)
    if deploy:
        assert summary["deploy_agreement"] == 1.0 and summary["deploy_test_top1"] == summary["test_top1"]
        assert summary["params_deploy"] < summary["params_train"] and summary["deploy_weights"]
    else:
        assert summary["deploy_test_top1"] is None and summary["deploy_agreement"] is None
        assert summary["params_deploy"] is None and summary["deploy_weights"] is None
    assert (tmp_path / "training.png").is_file()


def test_options_are_recorded_in_training_checkpoints(tmp_path):
    summary = train(tiny(tmp_path, "deep_training=false", "series_act=false"))
    ckpt = load_checkpoint_file(summary["checkpoint"])
    assert (ckpt["meta"]["deep_training"], ckpt["meta"]["series_act"]) == (False, False)
    model = create_model(None, summary["checkpoint"])
    assert (model.deep_training, model.series_act, model.shortcut) == (False, False, False)
    shortcut = train(tiny(tmp_path / "s", "shortcut=true"))
    assert create_model(None, shortcut["checkpoint"]).shortcut


def test_train_subset_is_fixed_and_checked(tmp_path):
    summary = train(tiny(tmp_path, "train_subset=16"))
    assert summary["steps"] == 2 * 16 // 8
    with pytest.raises(ConfigError, match="train_subset must lie in 1..32"):
        train(tiny(tmp_path / "big", "train_subset=33"))


def test_baselines_refuse_vanillanet_options(tmp_path):
    with pytest.raises(ConfigError, match=r"resnet18 is a baseline: the setting\(s\) series_act apply to VanillaNet"):
        train(tiny(tmp_path, "model=resnet18", "series_act=false"))

"""model/registry.py: the one model factory ``create_model``: name checks, create_model's argument checks (one
TypeError naming the argument) and the size limit on every route that builds a model, timm's local-dir: included,
with a message that states the count right."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import CKPT_WIDTH, build_variant

from vanillanet import VanillaNet
from vanillanet.model.registry import MAX_PARAMS, create_model
from vanillanet.util.errors import ConfigError


def test_create_model_without_checkpoint():
    model = create_model("vanillanet_5", num_classes=3, width_mult=CKPT_WIDTH)
    assert isinstance(model, VanillaNet) and model.num_classes == 3
    for checkpoint in (None, "missing.pth"):  # the name is checked before the file is read
        with pytest.raises(ConfigError, match="unknown model 'vanillanet_99': choose one of vanillanet_5, "):
            create_model("vanillanet_99", checkpoint)


def test_an_implied_model_above_the_limit_is_refused(tmp_path):
    model = build_variant("vanillanet_5", num_classes=10)
    sd = model.state_dict()
    sd["cls2.0.weight"] = torch.zeros(300_000, 1, 1, 1)  # 1.2 MB, but the train-form head is 300k x 300k
    torch.save({"model": sd}, tmp_path / "wide.pth")
    with pytest.raises(ConfigError, match=r"implies a train-form vanillanet_5 of 90.1 billion parameters \(90.1 "
                                          r"billion of them in the 300,000-class head.*--allow-large"):
        create_model(None, tmp_path / "wide.pth")
    with pytest.raises(ConfigError, match="above the limit of 1.0 billion"):
        create_model("vanillanet_5", num_classes=2_000_000)
    with torch.device("meta"):  # the largest variant, full width, is well within the limit
        largest = create_model("vanillanet_13_x1_5")
    assert 0.2 * MAX_PARAMS < sum(p.numel() for p in largest.parameters()) < 0.3 * MAX_PARAMS


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((), {"bogus_kwarg": 1}, "unexpected keyword argument 'bogus_kwarg'; it accepts act_num"),
    (("vanillanet_5",), {"bogus_kwarg": 1}, "unexpected keyword argument 'bogus_kwarg'"),
    ((None, 123), {}, r"checkpoint must be a path \(str or os.PathLike\) or None, got int 123"),
    ((5,), {}, r"name must be a variant name \(str\) or None, got int 5"),
    (("vanillanet_5",), {"num_classes": "10"}, "num_classes must be an integer or None, got str '10'"),
    (("vanillanet_5",), {"in_chans": 2.5}, "in_chans must be an integer, got float 2.5"),
    (("vanillanet_5",), {"dims": "abc"}, "dims must be a sequence of integers"),
])
def test_wrong_arguments_are_one_type_error_naming_them(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        create_model(*args, **kwargs)


def test_no_model_at_all_is_a_config_error():
    with pytest.raises(ConfigError, match="no model given"):
        create_model()


def test_the_size_message_states_the_form_and_the_real_count():
    with pytest.raises(ConfigError, match=r"implies a deploy-form vanillanet_5 of 257.0 billion parameters "
                                          r"\(257.0 billion of them in the 1,000,000,000-class head"):
        create_model("vanillanet_5", num_classes=10**9, width_mult=1 / 16, deploy=True)
    with pytest.raises(ConfigError, match=r"train-form vanillanet_5 of 1.0e\+18 parameters"):  # classes x classes
        create_model("vanillanet_5", num_classes=10**9, width_mult=1 / 16)
    with pytest.raises(ConfigError, match="above the limit of 1.0 billion: refusing to allocate it"):
        timm.create_model("vanillanet_5", num_classes=10**9)  # timm's own route is limited too
    assert MAX_PARAMS == 10**9


def test_timm_local_dir_route_is_size_limited(tmp_path):
    from safetensors.torch import load_file, save_file

    from vanillanet.hub import export_hf

    torch.manual_seed(0)
    out = tmp_path / "hub"
    export_hf(create_model("vanillanet_5", num_classes=3, width_mult=1 / 16), out)
    config = json.loads((out / "config.json").read_text())
    config["num_classes"] = config["model_args"]["num_classes"] = 10**9
    del config["vanillanet"]  # a folder from elsewhere: no digest stops it first
    (out / "config.json").write_text(json.dumps(config))
    save_file(load_file(str(out / "model.safetensors")), str(out / "model.safetensors"))
    with pytest.raises(ConfigError, match=f"local-dir:{out} implies a deploy-form vanillanet_5 of 257.0 billion"):
        timm.create_model(f"local-dir:{out}", pretrained=True)


def test_allow_large_lifts_the_limit_on_the_meta_device():
    with torch.device("meta"):
        model = create_model("vanillanet_5", num_classes=10**6, allow_large=True)
    assert model.num_classes == 10**6

"""``model.ablation``: the ablation options of VanillaNet (deep_training, series_act, act_num 0..4, shortcut): exact
conversion where a deploy form exists, a clear refusal where none does, the original keys with the defaults, and
the options read back from checkpoints."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import build_variant, give_realistic_bn_stats, rel_err

from vanillanet import CheckpointError, ConfigError, ConversionError, reparameterize_model
from vanillanet.convert import convert_checkpoint
from vanillanet.model.ablation import ResidualBlock, ResidualSingleConvBlock, SingleConvBlock
from vanillanet.model.checkpoint_files import save_weights
from vanillanet.model.registry import create_model
from vanillanet.model.weight_loading import infer_weights_info, load_weights

OPTIONS = {
    "no_deep_training": dict(deep_training=False),
    "no_series_act": dict(series_act=False),
    "neither": dict(deep_training=False, series_act=False),
    **{f"act_num_{n}": dict(act_num=n) for n in (0, 1, 2, 4)},  # 3 is the default (test_reparam.py)
    "no_deep_training_act_num_0": dict(deep_training=False, act_num=0),
}


def _deploy_kwargs(options: dict) -> dict:
    return {k: v for k, v in options.items() if k != "deep_training"}  # the deploy form has no trace of it


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_options_convert_exactly_to_the_deploy_layout(name, dtype, tol):
    options = OPTIONS[name]
    torch.manual_seed(0)
    model = build_variant("vanillanet_6", num_classes=7, **options).to(dtype)
    give_realistic_bn_stats(model, (4, 3, 64, 64))
    model.eval()
    x = torch.randn(4, 3, 64, 64, dtype=dtype)
    with torch.no_grad():
        y = model(x)
        deploy = reparameterize_model(model)
        err = rel_err(deploy(x), y)
    assert err <= tol, f"{name} {dtype}: relative error {err:.3g} > {tol}"
    reference = build_variant("vanillanet_6", num_classes=7, deploy=True, **_deploy_kwargs(options)).state_dict()
    got = deploy.state_dict()
    assert list(got) == list(reference) and all(got[k].shape == reference[k].shape for k in reference)
    assert all(t.is_contiguous() for t in got.values())
    assert deploy.deploy and not model.deploy


def test_no_deep_training_with_ada_pool_and_stride_3_stem_converts_exactly():
    torch.manual_seed(1)
    model = build_variant("vanillanet_13_x1_5_ada_pool", width_mult=1 / 64, num_classes=5, deep_training=False)
    model = model.double()
    give_realistic_bn_stats(model, (2, 3, 80, 80), batches=2)
    model.eval()
    x = torch.randn(2, 3, 80, 80, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(reparameterize_model(model)(x), model(x)) <= 1e-12


def test_defaults_keep_the_original_keys():
    default, explicit = build_variant("vanillanet_5"), build_variant("vanillanet_5", deep_training=True,
                                                                     series_act=True, shortcut=False)
    assert list(default.state_dict()) == list(explicit.state_dict())
    assert len(default.state_dict()) == 89 and "stem2.2.weight" in default.state_dict()
    assert len(build_variant("vanillanet_5", deploy=True).state_dict()) == 18
    assert type(default.stages[0]).__name__ == "Block"


def test_no_deep_training_layout_and_act_learn():
    model = build_variant("vanillanet_6", num_classes=4, deep_training=False)
    keys = list(model.state_dict())
    assert keys[:2] == ["stem.0.0.weight", "stem.0.0.bias"] and "stages.0.conv.1.running_var" in keys
    assert not any(k.startswith(("stem1", "stem2", "cls1", "cls2")) or "conv1" in k for k in keys)
    assert all(isinstance(b, SingleConvBlock) for b in model.stages) and not hasattr(model, "slope")
    assert model.act_learn == 1.0
    model.act_learn = 1.0
    with pytest.raises(ConfigError, match="without deep training"):
        model.act_learn = 0.5
    torch.manual_seed(2)
    give_realistic_bn_stats(model, (2, 3, 64, 64))
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    theirs = timm.utils.reparameterize_model(model)  # through the conversion hook, as for the deep form
    assert theirs.deploy and rel_err(theirs(x), model(x)) <= 1e-5


def test_no_series_act_is_a_plain_relu():
    model = build_variant("vanillanet_6", num_classes=4, series_act=False).eval()
    assert not any(".act." in k or k.startswith("stem2.2") for k in model.state_dict())
    x = torch.randn(2, 32, 16, 16)
    block = model.stages[0]
    with torch.no_grad():
        expected = torch.relu(block.pool(block.conv2(block.slope(block.conv1(x)))))
        assert torch.equal(block(x), expected)


def test_shortcut_adds_the_input_where_shapes_match_and_refuses_conversion():
    torch.manual_seed(3)
    plain = build_variant("vanillanet_6", num_classes=4)
    model = build_variant("vanillanet_6", num_classes=4, shortcut=True)
    model.load_state_dict(plain.state_dict())  # same keys
    kinds = [type(b) for b in model.stages]
    assert kinds == [type(b) for b in plain.stages][:3] + [ResidualBlock]  # only the stride-1 256 -> 256 block
    x = torch.randn(2, 256, 2, 2)
    with torch.no_grad():
        assert torch.allclose(model.stages[3].eval()(x), x + plain.stages[3].eval()(x))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for convert in (model.reparameterize, lambda: reparameterize_model(model), model.stages[3].reparameterize,
                    lambda: timm.utils.reparameterize_model(model)):
        with pytest.raises(ConversionError, match="not a plain network") as info:
            convert()
        assert "\n" not in str(info.value)
    assert not model.deploy and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    single = build_variant("vanillanet_6", num_classes=4, shortcut=True, deep_training=False)
    assert isinstance(single.stages[3], ResidualSingleConvBlock)
    with pytest.raises(ConversionError, match="not a plain network"):
        reparameterize_model(single)
    with pytest.raises(ValueError, match="no deploy form"):
        build_variant("vanillanet_6", shortcut=True, deploy=True)
    with pytest.raises(ValueError, match="no block keeps its input shape"):
        build_variant("vanillanet_5", shortcut=True)


@pytest.mark.parametrize("options", [dict(deep_training=False), dict(series_act=False),
                                     dict(series_act=False, deploy=True), dict(shortcut=True),
                                     dict(shortcut=True, deep_training=False)],
                         ids=["no_deep_training", "no_series_act", "no_series_act-deploy", "shortcut",
                              "shortcut-no_deep_training"])
def test_option_models_capture_with_torchscript_and_fx(options):
    """The forms the options add are captured like the paper's (see test_model_contract.py): TorchScript, FX and
    the FX graph scripted (timm's route) equal eager, also at another input size."""
    torch.manual_seed(7)
    model = build_variant("vanillanet_6", num_classes=5, **options)
    if not model.deploy:
        give_realistic_bn_stats(model, (2, 3, 64, 48))
    model.eval()
    scripted, traced = torch.jit.script(model), torch.fx.symbolic_trace(model)
    traced_scripted = torch.jit.script(traced)
    with torch.no_grad():
        for hw in ((64, 48), (40, 72)):
            x = torch.randn(2, 3, *hw)
            y = model(x)
            assert rel_err(scripted(x), y) <= 1e-6 and rel_err(traced(x), y) <= 1e-6
            assert rel_err(traced_scripted(x), y) <= 1e-6


def test_act_num_is_validated():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="act_num"):
            build_variant("vanillanet_5", act_num=bad)


@pytest.mark.parametrize("options", [dict(deep_training=False), dict(series_act=False),
                                     dict(deep_training=False, series_act=False)])
def test_options_are_inferred_from_the_keys(tmp_path, options):
    torch.manual_seed(4)
    model = build_variant("vanillanet_6", num_classes=3, in_chans=1, **options)
    give_realistic_bn_stats(model, (2, 1, 64, 64))
    model.eval()
    sd = model.state_dict()
    info = infer_weights_info(sd)
    assert (info.form, info.deep_training, info.series_act) == ("train", options.get("deep_training", True),
                                                               options.get("series_act", True))
    assert info.dims == model.dims and info.act_num == (3 if info.series_act else None)
    torch.save(sd, tmp_path / "bare.pth")  # no metadata at all: the keys alone tell
    x = torch.randn(2, 1, 64, 64)
    loaded = create_model(None, tmp_path / "bare.pth").eval()
    assert (loaded.deep_training, loaded.series_act) == (model.deep_training, model.series_act)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        deploy = create_model(None, tmp_path / "bare.pth", deploy=True).eval()  # converted while loading
        assert rel_err(deploy(x), model(x)) <= 1e-5
    save_weights(reparameterize_model(model), tmp_path / "deploy.safetensors")
    again = create_model(None, tmp_path / "deploy.safetensors")
    assert again.deploy and again.series_act == model.series_act
    with torch.no_grad():
        assert rel_err(again.eval()(x), model(x)) <= 1e-5


def test_mismatched_options_are_refused_in_one_line(tmp_path):
    model = build_variant("vanillanet_6", num_classes=3, deep_training=False)
    torch.save(model.state_dict(), tmp_path / "single.pth")
    with pytest.raises(CheckpointError, match="trained without deep training.*deep_training=False"):
        load_weights(build_variant("vanillanet_6", num_classes=3), tmp_path / "single.pth")
    torch.save(build_variant("vanillanet_6", num_classes=3, series_act=False).state_dict(), tmp_path / "relu.pth")
    with pytest.raises(CheckpointError, match="has no series activation.*series_act=False") as info:
        load_weights(build_variant("vanillanet_6", num_classes=3), tmp_path / "relu.pth")
    assert "\n" not in str(info.value)


def test_shortcut_is_recorded_and_its_conversion_refused(tmp_path):
    torch.manual_seed(5)
    model = build_variant("vanillanet_6", num_classes=3, shortcut=True)
    give_realistic_bn_stats(model, (2, 3, 64, 64))
    path = save_weights(model.eval(), tmp_path / "shortcut.safetensors")
    loaded = create_model(None, path).eval()
    assert loaded.shortcut and isinstance(loaded.stages[3], ResidualBlock)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ConversionError, match="not a plain network"):
        convert_checkpoint(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(ConversionError, match="not a plain network"):
        create_model(None, path, deploy=True)
    with pytest.raises(CheckpointError, match="records shortcut=True"):
        load_weights(build_variant("vanillanet_6", num_classes=3), path)

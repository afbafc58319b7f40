"""Recipes and config layering: the shipped YAMLs equal the published table (docs/training.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vanillanet.training.config import TrainConfig, list_recipes, load_recipe, resolve_config
from vanillanet.util.errors import ConfigError

# Published (official README): model -> (lr, weight decay, head dropout, mixup alpha, layer decay (rate, layers))
PUBLISHED = {
    "vanillanet_5": (3.5e-3, 0.35, 0.05, 0.1, None),
    "vanillanet_6": (4.8e-3, 0.32, 0.05, 0.15, (0.8, 4)),
    "vanillanet_7": (4.7e-3, 0.35, 0.05, 0.4, (0.8, 5)),
    "vanillanet_8": (3.5e-3, 0.30, 0.05, 0.4, None),
    "vanillanet_9": (3.5e-3, 0.30, 0.05, 0.4, None),
    "vanillanet_10": (3.5e-3, 0.25, 0.05, 0.4, None),
}
SHARED = dict(
    epochs=300, decay_epochs=100.0, act_learn_mode="linear", act_learn_update="epoch", opt="lamb", opt_eps=1e-8,
    opt_betas=(0.9, 0.999), clip_grad=None, min_lr=1e-6, warmup_epochs=5.0, warmup_lr=0.0, img_size=224,
    crop_pct=0.875, interpolation="bicubic", aa="rand-m7-mstd0.5-inc1", scale=(0.08, 1.0), hflip=0.5, reprob=0.25,
    remode="pixel", cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch", smoothing=0.1,
    bce_loss=True, model_ema=True, model_ema_decay=0.99996, amp=True, amp_dtype="float16", lr_base_size=1024,
    lr_base_scale="sqrt",
)
DERIVED = ["vanillanet_11", "vanillanet_12", "vanillanet_13", "vanillanet_13_x1_5", "vanillanet_13_x1_5_ada_pool"]


def _check_published(cfg: TrainConfig, name: str, skip: tuple[str, ...] = ()) -> None:
    lr, wd, drop, mixup, layer_decay = PUBLISHED[name]
    assert (cfg.model, cfg.lr, cfg.weight_decay, cfg.drop_rate, cfg.mixup) == (name, lr, wd, drop, mixup)
    assert (cfg.layer_decay, cfg.layer_decay_layers) == (layer_decay or (None, None))
    assert cfg.batch_size * 8 == 1024 == cfg.lr_base_size  # 8 GPUs x 128
    for key, value in SHARED.items():
        if key not in skip:
            assert getattr(cfg, key) == value, key


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_recipes_match_the_table(name):
    _check_published(resolve_config(name), name)
    _check_published(resolve_config(f"{name}_8xb128_fp16_ep300"), name)  # the OpenMixup name
    assert list_recipes()[name]["derived"] is False


def test_defaults_are_the_paper_recipe():
    # img_size / crop_pct default to the data source's (224 / 0.875 for an ImageNet folder)
    _check_published(TrainConfig(), "vanillanet_5", skip=("img_size", "crop_pct"))


@pytest.mark.parametrize("name", DERIVED)
def test_derived_recipes_are_marked_and_explained(name):
    raw = list_recipes()[name]
    assert raw["derived"] is True
    text = (Path(__import__("vanillanet").__file__).parent / "recipes" / f"{name}.yaml").read_text()
    assert "DERIVED" in text and "Derivation" in text
    cfg = resolve_config(name)
    assert cfg.model == name and cfg.layer_decay is None
    for key, value in SHARED.items():
        assert getattr(cfg, key) == value, key


def test_every_shipped_recipe_resolves():
    names = list(list_recipes())
    assert set(PUBLISHED) | set(DERIVED) | {"fashion_mnist"} <= set(names)
    for name in names:
        resolve_config(name)


def test_layering_order_and_types():
    cfg = resolve_config("vanillanet_6", {"lr": 1e-3, "epochs": 10}, ["lr=2e-3", "scale=[0.5, 1]", "decay_epochs=3",
                                                                        "layer_decay=null", "amp=false"])
    assert cfg.lr == 2e-3 and cfg.epochs == 10 and cfg.weight_decay == 0.32  # --set > flags > recipe
    assert cfg.scale == (0.5, 1.0) and cfg.layer_decay is None and cfg.amp is False
    assert cfg.recipe == "vanillanet_6"
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'lr'"):
        cfg.lr = 1.0


def test_recipe_file_path(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("model: vanillanet_7\nlr: 0.001\nderived: true\n")
    cfg = resolve_config(str(f))
    assert cfg.model == "vanillanet_7" and cfg.lr == 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(recipe="vanillanet_99"), "unknown recipe 'vanillanet_99'"),
        (dict(sets=["leraning_rate=1"]), "unknown config key 'leraning_rate'"),
        (dict(sets=["lr=fast"]), "'lr' needs a float"),
        (dict(sets=["epochs=2.5"]), "'epochs' needs a int"),
        (dict(sets=["noequals"]), "--set needs key=value"),
        (dict(sets=["opt_betas=[0.9]"]), "needs 2 values"),
        (dict(sets=["epochs=10", "decay_epochs=10"]), "decay_epochs .* must be at most epochs - 1"),
        (dict(sets=["act_learn_mode=step"]), "act_learn_mode must be one of linear, cosine"),
        (dict(sets=["batch_size=0"]), "batch_size must be at least 1"),
    ],
)
def test_bad_config_is_one_line_error(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        resolve_config(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_key_in_recipe_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: vanillanet_5\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate' in recipe .*bad.yaml"):
        load_recipe(str(f)) and resolve_config(str(f))


def test_configs_built_in_python_are_checked_too(tmp_path):
    """``dataclasses.replace`` or direct construction skip resolve_config: train() checks every value again."""
    from vanillanet.train import train

    cfg = resolve_config(None, {}, ["data=synthetic", f"output={tmp_path / 'out'}"])
    replace = dataclasses.replace
    cases = [(replace(cfg, ema=replace(cfg.ema, model_ema_decay=2.0)), "model_ema_decay must be less than 1, got 2.0"),
             (replace(cfg, optim=replace(cfg.optim, lr=float("nan"))), "'lr' must be a finite number")]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            train(bad)
    assert not (tmp_path / "out").exists()

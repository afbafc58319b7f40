"""``model.checkpoint_files``: every supported layout loads strictly, the safetensors/.pth round trip is
bit-exact with its metadata, and missing, foreign, truncated or unsafe files are one-line errors."""

from __future__ import annotations

import fractions
import os

import pytest
import torch
from conftest import (
    CKPT_CLASSES,
    assert_same_weights,
    checkpoint_error,
    layouts,
    narrow_model,
    rel_err,
)

from vanillanet.model.checkpoint_files import load_checkpoint_file, read_class_names, save_weights
from vanillanet.model.registry import create_model
from vanillanet.model.reparam import reparameterize_model
from vanillanet.model.weight_loading import load_weights

LAYOUTS = ["original", "original_ddp", "original_deploy", "bare", "compiled_ddp", "openmixup", "ours_training"]


EXPECTED_FORM = {"original_deploy": "deploy"}


EXPECTED_EMA = {"original", "ours_training"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_strictly(layout, ckpt_source, ckpt_input, tmp_path):
    model, ema = ckpt_source
    path = tmp_path / f"{layout}.pth"
    torch.save(layouts(model, ema)[layout], path)
    form = EXPECTED_FORM.get(layout, "train")
    expected = ema if layout in EXPECTED_EMA else model.state_dict()
    if form == "deploy":
        expected = reparameterize_model(model).state_dict()
    for name in ("vanillanet_5", None):  # given, or inferred from the widths / the recorded architecture
        loaded = create_model(name, path).eval()
        assert loaded.deploy == (form == "deploy") and loaded.num_classes == 10 and loaded.dims == model.dims
        assert_same_weights(loaded, expected)
    if layout not in EXPECTED_EMA:
        with torch.no_grad():
            assert rel_err(loaded(ckpt_input), model(ckpt_input)) < 1e-5


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("deploy", [False, True])
def test_save_round_trip_is_bit_exact_with_metadata(ckpt_source, tmp_path, suffix, deploy):
    model, _ = ckpt_source
    model = reparameterize_model(model) if deploy else model
    path = save_weights(model, tmp_path / f"w{suffix}", class_names=CKPT_CLASSES, extra_meta={"epoch": 7})
    ckpt = load_checkpoint_file(path)
    ref = model.state_dict()
    assert list(ckpt["state_dict"]) == list(ref) if suffix == ".pth" else set(ckpt["state_dict"]) == set(ref)
    for key, value in ref.items():
        assert ckpt["state_dict"][key].dtype == value.dtype and torch.equal(ckpt["state_dict"][key], value), key
    meta = ckpt["meta"]
    assert meta["layout"] == "vanillanet" and meta["architecture"] == "vanillanet_5"
    assert meta["form"] == ("deploy" if deploy else "train")
    assert (meta["act_num"], meta["num_classes"], meta["in_chans"]) == (3, 10, 3)
    assert meta["dims"] == [64, 128, 256, 512] and meta["strides"] == [2, 2, 2] and meta["act_learn"] == 1.0
    assert meta["class_names"] == CKPT_CLASSES and meta["epoch"] == 7
    assert read_class_names(path) == CKPT_CLASSES
    assert_same_weights(create_model(None, path), ref)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind
    plain = tmp_path / "plain"
    plain.touch()
    assert path.stat().st_mode == plain.stat().st_mode  # readable like any file the user writes


def test_recorded_act_learn_is_restored(ckpt_source, tmp_path):
    model, _ = ckpt_source
    half = narrow_model(num_classes=10)
    half.load_state_dict(model.state_dict())
    half.act_learn = 0.25
    path = save_weights(half, tmp_path / "half.safetensors")
    target = narrow_model(num_classes=10)
    assert load_weights(target, path).act_learn == 0.25 and target.act_learn == 0.25


def test_missing_file(tmp_path):
    checkpoint_error(tmp_path / "nope.pth", "checkpoint not found: .*nope.pth: check the path")


def test_folder(tmp_path):
    checkpoint_error(tmp_path, "is a folder, not a checkpoint")


@pytest.mark.parametrize("content,kind", [(b"epoch 1: loss 0.3\n", "a text file"),
                                          (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image")])
def test_not_a_checkpoint(tmp_path, content, kind):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    checkpoint_error(path, f"is not a checkpoint \\(it looks like {kind}\\): pass a PyTorch")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".legacy"])
def test_truncated(ckpt_source, tmp_path, suffix):
    model, _ = ckpt_source
    path = tmp_path / f"w{suffix}"
    if suffix == ".legacy":
        torch.save({"model": model.state_dict()}, path, _use_new_zipfile_serialization=False)
    else:
        save_weights(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    checkpoint_error(path, "truncated.*copy or download it again")


def test_unsafe_pickle_refused(ckpt_source, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": ckpt_source[0].state_dict(), "extra": fractions.Fraction(1, 3)}, path)
    msg = checkpoint_error(path, "contains pickled fractions.Fraction, which could run code when loaded: refusing it")
    assert "argparse" not in msg

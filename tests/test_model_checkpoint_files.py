"""``model.checkpoint_files``: every supported layout loads strictly, the safetensors/.pth round trip is
bit-exact with its metadata, and missing, foreign, truncated or unsafe files are one-line errors."""

from __future__ import annotations

import fractions
import json
import os
import shutil

import pytest
import torch
from conftest import (
    CKPT_CLASSES,
    assert_same_weights,
    build_variant,
    checkpoint_error,
    layouts,
    narrow_model,
    rel_err,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vanillanet.model.checkpoint_files import file_meta, load_checkpoint_file, read_class_names, save_weights
from vanillanet.model.registry import create_model
from vanillanet.model.reparam import reparameterize_model
from vanillanet.model.weight_loading import load_weights
from vanillanet.util.errors import CheckpointError

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


@pytest.fixture(scope="module")
def deploy_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    save_weights(reparameterize_model(build_variant("vanillanet_5", num_classes=10)), path,
                 class_names=[str(i) for i in range(10)], extra_meta={"img_size": 32})
    return path


def foreign_copy(src, dst, **meta_changes):
    """``src`` re-saved as another tool would write it (no digest), with metadata entries changed."""
    with safe_open(str(src), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}
    meta.update({k: v if isinstance(v, str) and k == "class_names" else json.dumps(v) for k, v in
                 meta_changes.items()})
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_changed_bytes_are_detected(deploy_file, tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    save_weights(create_model(None, deploy_file), path)
    load_checkpoint_file(path)  # intact
    data = bytearray(path.read_bytes())
    sd = load_checkpoint_file(path)["state_dict"]
    needle = sd["stages.0.conv.weight"].contiguous().numpy().tobytes()[:16]
    at = bytes(data).index(needle)  # the first bytes of a tensor, wherever the format stores them
    data[at + 3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the SHA-256 digest it was written with") as info:
        create_model(None, path)
    assert "\n" not in str(info.value)


def test_files_without_a_digest_still_load(deploy_file, tmp_path):
    model = create_model(None, foreign_copy(deploy_file, tmp_path / "foreign.safetensors"))
    assert model.checkpoint_meta["class_names"] == [str(i) for i in range(10)]


def test_unsound_weights_are_never_written(deploy_file, tmp_path):
    model = create_model(None, deploy_file)
    with torch.no_grad():
        model.stages[0].conv.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match=r"not writing .*: the weights are unusable \(stages.0.conv.weight"):
        save_weights(model, tmp_path / "bad.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unsound_weights_are_refused_on_loading(deploy_file, tmp_path):
    sd = load_file(str(deploy_file))
    sd["stages.1.act.bias"][0] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match=r"nan.safetensors holds unusable weights \(stages.1.act.bias \(NaN\)\)"):
        create_model(None, tmp_path / "nan.safetensors")


@pytest.mark.parametrize(("change", "message"), [
    (dict(act_learn="abc"), r"malformed act_learn \('abc', not a finite number\)"),
    (dict(act_learn=1.5), r"impossible act_learn \(act_learn must be at most 1, got 1.5\)"),
    (dict(strides=7), r"malformed strides \(7, not a list\)"),
    (dict(img_size="big"), r"malformed img_size \('big', not an integer\)"),
    (dict(mean="x"), r"malformed mean \('x', not a list\)"),
    (dict(std=[0.0]), r"impossible std \(std must be more than 0, got 0.0\)"),
    (dict(class_names="catdogbird"), r"malformed class_names \('catdogbird', not a list\)"),
])
def test_malformed_metadata_is_one_line(deploy_file, tmp_path, change, message):
    path = foreign_copy(deploy_file, tmp_path / "edited.safetensors", **change)
    with pytest.raises(CheckpointError, match=message) as info:
        create_model(None, path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_a_one_dimensional_stem_weight_is_one_line(deploy_file, tmp_path):
    sd = load_file(str(deploy_file))
    sd["stem.0.weight"] = sd["stem.0.weight"].flatten()
    save_file(sd, str(tmp_path / "flat.safetensors"))
    with pytest.raises(CheckpointError, match=r"stem.0.weight has shape \(\d+,\), not the 4-D shape"):
        create_model(None, tmp_path / "flat.safetensors")


def test_a_pth_named_safetensors_is_read_by_its_content(deploy_file, tmp_path):
    pth = tmp_path / "m.pth"
    save_weights(create_model(None, deploy_file), pth)
    renamed = tmp_path / "really_a.safetensors"
    shutil.copy(pth, renamed)
    assert create_model(None, renamed).checkpoint_meta["format"] == "pth"
    assert file_meta(renamed)["form"] == "deploy"  # timm's pretrained hook reads metadata this way


def test_stride_zero_tensors_are_refused(deploy_file, tmp_path):
    sd = load_file(str(deploy_file))
    c = sd["cls.2.weight"].shape[1]
    sd["cls.2.weight"] = torch.zeros(1, 1, 1, 1).expand(2_000_000, c, 1, 1)
    sd["cls.2.bias"] = torch.zeros(1).expand(2_000_000)
    torch.save({"model": sd}, tmp_path / "bomb.pth")
    assert (tmp_path / "bomb.pth").stat().st_size < 1_000_000  # claims 2e6 x C floats
    with pytest.raises(CheckpointError, match="holds tensors larger than the data stored for them"):
        create_model(None, tmp_path / "bomb.pth")

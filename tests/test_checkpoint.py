"""Checkpoints: every supported layout, safetensors round trip, bad inputs, fine-tuning, timm hook, convert CLI."""

import argparse
import errno
import fractions
import logging
import os

import pytest
import timm
import torch
from conftest import build_variant, give_realistic_bn_stats, rel_err

from vanillanet import ConversionError, VanillaNet
from vanillanet.cli import main as cli_main
from vanillanet.model.checkpoint_files import load_checkpoint_file, read_class_names, save_weights
from vanillanet.model.registry import create_model
from vanillanet.model.reparam import reparameterize_model
from vanillanet.model.weight_loading import filter_state_dict, load_weights
from vanillanet.util.errors import CheckpointError, ConfigError, OutputError
from vanillanet.util.fileio import save_atomic

W = 0.125  # vanillanet_5 at width 0.125: dims 64, 128, 256, 512
CLASSES = [f"class_{i}" for i in range(10)]
HEAD = ("cls1.2.", "cls1.3.", "cls2.0.")


def narrow(name="vanillanet_5", **kwargs):
    return build_variant(name, width_mult=W, **kwargs)


@pytest.fixture(scope="module")
def source():
    """A narrow train-form vanillanet_5 (10 classes) with realistic BN statistics, and an 'EMA' that differs."""
    torch.manual_seed(0)
    model = narrow(num_classes=10)
    give_realistic_bn_stats(model, (4, 3, 32, 32))
    model.eval()
    ema = {k: (v + 0.01 if v.is_floating_point() else v.clone()) for k, v in model.state_dict().items()}
    return model, ema


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def original_args():
    return argparse.Namespace(model="vanillanet_5", lr=3.5e-3, decay_epochs=100, model_ema=True)


def layouts(model, ema):
    """Checkpoint dicts in every supported layout, built here (released files cannot be downloaded)."""
    sd = model.state_dict()
    deploy_sd = reparameterize_model(model).state_dict()
    return {
        "original": {"model": sd, "model_ema": ema, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                     "epoch": 299, "scaler": {"scale": 65536.0}, "args": original_args()},
        "original_ddp": {"model": {f"module.{k}": v for k, v in sd.items()}, "args": original_args()},
        "original_deploy": {"model": deploy_sd},
        "bare": dict(sd),
        "compiled_ddp": {f"_orig_mod.module.{k}": v for k, v in sd.items()},
        "openmixup": {"state_dict": {("head." if k.startswith("cls") else "backbone.") + k: v for k, v in sd.items()},
                      "meta": {"epoch": 300, "mmcv_version": "1.7.0"}},
        "ours_training": {"model": sd, "model_ema": ema, "optimizer": {"state": {}}, "epoch": 3, "scaler": None,
                          "config": {"model": "vanillanet_5", "lr": 0.001}, "act_learn": 1.0, "step": 30,
                          "rng": torch.get_rng_state(), "class_names": CLASSES,
                          "arch": {"name": "vanillanet_5", "kwargs": {"width_mult": W, "num_classes": 10}}},
    }


LAYOUTS = ["original", "original_ddp", "original_deploy", "bare", "compiled_ddp", "openmixup", "ours_training"]
EXPECTED_FORM = {"original_deploy": "deploy"}
EXPECTED_EMA = {"original", "ours_training"}


def assert_same_weights(model, reference_sd, skip=()):
    got = model.state_dict()
    assert list(got) == list(reference_sd) or set(got) == set(reference_sd)
    for key, value in reference_sd.items():
        if not key.startswith(skip):
            assert torch.equal(got[key], value), key


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_strictly(layout, source, x, tmp_path):
    model, ema = source
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
            assert rel_err(loaded(x), model(x)) < 1e-5


def test_ema_preferred_and_use_ema_false_picks_model(source, tmp_path):
    model, ema = source
    path = tmp_path / "original.pth"
    torch.save(layouts(model, ema)["original"], path)
    target = narrow(num_classes=10)
    report = load_weights(target, path)
    assert report.source == "model_ema" and report.layout == "original"
    assert_same_weights(target, ema)
    report = load_weights(target, path, use_ema=False)
    assert report.source == "model"
    assert_same_weights(target, model.state_dict())
    meta = load_checkpoint_file(path)["meta"]
    assert meta["architecture"] == "vanillanet_5" and meta["args"]["decay_epochs"] == 100 and meta["epoch"] == 299


def test_train_file_into_deploy_model_converts(source, x, tmp_path):
    model, _ = source
    path = tmp_path / "train.pth"
    torch.save({"model": model.state_dict()}, path)
    deploy = create_model("vanillanet_5", path, deploy=True).eval()
    assert deploy.deploy and "stem.0.weight" in deploy.state_dict()
    with torch.no_grad():
        assert rel_err(deploy(x), model(x)) < 1e-5
    target = narrow(num_classes=10, deploy=True)
    assert load_weights(target, path).converted


def test_deploy_from_partly_trained_file_refused(source, tmp_path):
    model, _ = source
    path = tmp_path / "mid.pth"
    torch.save({"model": model.state_dict(), "act_learn": 0.5}, path)
    with pytest.raises(ConversionError, match="act_learn is 0.5"):
        create_model("vanillanet_5", path, deploy=True)
    train = create_model("vanillanet_5", path)
    assert train.act_learn == 0.5  # the recorded slope comes with the weights


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("deploy", [False, True])
def test_save_round_trip_is_bit_exact_with_metadata(source, tmp_path, suffix, deploy):
    model, _ = source
    model = reparameterize_model(model) if deploy else model
    path = save_weights(model, tmp_path / f"w{suffix}", class_names=CLASSES, extra_meta={"epoch": 7})
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
    assert meta["class_names"] == CLASSES and meta["epoch"] == 7
    assert read_class_names(path) == CLASSES
    assert_same_weights(create_model(None, path), ref)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind
    plain = tmp_path / "plain"
    plain.touch()
    assert path.stat().st_mode == plain.stat().st_mode  # readable like any file the user writes


def test_recorded_act_learn_is_restored(source, tmp_path):
    model, _ = source
    half = narrow(num_classes=10)
    half.load_state_dict(model.state_dict())
    half.act_learn = 0.25
    path = save_weights(half, tmp_path / "half.safetensors")
    target = narrow(num_classes=10)
    assert load_weights(target, path).act_learn == 0.25 and target.act_learn == 0.25


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_atomic({"epoch": 1}, path)

    def broken_save(obj, f):
        open(f, "wb").write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match=r"cannot write .*ckpt.pth \(No space left on device\); nothing was written"):
        save_atomic({"epoch": 2}, path)
    assert os.listdir(tmp_path) == ["ckpt.pth"]
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}


# ---- bad inputs: one line naming the cause and the fix ---------------------------------------------------------
def bad_error(path, match, **kwargs):
    with pytest.raises(CheckpointError, match=match) as info:
        create_model("vanillanet_5", path, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    bad_error(tmp_path / "nope.pth", "checkpoint not found: .*nope.pth: check the path")


def test_folder(tmp_path):
    bad_error(tmp_path, "is a folder, not a checkpoint")


@pytest.mark.parametrize("content,kind", [(b"epoch 1: loss 0.3\n", "a text file"),
                                          (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image")])
def test_not_a_checkpoint(tmp_path, content, kind):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    bad_error(path, f"is not a checkpoint \\(it looks like {kind}\\): pass a PyTorch")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".legacy"])
def test_truncated(source, tmp_path, suffix):
    model, _ = source
    path = tmp_path / f"w{suffix}"
    if suffix == ".legacy":
        torch.save({"model": model.state_dict()}, path, _use_new_zipfile_serialization=False)
    else:
        save_weights(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    bad_error(path, "truncated.*copy or download it again")


def test_unsafe_pickle_refused(source, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": source[0].state_dict(), "extra": fractions.Fraction(1, 3)}, path)
    msg = bad_error(path, "contains pickled fractions.Fraction, which could run code when loaded: refusing it")
    assert "argparse" not in msg


def test_wrong_architecture_names_the_variant(tmp_path):
    path = tmp_path / "v6.pth"
    torch.save({"model": narrow("vanillanet_6", num_classes=10).state_dict()}, path)
    bad_error(path, "holds weights for vanillanet_6 with width_mult 0.125 .*not vanillanet_5: create vanillanet_6")
    with pytest.raises(CheckpointError, match="holds weights for vanillanet_6 .* but the model is vanillanet_5"):
        load_weights(timm.create_model("vanillanet_5", width_mult=W, num_classes=10), path)


def test_act_num_mismatch(tmp_path):
    path = tmp_path / "act4.pth"
    torch.save({"model": narrow(num_classes=10, act_num=4).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"9x9 activation kernels \(act_num=4\) but the model has 7x7 "
                                              r"\(act_num=3\): build the model with act_num=4"):
        load_weights(narrow(num_classes=10), path)
    bad_error(path, "act_num=4", act_num=3)
    assert create_model("vanillanet_5", path).act_num == 4  # read from the file by default


def test_num_classes_and_in_chans_mismatch(source, tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"model": source[0].state_dict()}, path)
    with pytest.raises(CheckpointError, match="10-class head but the model has 5 classes: build the model with "
                                              "num_classes=10"):
        load_weights(narrow(num_classes=5), path, reset_head=False)
    bad_error(path, "expects 3-channel input but the model has in_chans=1: build the model with in_chans=3",
              in_chans=1)


def test_deploy_file_into_train_model(source, tmp_path):
    path = save_weights(reparameterize_model(source[0]), tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="deploy-form .* cannot be split back into the train form"):
        load_weights(narrow(num_classes=10), path)


def test_not_vanillanet_weights(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 3, 3)}}, path)
    bad_error(path, "holds no VanillaNet weights")


def test_ambiguous_variant_needs_a_name(tmp_path):
    path = tmp_path / "x15.pth"
    torch.save({"model": build_variant("vanillanet_13_x1_5_ada_pool", num_classes=4).state_dict()}, path)
    with pytest.raises(CheckpointError, match="vanillanet_13_x1_5 and vanillanet_13_x1_5_ada_pool.*--model NAME"):
        create_model(None, path)
    assert create_model("vanillanet_13_x1_5_ada_pool", path).ada_pool is not None


# ---- fine-tuning -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("deploy", [False, True])
def test_finetune_resets_only_the_head_and_says_so(source, tmp_path, caplog, deploy):
    model, _ = source
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


# ---- timm's pretrained hook ------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["original", "openmixup", "safetensors"])
def test_timm_pretrained_overlay(source, x, tmp_path, layout):
    model, ema = source
    if layout == "safetensors":
        path = save_weights(model, tmp_path / "w.safetensors")
        expected = model.state_dict()
    else:
        path = tmp_path / "w.pth"
        torch.save(layouts(model, ema)[layout], path)
        expected = ema if layout == "original" else model.state_dict()
    loaded = timm.create_model("vanillanet_5", pretrained=True, width_mult=W, num_classes=10,
                               pretrained_cfg_overlay=dict(file=str(path)))
    assert_same_weights(loaded, expected)  # the 10-class head is kept although the default config says 1000
    deploy = timm.create_model("vanillanet_5", pretrained=True, width_mult=W, num_classes=10, deploy=True,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    reference = narrow(num_classes=10).eval()
    reference.load_state_dict(expected)
    with torch.no_grad():
        assert rel_err(deploy(x), reference(x)) < 1e-5


def test_timm_pretrained_finetune_and_in_chans(source, tmp_path, caplog):
    path = save_weights(source[0], tmp_path / "w.safetensors")
    with caplog.at_level(logging.INFO, logger="vanillanet"):
        tuned = timm.create_model("vanillanet_5", pretrained=True, width_mult=W, num_classes=4, in_chans=1,
                                  pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    lines = [r.getMessage() for r in caplog.records if r.name == "vanillanet"]
    assert any("4-class head is freshly initialised" in line for line in lines)
    assert any("adapted the 3-channel stem to in_chans=1" in line for line in lines)
    assert tuned(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    assert torch.equal(tuned.stem1[0].weight, source[0].stem1[0].weight.sum(1, keepdim=True))


@pytest.mark.parametrize("kind", ["pth", "legacy pth", "safetensors", "whole dict"])
def test_timm_pretrained_partly_trained_file(source, tmp_path, kind):
    """timm unpacks local files (dropping act_learn); the hook reads it back, so a deploy model still refuses."""
    half = narrow(num_classes=10)
    half.load_state_dict(source[0].state_dict())
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
    kwargs = dict(pretrained=True, width_mult=W, num_classes=10, pretrained_cfg_overlay=overlay)
    with pytest.raises(ConversionError, match="act_learn is 0.5"):
        timm.create_model("vanillanet_5", deploy=True, **kwargs)
    assert timm.create_model("vanillanet_5", **kwargs).act_learn == 0.5  # the recorded slope comes with the weights


def test_filter_accepts_a_whole_checkpoint(source):
    model, ema = source
    fitted = filter_state_dict(layouts(model, ema)["original_ddp"], narrow(num_classes=10))
    assert all(torch.equal(fitted[k], v) for k, v in model.state_dict().items())


# ---- vanillanet convert ----------------------------------------------------------------------------------------
def test_convert_cli_end_to_end(source, x, tmp_path, capsys):
    model, ema = source
    src = tmp_path / "vanillanet_5.pth"
    torch.save(layouts(model, ema)["ours_training"], src)
    out = tmp_path / "out" / "deploy.safetensors"
    assert cli_main(["convert", str(src), str(out), "--no-ema", "--img-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "train vs deploy max relative error" in printed and "vanillanet_5 deploy form" in printed
    err = float(printed.split("relative error ")[1].split()[0])
    assert err <= 1e-5
    meta = load_checkpoint_file(out)["meta"]
    assert meta["form"] == "deploy" and meta["class_names"] == CLASSES
    assert meta["conversion_rel_error"] == pytest.approx(err, rel=0.01)
    deploy = create_model(None, out).eval()
    assert deploy.deploy
    with torch.no_grad():
        assert rel_err(deploy(x), model(x)) < 1e-5


def test_convert_cli_refuses_with_one_line(source, tmp_path, capsys):
    model, _ = source
    src = tmp_path / "mid.pth"
    torch.save({"model": model.state_dict(), "act_learn": 0.9}, src)
    out = tmp_path / "deploy.safetensors"
    assert cli_main(["convert", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vanillanet convert: error: ") and "act_learn is 0.9" in err and err.count("\n") == 1
    assert not out.exists()
    assert cli_main(["convert", str(tmp_path / "missing.pth"), str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert cli_main(["convert", str(src), str(tmp_path / "deploy.pth")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


def test_convert_refuses_outputs_that_disagree(source, tmp_path):
    from vanillanet.convert import convert_checkpoint

    src = tmp_path / "w.pth"
    torch.save({"model": source[0].state_dict()}, src)
    with pytest.raises(ConversionError, match="deploy and train outputs differ"):
        convert_checkpoint(src, tmp_path / "d.safetensors", img_size=32, tol=0.0)  # fp32 rounding alone exceeds 0
    assert not (tmp_path / "d.safetensors").exists()


def test_create_model_without_checkpoint():
    model = create_model("vanillanet_5", num_classes=3, width_mult=W)
    assert isinstance(model, VanillaNet) and model.num_classes == 3
    for checkpoint in (None, "missing.pth"):  # the name is checked before the file is read
        with pytest.raises(ConfigError, match="unknown model 'vanillanet_99': choose one of vanillanet_5, "):
            create_model("vanillanet_99", checkpoint)

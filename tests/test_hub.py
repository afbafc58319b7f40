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
from vanillanet.util.errors import CheckpointError, ConfigError, ConversionError

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


# ---- the digest of a Hub folder ---------------------------------------------------------------------------------
@pytest.fixture
def hub_folder(trained, tmp_path):
    out = tmp_path / "hub"
    export_hf(create_model(None, trained[1]), out)
    return out


def _flip_middle(path, n=8):
    data = bytearray(path.read_bytes())
    mid = len(data) - len(data) // 3  # inside the tensor data (the JSON header is at the start)
    for i in range(mid, mid + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_folder_carries_a_digest_and_the_weights_file_mode_of_its_neighbours(hub_folder):
    from safetensors import safe_open

    with safe_open(str(hub_folder / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert len(meta["sha256"]) == 64 and len(meta["config_sha256"]) == 64
    modes = {p.name: p.stat().st_mode & 0o777 for p in hub_folder.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == modes["README.md"]
    assert create_model(None, hub_folder).checkpoint_meta["verified"] is True


def test_flipped_bytes_in_the_weights_are_refused_by_every_loader(hub_folder, tmp_path, capsys):
    from PIL import Image

    _flip_middle(hub_folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match the SHA-256 digest it was written with"):
        create_model(None, hub_folder)
    with pytest.raises(CheckpointError, match="does not match the SHA-256 digest"):
        timm.create_model(f"local-dir:{hub_folder}", pretrained=True)
    Image.new("L", (40, 40), 128).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(hub_folder)]) == 2
    assert "SHA-256" in capsys.readouterr().err
    assert main(["convert", str(hub_folder), str(tmp_path / "re-signed.safetensors")]) == 2
    assert "SHA-256" in capsys.readouterr().err and not (tmp_path / "re-signed.safetensors").exists()


def test_an_edited_config_or_a_stripped_digest_is_refused(hub_folder):
    config = json.loads((hub_folder / "config.json").read_text())
    config["label_names"] = ["a", "b", "c"]
    (hub_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json was changed or damaged"):
        create_model(None, hub_folder)
    with pytest.raises(CheckpointError, match="config.json was changed or damaged"):
        timm.create_model(f"local-dir:{hub_folder}", pretrained=True)
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(hub_folder / "model.safetensors")), str(hub_folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="carries no SHA-256 digest although vanillanet wrote the folder"):
        create_model(None, hub_folder)


def test_a_folder_from_elsewhere_loads_unverified_and_its_config_is_checked(hub_folder, tmp_path, capsys):
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from vanillanet.data.transforms import resolve_preprocess

    config = json.loads((hub_folder / "config.json").read_text())
    del config["vanillanet"]  # as timm's own save_for_hf writes it
    (hub_folder / "config.json").write_text(json.dumps(config))
    save_file(load_file(str(hub_folder / "model.safetensors")), str(hub_folder / "model.safetensors"))
    assert create_model(None, hub_folder).checkpoint_meta["verified"] is False
    timm.create_model(f"local-dir:{hub_folder}", pretrained=True)
    config["pretrained_cfg"]["mean"] = "0.5"
    (hub_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json records a malformed mean \('0.5', not a list\)"):
        create_model(None, hub_folder)
    with pytest.raises(ConfigError, match=r"the model's pretrained_cfg gives a malformed mean \('0.5', not a list of "
                                          r"numbers, one per channel\)"):  # timm's own route, as eval/predict use it
        model = timm.create_model(f"local-dir:{hub_folder}", pretrained=True)
        resolve_preprocess(model_cfg=model.pretrained_cfg)
    Image.new("L", (40, 40), 128).save(tmp_path / "x.png")  # the CLI: one line naming the file, exit 2
    assert main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(hub_folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json records a malformed mean ('0.5', not a list)" in err
    config["pretrained_cfg"] = "oops"
    (hub_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="malformed pretrained_cfg"):
        create_model(None, hub_folder)

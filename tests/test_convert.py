"""``vanillanet convert`` (``convert.py``): end to end, one-line refusals, outputs that would disagree."""

from __future__ import annotations

import pytest
import torch
from conftest import CKPT_CLASSES, layouts, rel_err

from vanillanet import ConversionError
from vanillanet.cli import main as cli_main
from vanillanet.model.checkpoint_files import load_checkpoint_file
from vanillanet.model.registry import create_model


def test_convert_cli_end_to_end(ckpt_source, ckpt_input, tmp_path, capsys):
    model, ema = ckpt_source
    src = tmp_path / "vanillanet_5.pth"
    torch.save(layouts(model, ema)["ours_training"], src)
    out = tmp_path / "out" / "deploy.safetensors"
    assert cli_main(["convert", str(src), str(out), "--no-ema", "--img-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "train vs deploy max relative error" in printed and "vanillanet_5 deploy form" in printed
    err = float(printed.split("relative error ")[1].split()[0])
    assert err <= 1e-5
    meta = load_checkpoint_file(out)["meta"]
    assert meta["form"] == "deploy" and meta["class_names"] == CKPT_CLASSES
    assert meta["conversion_rel_error"] == pytest.approx(err, rel=0.01)
    deploy = create_model(None, out).eval()
    assert deploy.deploy
    with torch.no_grad():
        assert rel_err(deploy(ckpt_input), model(ckpt_input)) < 1e-5


def test_convert_cli_refuses_with_one_line(ckpt_source, tmp_path, capsys):
    model, _ = ckpt_source
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


def test_convert_refuses_outputs_that_disagree(ckpt_source, tmp_path):
    from vanillanet.convert import convert_checkpoint

    src = tmp_path / "w.pth"
    torch.save({"model": ckpt_source[0].state_dict()}, src)
    with pytest.raises(ConversionError, match="deploy and train outputs differ"):
        convert_checkpoint(src, tmp_path / "d.safetensors", img_size=32, tol=0.0)  # fp32 rounding alone exceeds 0
    assert not (tmp_path / "d.safetensors").exists()

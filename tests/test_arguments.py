"""The shared argument groups (``arguments.py``): the same flag means the same in every command, ``--no-ema``
wherever a checkpoint is read, ``--json [PATH]`` printing or writing, and the one class-count check."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from conftest import build_variant
from PIL import Image

from vanillanet.arguments import STDOUT, check_json_path, check_num_classes, emit_json
from vanillanet.cli import build_parser, main
from vanillanet.model.reparam import reparameterize_model
from vanillanet.util.errors import DataError, OutputError

READS_A_CHECKPOINT = ("eval", "predict", "quantize", "export", "convert", "bench", "train")


def _actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {flag: action for action in sub._actions for flag in action.option_strings}


@pytest.mark.parametrize("command", READS_A_CHECKPOINT)
def test_every_command_that_reads_a_checkpoint_has_no_ema(command):
    assert "--no-ema" in _actions(command)


def test_a_shared_flag_is_declared_alike_everywhere():
    """Flags of the shared groups: the same choices, type and default in every command that has them."""
    commands = ("eval", "predict", "quantize", "export", "convert", "info", "bench")
    actions = {c: _actions(c) for c in commands}
    for flag in ("--device", "--workers", "--json", "--crop-pct", "--no-progress", "--allow-large", "--threads"):
        having = [c for c in commands if flag in actions[c] and c != "bench"]  # bench's flags come from its config
        assert len(having) >= 2, flag
        first = actions[having[0]][flag]
        for c in having[1:]:
            a = actions[c][flag]
            assert (a.choices, a.nargs, a.const, a.default, type(a)) == (first.choices, first.nargs, first.const,
                                                                          first.default, type(first)), (flag, c)
    from vanillanet.bench import BenchConfig
    from vanillanet.training.config import SpeedConfig
    from vanillanet.util.validation import keys_of

    for cls in (BenchConfig, SpeedConfig):  # the config-declared --device of bench and train
        assert keys_of(cls)["device"].field.metadata["choices"] == tuple(actions["eval"]["--device"].choices)


def _two_headed_checkpoint(path):
    """A training-style checkpoint whose live weights predict class 0 and whose EMA weights predict class 2."""

    def constant(bias):
        model = reparameterize_model(build_variant("vanillanet_5", width_mult=1 / 32, num_classes=3))
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
            model.cls[2].bias.copy_(torch.tensor(bias))
        return model.state_dict()

    torch.save({"model": constant([5.0, 0.0, 0.0]), "model_ema": constant([0.0, 0.0, 5.0])}, path)
    return path


def test_no_ema_picks_the_live_weights_and_json_prints(tmp_path, capsys):
    ckpt = _two_headed_checkpoint(tmp_path / "run.pth")
    Image.new("RGB", (40, 40), (120, 30, 200)).save(tmp_path / "x.png")
    base = ["predict", str(tmp_path / "x.png"), "--checkpoint", str(ckpt), "--img-size", "32", "--topk", "1",
            "--device", "cpu"]
    tops = {}
    for extra in ([], ["--no-ema"]):
        assert main([*base, *extra, "--json"]) == 0
        tops[bool(extra)] = json.loads(capsys.readouterr().out)[0]["predictions"][0]["index"]
    assert tops == {False: 2, True: 0}
    out = tmp_path / "top.json"
    assert main([*base, "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["predictions"][0]["index"] == 2
    assert "x.png" in capsys.readouterr().out  # with a PATH the text is printed as well


def test_json_never_replaces_a_file_that_is_not_json(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"not json")
    with pytest.raises(OutputError, match=r"--json .*x\.png would replace a file that is not JSON"):
        check_json_path(str(image))
    with pytest.raises(OutputError, match="would replace a folder"):
        check_json_path(str(tmp_path))
    check_json_path(str(tmp_path / "new.txt"))  # a new file of any name
    (tmp_path / "old.json").write_text("{}")
    check_json_path(str(tmp_path / "old.json"))
    check_json_path(STDOUT)
    check_json_path(None)


def test_emit_json_prints_or_writes(tmp_path, capsys):
    assert emit_json(None, {"a": 1}) is False and capsys.readouterr().out == ""
    assert emit_json(STDOUT, {"a": float("nan")}) is True
    assert json.loads(capsys.readouterr().out) == {"a": None}  # standard JSON: NaN as null
    path = tmp_path / "r.json"
    assert emit_json(str(path), {"a": [1, 2]}) is False
    assert json.loads(path.read_text()) == {"a": [1, 2]}


def test_check_num_classes_names_both_counts_and_the_fix():
    model = torch.nn.Linear(1, 1)
    model.num_classes = 4
    check_num_classes(model, ["a", "b", "c", "d"], doing="evaluate")
    with pytest.raises(DataError, match="3 classes but the model predicts 4; evaluate with the dataset"):
        check_num_classes(model, ["a", "b", "c"], doing="evaluate")

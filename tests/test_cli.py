"""The ``vanillanet`` command line: help, version, unknown commands, one-line user errors, entry points."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_flags

from vanillanet import __version__
from vanillanet.cli import COMMANDS, main
from vanillanet.model.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def exit_code(argv):
    with pytest.raises(SystemExit, match=r"^\d*$") as info:  # the exit code (argparse: 0 or 2)
        main(argv)
    return info.value.code


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: vanillanet") and all(name in out for name in COMMANDS)


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(capsys, flag):
    assert exit_code([flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vanillanet") and all(name in out for name in COMMANDS)


def test_version(capsys):
    assert exit_code(["--version"]) == 0
    assert capsys.readouterr().out == f"vanillanet {__version__}\n"


def test_command_help_lists_its_options(capsys):
    assert exit_code(["info", "-h"]) == 0
    assert "usage: vanillanet info" in capsys.readouterr().out


def test_unknown_command(capsys):
    assert exit_code(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err and "'convert'" in err


@pytest.mark.parametrize("argv,expected", [
    (["info", "vanillanet_99"], f"unknown model 'vanillanet_99': choose one of {', '.join(VARIANTS)}"),
    (["convert", "missing.pth", "out.safetensors"], "checkpoint not found: missing.pth: check the path"),
])
def test_user_errors_are_one_line_without_traceback(capsys, tmp_path, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"vanillanet {argv[0]}: error: {expected}")
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert not (tmp_path / "out.safetensors").exists()


def test_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vanillanet", "list"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("vanillanet_")]
    assert [row.split()[0] for row in rows] == list(VARIANTS)


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"vanillanet": "vanillanet.cli:main"}
    installed = importlib.metadata.entry_points(group="console_scripts", name="vanillanet")
    assert [ep.load() for ep in installed] == [main]


# ---- the error guard: any exception is one line, with the traceback in a log file -----------------------------
def test_an_unexpected_exception_is_one_line_with_a_traceback_log(capsys, tmp_path, monkeypatch):
    import vanillanet.complexity

    def broken(name, *args, **kwargs):
        raise RuntimeError("something we did not foresee\nsecond line")

    monkeypatch.setenv("VANILLANET_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(vanillanet.complexity, "model_complexity", broken)
    assert main(["info", "vanillanet_5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vanillanet info: error: RuntimeError: something we did not foresee (full traceback: ")
    assert err.count("\n") == 1
    log = Path(err.split("full traceback: ")[1].strip().rstrip(")"))
    assert log.parent == tmp_path / "logs" and log.name.startswith("traceback-info-")
    text = log.read_text()
    assert text.startswith("vanillanet ") and "Traceback (most recent call last)" in text and "second line" in text


@pytest.mark.parametrize("error", [MemoryError(), torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate "
                                                                              "824.00 GiB\nmore")])
def test_out_of_memory_is_one_line_naming_the_fix(capsys, monkeypatch, error):
    import vanillanet.complexity

    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr(vanillanet.complexity, "model_complexity", exhausted)
    assert main(["info", "vanillanet_5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vanillanet info: error: out of memory (") and err.count("\n") == 1
    assert "use a smaller --batch-size or --img-size, fewer --workers, or leave out --allow-large" in err


def test_an_environment_switch_that_is_not_one_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("VANILLANET_FUSED_KERNELS", "garbage")
    assert main(["bench", "--modes", "paper"]) == 2
    assert capsys.readouterr().err == ("vanillanet: error: environment variable VANILLANET_FUSED_KERNELS='garbage' is "
                                       "not a switch: set it to one of 1, true, yes, on, 0, false, no, off, or unset "
                                       "it\n")


def test_ctrl_c_exits_130(capsys, monkeypatch):
    import vanillanet.complexity

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vanillanet.complexity, "model_complexity", interrupted)
    assert main(["info", "vanillanet_5"]) == 130
    assert capsys.readouterr().err == "vanillanet info: interrupted\n"


# ---- every number and path a user passes: one line, exit 2, nothing written ------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny deploy checkpoint, damaged variants of it, a bare tensor and an image."""
    import torch
    from conftest import build_variant
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from vanillanet.model.checkpoint_files import save_weights
    from vanillanet.model.reparam import reparameterize_model

    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    model = reparameterize_model(build_variant("vanillanet_5", num_classes=10))
    save_weights(model, root / "good.safetensors")
    save_weights(model, root / "good.pth")
    sd = load_file(str(root / "good.safetensors"))
    sd["stages.0.conv.weight"][0, 0] = float("nan")
    save_file(sd, str(root / "nan.safetensors"))
    save_file(load_file(str(root / "good.safetensors")), str(root / "bigimg.safetensors"),
              metadata={"img_size": "100000"})
    torch.save(torch.zeros(3), root / "bare.pth")
    Image.new("RGB", (40, 40)).save(root / "img.png")
    return root


TRAIN = ["train", *tiny_flags(warmup_epochs=0, img_size=None, seed=None, log_every=None)]
BAD = [
    (["--img-size", "7", "--output", "OUT"], "input size 7 px is too small for this model"),
    (["--img-size", "-32", "--output", "OUT"], "img_size must be at least 1, got -32"),
    (["--width-mult", "0", "--output", "OUT"], "width_mult must be more than 0"),
    (["--threads", "-1", "--output", "OUT"], "threads must be at least 1, got -1"),
    (["--act-num", "-2", "--output", "OUT"], "act_num must be at least 0, got -2"),
    (["--drop-rate", "2", "--output", "OUT"], "drop_rate must be less than 1, got 2.0"),
    (["--std", "0", "--output", "OUT"], "std must be more than 0, got 0.0"),
    (["--padding", "-3", "--output", "OUT"], "padding must be at least 0, got -3"),
    (["--interpolation", "sinc", "--output", "OUT"], "interpolation must be one of bicubic"),
    (["--lr", ".nan", "--output", "OUT"], "'lr' must be a finite number, got nan"),
    (["--set", "lr=.inf", "--output", "OUT"], "'lr' must be a finite number, got inf"),
    (["--output", "FILES/img.png"], "is a file, not a folder"),
    (["--output", "/proc/vanillanet-test"], "cannot create --output /proc/vanillanet-test"),
    (["--resume", "FILES/bare.pth", "--output", "OUT"], "holds weights, not a training state"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a[:2]) for a, _ in BAD])
def test_train_bad_values_are_one_line(files, tmp_path, capsys, args, message):
    args = [a.replace("OUT", str(tmp_path / "out")).replace("FILES", str(files)) for a in args]
    assert main([*TRAIN, "--img-size", "32", *args] if "--img-size" not in args else [*TRAIN, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vanillanet train: error: ") and message in err and err.count("\n") == 1, err


OTHER = [
    (["eval", "--checkpoint", "FILES/good.safetensors", "--data", "synthetic", "--workers", "-1"],
     "argument --workers: must be at least 0, got -1"),
    (["eval", "--checkpoint", "FILES/good.safetensors", "--data", "synthetic", "--batch-size", "0"],
     "argument --batch-size: must be at least 1, got 0"),
    (["eval", "--checkpoint", "FILES/nan.safetensors", "--data", "synthetic", "--img-size", "32"],
     "nan.safetensors holds unusable weights (stages.0.conv.weight (NaN))"),
    (["info", "vanillanet_5", "--width-mult", "0"], "argument --width-mult: must be more than 0, got 0.0"),
    (["info", "vanillanet_5", "--img-size", "-5"], "argument --img-size: must be at least 1, got -5"),
    (["info", "vanillanet_5", "--act-num", "x"], "argument --act-num: needs an integer, got 'x'"),
    (["predict", "FILES/img.png", "--checkpoint", "FILES/good.safetensors", "--topk", "0"],
     "argument --topk: must be at least 1, got 0"),
    (["predict", "FILES/img.png", "--checkpoint", "FILES/good.safetensors", "--crop-pct", "nan"],
     "argument --crop-pct: needs a finite number, got 'nan'"),
    (["predict", "FILES/img.png", "--checkpoint", "FILES/bigimg.safetensors"],
     "img_size 100000 px is above the 4096 px limit"),
    (["predict", "FILES/img.png", "--checkpoint", "FILES/nan.safetensors"], "holds unusable weights"),
    (["convert", "FILES/nan.safetensors", "OUT/x.safetensors"], "holds unusable weights"),
    (["convert", "FILES/good.safetensors", "FILES/good.safetensors"], "is the input"),
    (["convert", "FILES/good.safetensors", "OUT/x.safetensors", "--img-size", "-3"],
     "argument --img-size: must be at least 1, got -3"),
    (["convert", "FILES/good.safetensors", "OUT/x.safetensors", "--img-size", "5000"],
     "--img-size 5000 px is above the 4096 px limit"),
    (["export", "--checkpoint", "FILES/good.pth", "--output", "FILES/good.pth"], "is the input"),
    (["export", "--checkpoint", "FILES/nan.safetensors", "--output", "OUT/x.onnx", "--img-size", "32"],
     "holds unusable weights"),
    (["export", "--checkpoint", "FILES/good.safetensors", "--output", "FILES/img.png/x.onnx", "--img-size", "32"],
     "(a file is in the way of the folder"),
    (["export", "--checkpoint", "FILES/good.safetensors", "--output", "FILES", "--format", "onnx", "--img-size",
      "32"], "it is a folder; give a file name"),
    (["export", "--model", "vanillanet_5", "--num-classes", "2000000", "--output", "OUT/x.onnx"],
     "above the limit of 1.0 billion: refusing to allocate it"),
    (["export", "--model", "vanillanet_5", "--opset", "0", "--output", "OUT/x.onnx"],
     "argument --opset: must be at least 1, got 0"),
]


@pytest.mark.parametrize(("argv", "message"), OTHER, ids=[" ".join(a[:1] + a[-2:]) for a, _ in OTHER])
def test_other_commands_bad_values_are_one_line(files, tmp_path, capsys, argv, message):
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("FILES", str(files)) for a in argv]
    before = {p.name: p.read_bytes() for p in files.iterdir()}
    try:
        code = main(argv)
    except SystemExit as exit_:  # option values are checked while parsing: the same one-line format
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"vanillanet {argv[0]}: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists() and {p.name: p.read_bytes() for p in files.iterdir()} == before


def test_output_onto_input_through_a_hard_link_is_refused(files, tmp_path, capsys):
    import os

    link = tmp_path / "best.pth"
    os.link(files / "good.pth", link)  # best.pth is a hard link to a step checkpoint
    before = link.read_bytes()
    assert main(["export", "--checkpoint", str(link), "--output", str(files / "good.pth")]) == 2
    assert "is the input" in capsys.readouterr().err and link.read_bytes() == before


def test_the_legacy_exporter_prints_no_ir(files, tmp_path, capfd):
    argv = ["export", "--checkpoint", str(files / "good.safetensors"), "--output", str(tmp_path / "x.onnx"),
            "--img-size", "32", "--exporter", "legacy", "--opset", "2"]
    assert main(argv) == 2
    out, err = capfd.readouterr()
    assert out == "" and err.count("\n") == 1 and "ONNX export (legacy, opset 2) failed" in err, out[:500]

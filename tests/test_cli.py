"""The ``vanillanet`` command line: help, version, unknown commands, one-line user errors, entry points."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from vanillanet import __version__
from vanillanet.cli import COMMANDS, main
from vanillanet.models import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def exit_code(argv):
    with pytest.raises(SystemExit) as info:
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

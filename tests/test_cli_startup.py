"""Start-up cost: ``vanillanet --help`` imports neither torch nor timm, ``list``/``info`` little beyond torch and
timm, and ``import vanillanet`` still registers the variants with timm (counted modules, not time: the machine is
shared)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
{code}
print(json.dumps(sorted(sys.modules)))
"""


def imported(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def cli(argv: list[str]) -> str:
    return f"from vanillanet.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"


def test_help_imports_neither_torch_nor_timm():
    mods = imported(cli(["--help"]))
    assert "torch" not in mods and "timm" not in mods and "numpy" not in mods
    assert {m for m in mods if m.startswith("vanillanet")} == {
        "vanillanet", "vanillanet.cli", "vanillanet.util", "vanillanet.util.errors", "vanillanet.model",
        "vanillanet.model.timm_hook", "vanillanet.util.validation"}  # validation: the environment check
    assert len(mods) < 250  # the standard library's argparse and friends


def test_import_vanillanet_is_cheap_and_still_registers_with_timm():
    assert "torch" not in imported("import vanillanet")
    mods = imported("import vanillanet, timm\nassert timm.is_model('vanillanet_5')")
    assert "vanillanet.model.registry" in mods
    imported("import timm, vanillanet\nassert timm.is_model('vanillanet_13_x1_5_ada_pool')")  # either order


def test_list_imports_little_beyond_torch_and_timm():
    base = imported("import torch, timm")
    extra = imported(cli(["list"])) - base
    assert not {m for m in extra if m.split(".")[0] in ("onnx", "onnxruntime", "onnxscript", "matplotlib")}
    assert not extra & {"vanillanet.export", "vanillanet.deploy.inference", "vanillanet.train", "vanillanet.bench"}
    assert len([m for m in extra if not m.startswith("vanillanet")]) < 40

"""The house rules that hold for the whole package: no function over 80 lines, and a test module for every module
(src/vanillanet/PKG/MOD.py in tests/test_PKG_MOD.py, a command src/vanillanet/CMD.py in tests/test_CMD.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vanillanet"
TESTS = ROOT / "tests"
MAX_LINES = 80
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def function_lengths(source: str) -> dict[str, int]:
    """Every function and method of ``source`` (nested ones too) by qualified name: its length in lines, from its
    first decorator to its last line."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                lengths[prefix + child.name] = child.end_lineno - start + 1
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return lengths


def test_function_lengths_are_measured_from_decorator_to_end():
    source = "@dec\ndef f():\n" + "    x = 1\n" * 5 + "class C:\n    def m(self):\n        def inner():\n" \
             "            pass\n        return inner\n"
    assert function_lengths(source) == {"f": 7, "C.m": 4, "C.m.inner": 2}


def test_no_function_is_longer_than_80_lines():
    long = [f"{path.relative_to(PACKAGE.parent)}:{name} ({n} lines)"
            for path in sorted(PACKAGE.rglob("*.py"))
            for name, n in function_lengths(path.read_text()).items() if n > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines: " + ", ".join(long)


def test_module(path: Path) -> Path:
    """Where the tests of the module at ``path`` live."""
    return TESTS / ("test_" + "_".join(path.relative_to(PACKAGE).with_suffix("").parts) + ".py")


test_module.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_has_its_own_test_module(path):
    expected = test_module(path)
    assert expected.is_file(), f"{path.relative_to(ROOT)} has no test module: write {expected.relative_to(ROOT)}"
    assert "def test_" in expected.read_text(), f"{expected.relative_to(ROOT)} holds no test"


def test_the_mirror_rule_maps_paths_as_documented():
    assert test_module(PACKAGE / "model" / "network.py") == TESTS / "test_model_network.py"
    assert test_module(PACKAGE / "train.py") == TESTS / "test_train.py"
    assert len(MODULES) > 50 and PACKAGE / "cli.py" in MODULES


def test_every_pytest_raises_has_a_match():
    """A raises without match= passes on any error of that type, the wrong one included."""
    bare = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "raises"
                    and getattr(node.func.value, "id", None) == "pytest"
                    and not any(k.arg == "match" for k in node.keywords)):
                bare.append(f"{path.name}:{node.lineno}")
    assert not bare, "pytest.raises without match=: " + ", ".join(bare)


def test_shared_fixtures_and_helpers_are_defined_once():
    """What tests/conftest.py provides (the tiny training config, narrow models, the ``straight`` run, kernel
    tensors, ...) is not defined again in a test module, where it would shadow the shared one."""
    def top_level(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        return names | {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                        if isinstance(t, ast.Name)}

    shared = top_level(TESTS / "conftest.py") - {"ROOT"}
    assert {"straight", "tiny_config", "build_variant", "kernel_device"} <= shared
    twice = [f"{path.name}: {', '.join(sorted(top_level(path) & shared))}" for path in sorted(TESTS.glob("test_*.py"))
             if top_level(path) & shared]
    assert not twice, "defined in conftest.py and again in " + "; ".join(twice)

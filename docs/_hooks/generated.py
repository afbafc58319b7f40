"""mkdocs hook: fill the documentation's generated parts from the code, so that the pages cannot drift from it.

A page asks for a generated part with an HTML comment (invisible where the markdown is read unrendered):

    <!-- gen:help train -->          `vanillanet train --help`, as a code block
    <!-- gen:variants -->            the variant table (models.VARIANTS)
    <!-- gen:published -->           the published numbers (models.PUBLISHED)
    <!-- gen:backends -->            the backend table (backends.BACKENDS)
    <!-- gen:modes -->               the named bench modes (backends.MODES)
    <!-- gen:sources -->             the data sources (data.SOURCES)
    <!-- gen:schedules -->           the act_learn schedules (deep_training.SCHEDULES)
    <!-- gen:recipes -->             the shipped training recipes
    <!-- gen:recipe-values -->       the per-variant values of the ImageNet recipes
    <!-- gen:config SECTION -->      the keys of one TrainConfig section
    <!-- gen:layers -->              the import layers of pyproject.toml's import-linter contract
    <!-- gen:tests -->               the test files and their docstrings
    <!-- gen:check-map -->           nothing; fails the build when the page's module map misses a module
    <!-- gen:check-commands -->      nothing; fails the build when a command has no usage page or table row
    <!-- gen:where model.variants.VARIANTS --> "`src/vanillanet/model/variants.py`, line N" (inline)

The package is imported from this checkout's ``src/`` (not from wherever it is installed), and an unknown marker
or a failing generator stops the build.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"<!--\s*gen:([\w-]+)(?:\s+([^\s>]+))?\s*-->")
ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
HELP_COLUMNS = "100"


def on_config(config: Any) -> Any:
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    return config


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    def replace(match: re.Match) -> str:
        kind, arg = match.group(1), match.group(2)
        gen = GENERATORS.get(kind)
        if gen is None:
            raise PluginError(f"{page.file.src_path}: unknown marker gen:{kind}; known: {', '.join(GENERATORS)}")
        try:
            return gen(arg, markdown)
        except PluginError:
            raise
        except Exception as err:  # report which marker of which page failed, in one line
            where = f"{page.file.src_path}: gen:{kind} {arg or ''}"
            raise PluginError(f"{where} failed: {type(err).__name__}: {err}") from err

    return MARKER.sub(replace, markdown)


# ---- helpers ------------------------------------------------------------------------------------------------------
def _mod(name: str) -> Any:
    return importlib.import_module(f"vanillanet.{name}")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _runs(values: tuple[int, ...]) -> str:
    """'512, 512, 1024, 2048 x4, 4096, 4096': runs of three or more equal values shortened."""
    out, i = [], 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        n = j - i
        out += [f"{values[i]} x{n}"] if n >= 3 else [str(values[i])] * n
        i = j
    return ", ".join(out)


def _value(v: Any) -> str:
    """A setting's value as YAML would write it, floats shortened (0.75, 1.33333, 1e-06)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").split())
    return text.split(". ")[0].rstrip(".")


# ---- generators (arg, page markdown) -> markdown -------------------------------------------------------------------
def gen_help(command: str | None, _: str) -> str:
    cli = _mod("cli")
    if command not in cli.COMMANDS:
        raise PluginError(f"gen:help needs a command ({', '.join(cli.COMMANDS)}), got {command!r}")
    os.environ["COLUMNS"] = HELP_COLUMNS  # argparse wraps to the terminal width: fix it for stable pages
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):  # exactly what `--help` prints
        cli.main([command, "--help"])
    return f"```text\n$ vanillanet {command} --help\n{out.getvalue().rstrip()}\n```"


def gen_variants(_: str | None, __: str) -> str:
    models, geometry = _mod("model.variants"), _mod("model.geometry")
    rows = []
    for name, spec in models.VARIANTS.items():
        stride, padding = geometry.stem_stride_padding(spec.ada_pool)
        pools = ", ".join(str(a) for a in spec.ada_pool) if spec.ada_pool else "-"
        last = geometry.feature_map_sides(224, spec.strides, spec.ada_pool)[-1]
        rows.append([f"`{name}`", len(spec.strides), _runs(spec.dims), ", ".join(map(str, spec.strides)),
                     f"stride {stride}, padding {padding}", pools, f"{last}x{last}",
                     f"{geometry.min_input_side(spec.strides, spec.ada_pool)} px"])
    return _table(["variant", "blocks", "dims (stem, then each block's output)", "block strides", "4x4 stem conv",
                   "adaptive pool sizes", "last map at 224 px", "smallest input"], rows)


def gen_published(_: str | None, __: str) -> str:
    models = _mod("model.variants")
    rows = [[f"`{n}`", p.params_m, p.gmacs, p.top1, p.real_top1, p.a100_ms] for n, p in models.PUBLISHED.items()]
    return _table(["variant", "params (M)", "GMACs", "top-1 %", "ReaL top-1 %", "A100 latency (ms)"], rows)


def _dtype_names(dtypes: tuple) -> str:
    names = _mod("deploy.backends").DTYPE_NAMES
    return ", ".join(names.get(d, str(d)) for d in dtypes)


def gen_backends(_: str | None, __: str) -> str:
    backends = _mod("deploy.backends")
    rows = []
    for b in backends.BACKENDS.values():
        rows.append([f"`{b.name}`", b.summary, ", ".join(b.devices), _dtype_names(b.dtypes),
                     "any" if b.any_batch else "built shape only", "yes" if b.exact else "no (approximate)",
                     "yes" if b.auto and b.exact else "no", ", ".join(f"`{m}`" for m in b.requires) or "-"])
    return _table(["backend", "what it does", "devices", "dtypes", "batch sizes", "exact", "`auto` candidate",
                   "needs"], rows)


def gen_modes(_: str | None, __: str) -> str:
    backends = _mod("deploy.backends")
    rows = []
    for m in backends.MODES.values():
        notes = [n for n, on in (("synchronised after every call", m.sync_each), ("batch 1 only", m.batch1_only))
                 if on]
        rows.append([f"`{m.label}`", f"`{m.backend}`", backends.DTYPE_NAMES[m.dtype],
                     "channels_last" if m.channels_last else "NCHW", "; ".join(notes) or "-"])
    return _table(["mode", "backend", "dtype", "layout", "notes"], rows)


def gen_sources(_: str | None, __: str) -> str:
    data = _mod("data.sources")
    rows = []
    for s in data.SOURCES.values():
        d = s.defaults
        mean = ", ".join(f"{v:.4g}" for v in d.mean)
        std = ", ".join(f"{v:.4g}" for v in d.std)
        opts = "<br>".join(f"`{n}` (default `{_value(o.default)}`; training key `{o.config_key}`): {o.help}"
                           if o.config_key else f"`{n}` (default `{_value(o.default)}`): {o.help}"
                           for n, o in s.options.items()) or "-"
        name = f"`{s.name}`" if s.name != "folder" else "any other path (`folder`)"
        rows.append([name, s.summary, f"{d.img_size} px, crop {d.crop_pct:g}, mean ({mean}), std ({std})", opts])
    return _table(["`--data`", "what", "defaults (size, eval crop, normalisation)", "options"], rows)


def gen_schedules(_: str | None, __: str) -> str:
    dt = _mod("training.deep_training")
    rows = [[f"`{n}`", _first_sentence(f.__doc__)] for n, f in dt.SCHEDULES.items()]
    return _table(["schedule", "rule (its docstring)"], rows)


def gen_recipes(_: str | None, __: str) -> str:
    tc, models = _mod("training.config"), _mod("model.variants")
    recipes = tc.list_recipes()
    order = [n for n in recipes if n not in models.VARIANTS] + [n for n in models.VARIANTS if n in recipes]
    rows = []
    for name, content in ((n, recipes[n]) for n in order):
        aliases = ", ".join(f"`{a}`" for a in content.get("aliases") or []) or "-"
        rows.append([f"`{name}`", "derived" if content.get("derived") else "published",
                     f"`{content['base']}`" if content.get("base") else "-", aliases, content.get("description", "")])
    return _table(["recipe", "status", "base", "also called", "description"], rows)


def gen_recipe_values(_: str | None, __: str) -> str:
    tc, models = _mod("training.config"), _mod("model.variants")
    recipes, rows = tc.list_recipes(), []
    for name in (n for n in models.VARIANTS if n in recipes):  # in the variant table's order
        content, cfg = recipes[name], tc.resolve_config(name)
        decay = f"{cfg.layer_decay:g} / {cfg.layer_decay_layers}" if cfg.layer_decay else "-"
        rows.append([f"`{name}`", "derived" if content.get("derived") else "published", f"{cfg.lr:g}",
                     f"{cfg.weight_decay:g}", f"{cfg.drop_rate:g}", f"{cfg.mixup:g}", decay])
    return _table(["recipe", "status", f"lr (batch {tc.TrainConfig().lr_base_size})", "weight decay", "head dropout",
                   "mixup", "layer decay (rate / blocks)"], rows)


def gen_config(section: str | None, __: str) -> str:
    import typing

    config, tc = _mod("util.validation"), _mod("training.config")
    hints = typing.get_type_hints(tc.TrainConfig)
    if section not in hints:
        raise PluginError(f"gen:config needs a TrainConfig section ({', '.join(hints)}), got {section!r}")
    cls = hints[section]
    defaults = config.to_flat(cls())
    keys = {k: v for k, v in config.keys_of(tc.TrainConfig).items() if v.section == section}
    rows = []
    for name, key in keys.items():
        meta = key.field.metadata
        allowed = " | ".join(f"`{c}`" for c in meta["choices"]) if meta.get("choices") else ""
        bounds = [f"{op} {meta[b]:g}" for b, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                  if meta.get(b) is not None]
        allowed = allowed or ", ".join(bounds) or "-"
        flag = f"--{name.replace('_', '-')}"
        flags = ", ".join(f"`{f}`" for f in (flag, *meta.get("aliases", ())))
        if key.hint is bool:
            flags = f"`{flag}` / `--no-{flag[2:]}`"
        if typing.get_origin(key.hint) is dict or dict in map(typing.get_origin, typing.get_args(key.hint)):
            flags = "`--set` or a recipe only"
        rows.append([f"`{name}`", f"`{_value(defaults[name])}`", allowed, flags, meta.get("help", "")])
    return _table(["key", "default", "allowed", "flag", "meaning"], rows)


def _contracts() -> list[dict[str, Any]]:
    """pyproject.toml's import-linter layer contracts: the package order first, then one per package."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [c for c in data["tool"]["importlinter"]["contracts"] if c.get("type") == "layers"]


def _names(layer: str) -> list[str]:
    return [n.strip() for n in re.split(r"[|:]", layer)]


def gen_layers(_: str | None, __: str) -> str:
    blocks = []
    for contract in _contracts():
        container = contract["containers"][0]
        lines = [f"{i + 1:>2}  {layer}" for i, layer in enumerate(contract["layers"])]
        ignored = ", ".join(contract.get("exhaustive_ignores", [])) or "none"
        blocks.append(f"{container}  ({contract['name']})\n" + "\n".join(lines) + f"\n    outside: {ignored}")
    return ("```text\n(in each block, the top may import everything below it; the bottom imports nothing of that "
            "block)\n\n" + "\n\n".join(blocks) + "\n```")


def _modules() -> list[str]:
    """Every module the contracts place: commands and packages as NAME, a package's modules as PACKAGE.NAME."""
    names = []
    for contract in _contracts():
        prefix = contract["containers"][0].removeprefix("vanillanet").lstrip(".")
        own = [n for layer in contract["layers"] for n in _names(layer)] + list(contract.get("exhaustive_ignores", []))
        names += [f"{prefix}.{n}" if prefix else n for n in own]
    return names


def gen_check_map(_: str | None, markdown: str) -> str:
    missing = [m for m in _modules() if not re.search(rf"^\|\s*`{re.escape(m)}`", markdown, re.M)]
    if missing:
        raise PluginError(f"the module map has no row for {', '.join(missing)}: add a line '| `NAME` | ... |' "
                          "to docs/contributing.md for each module of pyproject.toml's import contract")
    return ""


def _tested_module(test_file: Path) -> str:
    """The module a test file mirrors (tests/test_PKG_MOD.py -> ``PKG.MOD``, tests/test_CMD.py -> ``CMD``; the
    longest name that is a module, so tests/test_train_faults.py tests ``train``), a package, or "-" for files that
    check the repository as a whole."""
    parts = test_file.stem.removeprefix("test_").split("_")
    src = ROOT / "src" / "vanillanet"
    package = (src / parts[0]).is_dir()
    for cut in range(len(parts), 0, -1):
        if package and cut > 1 and (src / parts[0] / f"{'_'.join(parts[1:cut])}.py").is_file():
            return f"{parts[0]}.{'_'.join(parts[1:cut])}"
        if (src / f"{'_'.join(parts[:cut])}.py").is_file():
            return "_".join(parts[:cut])
    return f"{parts[0]} (the package)" if package else "-"


def gen_tests(_: str | None, __: str) -> str:
    rows = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module = _tested_module(path)
        rows.append([f"`tests/{path.name}`", module if module == "-" else f"`{module}`",
                     " ".join((ast.get_docstring(tree) or "").split())])
    return _table(["file", "tests", "what it checks (its docstring)"], rows)


def gen_check_commands(_: str | None, markdown: str) -> str:
    commands = _mod("cli").COMMANDS
    missing = [c for c in commands if not (ROOT / "docs" / "usage" / f"{c}.md").is_file()
               or not re.search(rf"^\|\s*`vanillanet {re.escape(c)}[ `]", markdown, re.M)]
    if missing:
        raise PluginError(f"command(s) {', '.join(missing)} lack a page docs/usage/NAME.md (with the option list "
                          "generated by its gen:help marker) or a row in docs/usage/index.md's command table")
    return ""


def _defines(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    return []


def gen_where(target: str | None, _: str) -> str:
    """MODULE.NAME or MODULE.CLASS.ATTRIBUTE -> where it is defined (file and line), read from the source."""
    parts = (target or "").split(".")
    for i in range(len(parts) - 1, 0, -1):
        path = SRC / "vanillanet" / ("/".join(parts[:i]) + ".py")
        if path.is_file():
            break
    else:
        raise PluginError(f"gen:where needs MODULE.NAME of a module in src/vanillanet, got {target!r}")
    body, node = ast.parse(path.read_text()).body, None
    for name in parts[i:]:
        node = next((n for n in body if name in _defines(n)), None)
        if node is None:
            raise PluginError(f"gen:where: {target} is not defined in {path.relative_to(ROOT)}")
        body = getattr(node, "body", [])
    return f"`{path.relative_to(ROOT)}`, line {node.lineno}"


GENERATORS = {
    "help": gen_help, "variants": gen_variants, "published": gen_published, "backends": gen_backends,
    "modes": gen_modes, "sources": gen_sources, "schedules": gen_schedules, "recipes": gen_recipes,
    "recipe-values": gen_recipe_values,
    "config": gen_config, "layers": gen_layers, "tests": gen_tests, "check-map": gen_check_map,
    "check-commands": gen_check_commands, "where": gen_where,
}

"""`golf new-plugin NAME`: a third-party plugin package to start from.

The package holds a pyproject.toml registering the plugin under the `golf.plugins` entry
point, the plugin module (a typed Config and one stub per chosen hook), a test that runs the
plugin in a tiny recipe, and a README. The stubs are generated from golfcore.hookspecs with
`inspect` (parameters, annotations, the docstring's first paragraph), so they follow the hooks
as they change; each returns None, so the plugin is a valid no-op until edited.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import keyword
import re
import sys
import textwrap
from pathlib import Path
from string import Template

import golfcore
from golfcore import hookspecs
from golfcore.errors import ConfigError, GolfError


def hook_specs() -> dict[str, object]:
    """Every hookspec function by name, in the order hookspecs.py defines them (a run's order)."""
    specs = [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, f"{hookspecs.PROJECT}_spec")]
    return {f.__name__: f for f in sorted(specs, key=lambda f: f.__code__.co_firstlineno)}


def _annotation(annotation) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _hookspecs_imports() -> dict[str, str]:
    """Each name hookspecs.py imports (at top level or under TYPE_CHECKING) -> an import line
    that binds it in another package; the public `golfcore` surface is preferred."""
    lines: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(hookspecs))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                lines[alias.asname or alias.name] = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
        elif isinstance(node, ast.ImportFrom):
            module = "golfcore" + (f".{node.module}" if node.module else "") if node.level else node.module
            for alias in node.names:
                bound = alias.asname or alias.name
                public = module.startswith("golfcore.") and hasattr(golfcore, alias.name)
                source = "golfcore" if public else module
                lines[bound] = f"from {source} import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
    return lines


def _type_imports(annotations: list[str]) -> list[str]:
    """The import lines the names in these annotations need (annotation-only: TYPE_CHECKING)."""
    known = _hookspecs_imports()
    names = {m for a in annotations for m in re.findall(r"(?<![\w.])[A-Za-z_]\w*", a)}
    lines = {known[n] for n in names if n in known and not hasattr(builtins, n)}

    def order(line: str) -> tuple:  # standard library, third party, golf; then by module
        module = line.split()[1]
        top = module.split(".")[0]
        return (0 if top in sys.stdlib_module_names else 2 if top == "golfcore" else 1, module, line.startswith("from"))

    return sorted(lines, key=order)


def _stub(spec) -> tuple[str, list[str]]:
    """The source of one hook implementation returning None, and the annotations it uses."""
    sig = inspect.signature(spec)
    params, annotations = ["self"], []
    for p in sig.parameters.values():
        if p.annotation is inspect.Parameter.empty:
            params.append(p.name)
        else:
            params.append(f"{p.name}: {_annotation(p.annotation)}")
            annotations.append(_annotation(p.annotation))
    returns = ""
    if sig.return_annotation is not inspect.Signature.empty:
        returns = f" -> {_annotation(sig.return_annotation)}"
        annotations.append(_annotation(sig.return_annotation))
    summary = inspect.getdoc(spec).split("\n\n")[0].replace("\\", "\\\\")
    doc = textwrap.indent(summary, " " * 8).lstrip()
    source = (f"    @golf.hookimpl\n"
              f"    def {spec.__name__}({', '.join(params)}){returns}:\n"
              f'        """{doc}"""\n'
              f"        return None\n")
    return source, annotations


MODULE = Template('''\
"""$name: TODO say in a few lines what this plugin changes and why.

Enabled by a `[plugins.$name]` table in a recipe (or `golf run RECIPE --with $name`).
"""

from __future__ import annotations

from dataclasses import dataclass
$typing_import
import golfcore as golf
$type_checking

@dataclass
class Config(golf.Section):
    scale: float = golf.option(1.0, "an example option: read it as self.config.scale")

    def check(self) -> None:
        if self.scale <= 0:
            raise self.invalid("scale", f"{self.scale} must be > 0")


class $cls(golf.Plugin):
    name = "$name"
    description = "TODO: what $name does, in one line"
    Config = Config
$stubs''')

PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "golf-$name"
version = "0.1.0"
description = "A golf plugin: $name"
requires-python = ">=3.11"
dependencies = ["golf"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points."golf.plugins"]
$name = "$package:$cls"

[tool.setuptools]
packages = ["$package"]
''')

TEST = Template('''\
"""$name in a tiny recipe: built, trained two steps on CPU, exported, scored."""

import json
import subprocess
import sys

RECIPE = """
[run]
name = "$name-smoke"
out_dir = "{out}"
[data]
corpus = "pystdlib"
root = "{data}"
max_val_tokens = 2048
[model]
num_layers = 2
model_dim = 32
num_heads = 2
num_kv_heads = 1
[train]
device = "cpu"
compile = "off"
iterations = 2
warmup_steps = 0
warmdown_iters = 0
max_wallclock_seconds = 0
batch_tokens = 512
seq_len = 64
micro_batches = 1
val_every = 0
[eval]
batch_seqs = 4
[plugins.$name]
"""


def test_runs_in_a_tiny_recipe(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE.format(out=(tmp_path / "runs").as_posix(), data=(tmp_path / "data").as_posix()))
    proc = subprocess.run([sys.executable, "-m", "golf_cli", "run", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert "$name" in result["plugins"] and result["steps"] == 2
    assert result["val_bpb"] > 0
''')

README = Template('''\
# golf-$name

A plugin for golf (parameter-golf ablations). TODO: what it changes and why.

```bash
pip install -e .  # registers `$name` under the golf.plugins entry point
golf plugins show $name  # its hooks and config fields
python -m pytest tests  # runs it in a tiny recipe on CPU (seconds)
```

Enable it in a recipe:

```toml
extends = "recipes/quickstart.toml"
[plugins.$name]
scale = 1.0
```

or for one run: `golf run RECIPE --with $name`.

Hooks implemented (each a stub returning None, which leaves the core's behaviour unchanged):
$hooks
Golf's docs/hooks.md says when each hook is called and what it may change;
docs/writing-plugins.md gives the rules a plugin follows (declared parameters,
compile-friendly modules).
''')


def new_plugin(name: str, hooks: list[str], parent: Path) -> Path:
    """Write the package for plugin `name` with stubs for `hooks` into parent/golf-NAME."""
    from golfcore.plugins import discover

    if not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigError(f"plugin name {name!r} is not a Python identifier (it names the [plugins.NAME] table)")
    specs = hook_specs()
    chosen = [h if h.startswith("golf_") else f"golf_{h}" for h in hooks]
    for given, hook in zip(hooks, chosen):
        if hook not in specs:
            raise ConfigError(f"unknown hook {given!r} (hooks: {', '.join(specs)})")
    target = Path(parent) / f"golf-{name}"
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target}: exists and is not empty")
    installed = discover()
    if name in installed:
        raise ConfigError(f"a plugin named {name!r} is already installed ({installed[name].source}); choose another name")

    package, cls = f"golf_{name}", "".join(part.capitalize() for part in name.split("_")) or "Plugin"
    stubs, annotations = [], []
    for hook in dict.fromkeys(chosen):  # in the order given, each once
        source, used = _stub(specs[hook])
        stubs.append(source)
        annotations += used
    imports = _type_imports(annotations)
    type_checking = ("\nif TYPE_CHECKING:\n" + "".join(f"    {line}\n" for line in imports)) if imports else ""
    module = MODULE.substitute(
        name=name, cls=cls, typing_import="from typing import TYPE_CHECKING\n" if imports else "",
        type_checking=type_checking, stubs="".join(f"\n{s}" for s in stubs),
    )
    hook_list = "".join(f"- `{h}`\n" for h in dict.fromkeys(chosen)) or "- none yet: add `@golf.hookimpl` methods named after golfcore.hookspecs\n"
    files = {
        "pyproject.toml": PYPROJECT.substitute(name=name, package=package, cls=cls),
        f"{package}/__init__.py": module,
        f"tests/test_{name}.py": TEST.substitute(name=name),
        "README.md": README.substitute(name=name, hooks=hook_list),
    }
    for relative, text in files.items():
        path = target / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as e:
            raise GolfError(f"--dir {parent}: cannot create {path} ({e.strerror or e})") from None
    return target

"""golfcore.bundle: which modules a run's train_gpt.py carries, its bytes, and reading them back."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from golfcore.bundle import ENCODING_LABEL, SCRIPT_LABEL, Bundle
from golfcore.errors import GolfError
from golfcore.plugins import discover
from golfcore.recipe import dump_toml, load_recipe

REPO = Path(__file__).resolve().parent.parent
RECIPE = "[run]\nname = \"bundled\"\n"


def xsa_and_ema():
    available = discover()
    config = load_recipe(REPO / "recipes" / "quickstart.toml", available, with_=["xsa", "ema"])
    return [available[name].module for name in config.plugins], dump_toml(config)


def test_golfcore_modules_are_those_the_script_imports():
    """The static closure equals what importing the script's entry loads (a fresh interpreter)."""
    modules, recipe = xsa_and_ema()
    bundle = Bundle.for_run(modules, recipe)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, golfcore.submission; print(' '.join(m for m in sys.modules if m.startswith('golfcore')))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert {m.name for m in bundle.modules if m.name.split(".")[0] == "golfcore"} == set(loaded)
    labels = set(bundle.files())
    assert {"golfcore/__init__.py", "golfcore/run.py", "golfcore/submission.py", "recipe.toml"} <= labels
    assert {"golf_plugins/__init__.py", "golf_plugins/xsa.py", "golf_plugins/ema.py"} <= labels
    assert "golf_plugins/ttt.py" not in labels  # installed, not enabled
    assert not any(label.startswith(("golf_cli", "golf_tools", "golfcore/assets")) for label in labels)


def test_a_third_party_package_brings_the_modules_it_imports(tmp_path, monkeypatch):
    package = tmp_path / "thirdparty_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import golfcore as golf\n\n\ndef later():\n    from . import helper\n")
    (package / "helper.py").write_text("from thirdparty_pkg.deep import value\n")
    (package / "deep.py").write_text("value = 1\n")
    (package / "unused.py").write_text("value = 2\n")
    monkeypatch.syspath_prepend(tmp_path)
    bundle = Bundle.for_run([importlib.import_module("thirdparty_pkg")], RECIPE)
    ours = sorted(label for label in bundle.files() if label.startswith("thirdparty_pkg"))
    assert ours == ["thirdparty_pkg/__init__.py", "thirdparty_pkg/deep.py", "thirdparty_pkg/helper.py"]


def test_a_plugin_importing_tooling_is_refused(tmp_path, monkeypatch):
    (tmp_path / "tooling_plugin.py").write_text("def f():\n    import golf_tools.corpora\n")
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(GolfError, match="plugin module tooling_plugin: tooling_plugin.py imports golf_tools.corpora"):
        Bundle.for_run([importlib.import_module("tooling_plugin")], RECIPE)


def test_bytes_are_deterministic_and_add_up():
    modules, recipe = xsa_and_ema()
    first, second = Bundle.for_run(modules, recipe), Bundle.for_run(modules, recipe)
    assert first.script == second.script and first.sha256 == second.sha256
    assert first.code_bytes == len(first.script.encode("utf-8"))
    files = first.code_files()
    assert sum(files.values()) == first.code_bytes
    assert files[ENCODING_LABEL] < 0 < files[SCRIPT_LABEL]  # compression shrinks the sources
    assert first.raw_files()["golfcore/eval.py"] == (REPO / "golfcore" / "eval.py").stat().st_size
    assert files["golfcore/eval.py"] < 0.7 * first.raw_files()["golfcore/eval.py"]  # minified: no docstrings, comments
    verbatim = Bundle.for_run(modules, recipe, minify=False)
    assert verbatim.code_files()["golfcore/eval.py"] == first.raw_files()["golfcore/eval.py"]
    assert first.code_bytes < 0.7 * verbatim.code_bytes
    assert Bundle.for_run(modules, recipe + "\n").sha256 != first.sha256  # the recipe is code


def test_sources_writes_readable_files_with_the_original_code(tmp_path):
    """--sources writes each module as ast.unparse lays out the minified text (what runs): the same
    syntax tree as golf's file without docstrings and annotations outside classes; the recipe verbatim."""
    modules, recipe = xsa_and_ema()
    script = tmp_path / "train_gpt.py"
    script.write_text(Bundle.for_run(modules, recipe).script, encoding="utf-8")
    subprocess.run([sys.executable, "-I", str(script), "--sources", str(tmp_path / "src")], check=True, cwd=tmp_path)
    written = sorted(str(p.relative_to(tmp_path / "src")) for p in (tmp_path / "src").rglob("*") if p.is_file())
    assert written == sorted(Bundle.for_run(modules, recipe).files())
    assert (tmp_path / "src" / "recipe.toml").read_text(encoding="utf-8") == recipe
    for label in written:
        top, _, rest = label.partition("/")
        original = {"golfcore": REPO / "golfcore", "golf_plugins": REPO / "plugins"}.get(top)
        if original is None:
            continue
        text = (tmp_path / "src" / label).read_text(encoding="utf-8")
        ours = ast.parse(text)
        lines = [node.lineno for node in ast.walk(ours) if isinstance(node, ast.stmt)]
        assert "\t" not in text and len(lines) == len(set(lines)), label  # one statement per line
        assert len(ast.dump(ours)) <= len(ast.dump(ast.parse((original / rest).read_text(encoding="utf-8")))), label
        names = {n.name for n in ast.walk(ours) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        source_names = {n.name for n in ast.walk(ast.parse((original / rest).read_text(encoding="utf-8")))
                        if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert names == source_names, label  # nothing renamed, nothing dropped


def test_the_script_header_lists_every_file():
    modules, recipe = xsa_and_ema()
    bundle = Bundle.for_run(modules, recipe)
    header = bundle.script.split("\nimport ", 1)[0]
    assert 'from the recipe "quickstart"' in header
    for label, size in bundle.code_files().items():
        if label not in (ENCODING_LABEL, SCRIPT_LABEL):
            assert f"#   {label} " in header and f"{size:,} bytes" in header
    assert "python train_gpt.py --sources DIR" in header

"""`golf new-plugin`: the generated package installs, is discovered, and its own test passes."""

import importlib.util
import inspect
import os
import subprocess
import sys

import pytest

from golf_cli.scaffold import hook_specs, new_plugin
from golfcore.errors import ConfigError

HOOKS = ["golf_edit_model", "step_end"]


def test_stubs_have_the_hookspec_signatures_and_do_nothing(tmp_path, monkeypatch):
    target = new_plugin("scaffold_probe", HOOKS, tmp_path)
    spec = importlib.util.spec_from_file_location("scaffold_probe_module", target / "golf_scaffold_probe" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    plugin = module.ScaffoldProbe()
    assert plugin.name == "scaffold_probe" and plugin.config.scale == 1.0
    specs = hook_specs()
    for hook in ("golf_edit_model", "golf_step_end"):
        method = getattr(plugin, hook)
        expected = inspect.signature(specs[hook])
        assert inspect.signature(method).parameters == expected.parameters
        assert inspect.signature(method).return_annotation == expected.return_annotation
        assert inspect.getdoc(method) == inspect.getdoc(specs[hook]).split("\n\n")[0]
        assert method(**{name: None for name in expected.parameters}) is None
    assert not hasattr(plugin, "golf_train_end")


@pytest.mark.parametrize(
    "name, hooks, message",
    [
        ("2fast", [], "plugin name '2fast' is not a Python identifier"),
        ("class", [], "plugin name 'class' is not a Python identifier"),
        ("fine", ["golf_mlp_activaton"], "unknown hook 'golf_mlp_activaton' (hooks: golf_check_config, "),
        ("ema", [], "a plugin named 'ema' is already installed (builtin)"),
    ],
)
def test_refusals(tmp_path, name, hooks, message):
    with pytest.raises(ConfigError) as e:
        new_plugin(name, hooks, tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())


def test_refuses_a_non_empty_target(tmp_path):
    (tmp_path / "golf-taken").mkdir()
    (tmp_path / "golf-taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="golf-taken: exists and is not empty"):
        new_plugin("taken", [], tmp_path)
    assert (tmp_path / "golf-taken" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_generated_package_installs_is_discovered_and_its_test_passes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "golf_cli", "new-plugin", "scaffold_demo", "--dir", tmp_path,
                           *[arg for hook in HOOKS for arg in ("--hook", hook)]], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    source = tmp_path / "golf-scaffold_demo"
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", site, source], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "golf_cli", "plugins", "show", "scaffold_demo"],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "scaffold_demo: TODO: what scaffold_demo does, in one line"
    assert "  source:  entry point (golf-scaffold_demo)" in lines and "  version: 0.1.0" in lines
    assert "  hooks:   golf_edit_model, golf_step_end" in lines
    assert f"  file:    {site / 'golf_scaffold_demo' / '__init__.py'}" in lines
    generated = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                               cwd=source, capture_output=True, text=True, env=env)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "1 passed" in generated.stdout

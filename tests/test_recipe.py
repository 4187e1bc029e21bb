from dataclasses import dataclass
from pathlib import Path

import pytest

import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.plugins import PluginInfo
from golfcore.recipe import dump_toml, load_recipe

REPO = Path(__file__).resolve().parent.parent


@dataclass
class KnobConfig(golf.Section):
    strength: float = golf.option(0.5, "how strong")
    layers: list[int] = golf.option([1, 2], "where")
    mode: str = golf.option("a", "a or b")

    def check(self):
        if self.mode not in ("a", "b"):
            raise self.invalid("mode", f"{self.mode!r} is not 'a' or 'b'")


class Knob(golf.Plugin):
    name = "knob"
    description = "test plugin"
    Config = KnobConfig


class Other(golf.Plugin):
    name = "other"
    description = "another"


AVAILABLE = {c.name: PluginInfo(c.name, c, "test", "0") for c in (Knob, Other)}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_plugin_table(tmp_path):
    path = write(tmp_path, "r.toml", "[model]\nnum_layers = 3\n[plugins.knob]\nstrength = 2\n")
    config = load_recipe(path, AVAILABLE)
    assert config.model.num_layers == 3 and config.model.model_dim == 512
    assert config.plugins["knob"].strength == 2.0 and isinstance(config.plugins["knob"].strength, float)
    assert config.plugins["knob"].layers == [1, 2]


def test_extends_merges_and_disables(tmp_path):
    write(tmp_path, "base.toml", "[model]\nnum_layers = 3\nmodel_dim = 64\n[plugins.knob]\nmode = 'b'\n[plugins.other]\n")
    path = write(tmp_path, "child.toml", "extends = 'base.toml'\n[model]\nnum_layers = 5\n[plugins.other]\nenabled = false\n")
    config = load_recipe(path, AVAILABLE)
    assert (config.model.num_layers, config.model.model_dim) == (5, 64)
    assert list(config.plugins) == ["knob"] and config.plugins["knob"].mode == "b"


def test_cli_overrides(tmp_path):
    path = write(tmp_path, "r.toml", "[plugins.knob]\n")
    config = load_recipe(path, AVAILABLE, sets=["model.num_layers=2", "plugins.knob.layers=[4, 5]", "run.name=hello"],
                         with_=["other"], without=["knob"])
    assert config.model.num_layers == 2 and config.run.name == "hello"
    assert list(config.plugins) == ["other"]


@pytest.mark.parametrize(
    "text, sets, message",
    [
        ("[modle]\n", [], "unknown section [modle]"),
        ("[model]\nnum_layrs = 3\n", [], "[model] unknown key 'num_layrs'"),
        ("[model]\nnum_layers = 'x'\n", [], "[model] num_layers = 'x': expected int"),
        ("[model]\nnum_heads = 3\n", [], "[model] num_heads: 3 does not divide model_dim"),
        ("[plugins.nope]\n", [], "[plugins.nope] unknown plugin"),
        ("[plugins.knob]\nmode = 'c'\n", [], "[plugins.knob] mode: 'c' is not"),
        ("[plugins.knob]\nlayers = [1, 'x']\n", [], "[plugins.knob] layers = [1, 'x']: expected list"),
        ("[model\n", [], "invalid TOML"),
        ("", ["model.num_layers"], "expected section.key=value"),
        ("", ["model.bogus=1"], "[model] unknown key 'bogus'"),
        ("extends = 'missing.toml'\n", [], "missing.toml: recipe not found"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, sets, message):
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path, AVAILABLE, sets=sets)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value) or "--set" in str(info.value) or "missing.toml" in str(info.value)


def test_without_a_plugin_that_is_not_enabled(tmp_path):
    path = write(tmp_path, "r.toml", "")
    with pytest.raises(ConfigError, match="--without knob"):
        load_recipe(path, AVAILABLE, without=["knob"])


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.toml", "extends = 'b.toml'\n")
    write(tmp_path, "b.toml", "extends = 'a.toml'\n")
    with pytest.raises(ConfigError, match="extends cycle"):
        load_recipe(tmp_path / "a.toml", AVAILABLE)


def test_dump_round_trips(tmp_path):
    path = write(tmp_path, "r.toml", "[model]\nnum_layers = 3\n[plugins.knob]\nlayers = [7]\n")
    config = load_recipe(path, AVAILABLE)
    again = load_recipe(write(tmp_path, "resolved.toml", dump_toml(config)), AVAILABLE)
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_resolve(recipe):
    from golfcore.plugins import discover

    available = discover()
    config = load_recipe(recipe, available)
    assert config.model.vocab_size == (8192 if recipe.stem in ("pr1855", "pr2135") else 1024)  # the tokenizer's


class NeedsKnob(golf.Plugin):
    name = "needs_knob"
    requires = ("knob",)


class HatesOther(golf.Plugin):
    name = "hates_other"
    conflicts = ("other",)


def test_requires_and_conflicts_are_checked(tmp_path):
    available = {**AVAILABLE, **{c.name: PluginInfo(c.name, c, "test", "0") for c in (NeedsKnob, HatesOther)}}
    path = write(tmp_path, "r.toml", "[plugins.needs_knob]\n[plugins.knob]\n[plugins.other]\n")
    assert list(load_recipe(path, available).plugins) == ["needs_knob", "knob", "other"]
    with pytest.raises(ConfigError, match=r"r.toml: plugin 'needs_knob' requires plugin 'knob', which is not enabled"):
        load_recipe(path, available, without=["knob"])
    with pytest.raises(ConfigError, match=r"r.toml: plugins 'hates_other' and 'other' conflict; enable only one"):
        load_recipe(path, available, with_=["hates_other"])

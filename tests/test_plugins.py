import textwrap

import pytest

import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.plugins import Host, PluginInfo, discover
from tests.helpers import tiny_config


def test_plugins_dir_modules_are_discovered(tmp_path):
    (tmp_path / "loud.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import golfcore as golf

        @dataclass
        class Config(golf.Section):
            volume: int = golf.option(11, "how loud")

        class Loud(golf.Plugin):
            name = "loud"
            description = "turns it up"
            Config = Config

            @golf.hookimpl
            def golf_sublayer_input_scale(self, config, layer):
                return 2.0
    '''))
    available = discover([tmp_path])
    info = available["loud"]
    assert info.source == str(tmp_path / "loud.py") and info.hooks == ["golf_sublayer_input_scale"]


def test_broken_plugin_file_is_a_one_line_error(tmp_path):
    (tmp_path / "broken.py").write_text("import nonexistent_module_xyz\n")
    with pytest.raises(ConfigError, match="broken.py: failed to import: ModuleNotFoundError"):
        discover([tmp_path])


def test_plugin_needs_a_name(tmp_path):
    (tmp_path / "anon.py").write_text("import golfcore as golf\nclass Anon(golf.Plugin):\n    pass\n")
    with pytest.raises(ConfigError, match="needs a `name`"):
        discover([tmp_path])


def test_duplicate_names_are_refused(tmp_path):
    for f in ("a.py", "b.py"):
        (tmp_path / f).write_text("import golfcore as golf\nclass P(golf.Plugin):\n    name = 'same'\n")
    with pytest.raises(ConfigError, match="provided twice"):
        discover([tmp_path])


class Typo(golf.Plugin):
    name = "typo"

    @golf.hookimpl
    def golf_mlp_activaton(self, config, layer):  # misspelt hook name
        return None


def test_unknown_hook_name_is_refused():
    config = tiny_config()
    config.plugins["typo"] = Typo.Config()
    with pytest.raises(ConfigError, match="typo"):
        Host(config, {"typo": PluginInfo("typo", Typo, "test", "0")})


class A(golf.Plugin):
    name = "a"

    @golf.hookimpl
    def golf_layer_schedule(self, config):
        return [0, 1]


class B(A):
    name = "b"


def test_two_answers_to_a_firstresult_hook_is_an_error():
    config = tiny_config()
    available = {c.name: PluginInfo(c.name, c, "test", "0") for c in (A, B)}
    config.plugins = {"a": A.Config(), "b": B.Config()}
    with pytest.raises(ConfigError, match="both implement golf_layer_schedule"):
        Host(config, available).first("golf_layer_schedule", config=config)


def test_only_enabled_plugins_run():
    config = tiny_config()
    available = {c.name: PluginInfo(c.name, c, "test", "0") for c in (A, B)}
    config.plugins = {"b": B.Config()}
    host = Host(config, available)
    assert list(host.plugins) == ["b"]
    assert host.first("golf_layer_schedule", config=config) == [0, 1]


def test_collect_sorts_by_order_then_recipe_order():
    class Tagged:
        def __init__(self, tag, order):
            self.tag, self.order = tag, order

    def make(name, order):
        class P(golf.Plugin):
            @golf.hookimpl
            def golf_embedding_transform(self, config):
                return Tagged(self.name, order)

        P.name = name
        return P

    classes = [make("late", 10), make("first", 0), make("second", 0)]
    config = tiny_config()
    config.plugins = {c.name: c.Config() for c in classes}
    host = Host(config, {c.name: PluginInfo(c.name, c, "test", "0") for c in classes})
    assert [t.tag for t in host.collect("golf_embedding_transform", config=config)] == ["first", "second", "late"]


def test_builtins_are_discovered_like_third_party():

    available = discover()
    for info in available.values():
        builtin = info.cls.__module__.startswith("golf_plugins.")
        assert (info.source == "builtin") == builtin
        assert info.cls.description


def test_entry_point_plugin_is_discovered():
    # the example package in examples/ is installed by .ci/run (pip install -e examples/golf-example)
    available = discover()
    assert available["gelu_mlp"].source == "entry point (golf-example)"

import textwrap

import pytest

import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.plugins import Host, PluginInfo, discover
from golf_plugins.leaky_relu2 import LeakyRelu2
from golf_plugins.smear_gate import SmearGatePlugin
from torch import nn

from golfcore.errors import PluginError
from tests.helpers import build, host_with, tiny_config


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
            def golf_edit_model(self, description):
                description.bos_id = 2
    '''))
    available = discover([tmp_path])
    info = available["loud"]
    assert info.source == str(tmp_path / "loud.py") and info.hooks == ["golf_edit_model"]


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


def test_two_plugins_answering_a_single_answer_hook_is_an_error():
    with pytest.raises(ConfigError, match="plugins 'a' and 'b' both implement golf_layer_schedule"):
        host_with(tiny_config(), A, B)


def test_only_enabled_plugins_run():
    config = tiny_config()
    available = {c.name: PluginInfo(c.name, c, "test", "0") for c in (A, B)}
    config.plugins = {"b": B.Config()}
    host = Host(config, available)
    assert list(host.plugins) == ["b"]
    assert host.first("golf_layer_schedule", config=config) == [0, 1]


def test_collect_sorts_by_order_then_recipe_order():
    class Tagged:  # what the hook answers: an eval adapter (never run here)
        name, history_len = "tagged", 0
        start = adjust = observe = None

        def __init__(self, tag, order):
            self.tag, self.order = tag, order

    def make(name, order):
        class P(golf.Plugin):
            @golf.hookimpl
            def golf_eval_adapter(self, config):
                return Tagged(self.name, order)

        P.name = name
        return P

    classes = [make("late", 10), make("first", 0), make("second", 0)]
    config = tiny_config()
    config.plugins = {c.name: c.Config() for c in classes}
    host = Host(config, {c.name: PluginInfo(c.name, c, "test", "0") for c in classes})
    assert [t.tag for t in host.collect("golf_eval_adapter", config=config)] == ["first", "second", "late"]


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


# --------------------------------------------------------------------- pluggy features for third parties


class Tanh(golf.Plugin):
    """A third party overriding an enabled built-in's activation, explicitly: its edit runs last."""

    name = "tanh_override"

    @golf.hookimpl(trylast=True)
    def golf_edit_model(self, description):
        for layer in description.layers[::2]:  # the other layers keep the built-in's edit
            layer.activation = golf.Part(nn.Tanh)


def test_trylast_edits_after_an_enabled_builtin():
    _, _, model = build(Tanh, LeakyRelu2)  # first in the recipe, yet it edits last
    kinds = [type(b.activation).__name__ for b in model.blocks]
    assert kinds[0] == kinds[2] == "Tanh" and kinds[1] == kinds[3] != "Tanh"


def test_trylast_makes_a_fallback():
    class Fallback(golf.Plugin):
        name = "fallback"

        @golf.hookimpl(tryfirst=True)
        def golf_edit_model(self, description):
            for layer in description.layers:
                layer.activation = golf.Part(nn.Identity)

    _, _, model = build(LeakyRelu2, Fallback)  # the fallback comes last in the recipe, yet edits first
    assert all(type(b.activation).__name__ != "Identity" for b in model.blocks)


def test_a_wrapper_times_every_build_hook_and_sees_each_result():
    seen = []

    class Timer(golf.Plugin):
        name = "timer"

        def _wrap(hook):
            @golf.hookimpl(wrapper=True, specname=hook)
            def wrapper(self, **kwargs):
                result = yield
                seen.append((hook, result))
                return result

            return wrapper

        golf_edit_model = _wrap("golf_edit_model")  # called once per editing plugin
        golf_eval_adapter = _wrap("golf_eval_adapter")  # a collecting hook
        golf_model_built = _wrap("golf_model_built")  # a call hook

    config, host, model = build(Timer, LeakyRelu2, SmearGatePlugin)
    host.collect("golf_eval_adapter", config=config)
    hooks = [h for h, _ in seen]
    assert hooks.count("golf_edit_model") == 2 and hooks.count("golf_model_built") == 1
    assert [r for h, r in seen if h == "golf_eval_adapter"] == [[]]  # a list, never a generator


def test_a_wrapper_may_replace_the_result():
    class Replace(golf.Plugin):
        name = "replace"

        @golf.hookimpl(wrapper=True)
        def golf_edit_model(self, description):
            result = yield
            for layer in description.layers:
                layer.activation = golf.Part(nn.Identity)
            return result

    _, _, model = build(LeakyRelu2, Replace)
    assert all(isinstance(b.activation, nn.Identity) for b in model.blocks)


def test_tracing_names_the_plugin_that_answered_each_hook():
    lines = []
    config = tiny_config()
    config.plugins["leaky_relu2"] = LeakyRelu2.Config()
    host = Host(config, {"leaky_relu2": PluginInfo("leaky_relu2", LeakyRelu2, "builtin", "0")}, trace=lines.append)
    from golfcore.assemble import build_model

    build_model(config, host, None)
    assert "hook golf_edit_model: called leaky_relu2; answered by nobody (core default)" in lines
    assert any(line.startswith("hook golf_model_built: called none; answered by nobody") for line in lines)


class Raises(golf.Plugin):
    name = "raises"

    @golf.hookimpl
    def golf_model_built(self, model, config):
        return helper_that_fails()


def helper_that_fails():
    raise ValueError("bad shape")


def test_a_plugin_raising_in_a_hook_is_named_in_one_line():
    with pytest.raises(PluginError, match=r"^plugin 'raises' raised in golf_model_built: ValueError: bad shape$") as e:
        build(Raises)
    assert isinstance(e.value.__cause__, ValueError)  # the traceback is kept for --debug


def test_a_plugin_raising_a_golf_error_keeps_its_own_message():
    class Refuses(golf.Plugin):
        name = "refuses"

        @golf.hookimpl
        def golf_model_built(self, model, config):
            raise ConfigError("[plugins.refuses] k: no")

    with pytest.raises(ConfigError, match=r"^\[plugins.refuses\] k: no$"):
        build(Refuses)

"""ortho_init: q, k, v, up orthogonal and o, down left at zero (the PR #549 init), per physical layer."""

import math

import pytest
import torch
from golf_plugins.ortho_init import Config, OrthoInit

import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.assemble import build_model, check_config
from golfcore.plugins import Host, PluginInfo, discover
from golfcore.recipe import resolve
from tests.helpers import tiny_config, train_briefly


class Repeat(golf.Plugin):
    name = "repeat"

    @golf.hookimpl
    def golf_layer_schedule(self, config):
        return [0, 1, 2, 1, 2, 3]


def build(ortho: Config | None = None, schedule=False, config=None):
    config = config or tiny_config()
    classes = ([OrthoInit] if ortho is not None else []) + ([Repeat] if schedule else [])
    for cls in classes:
        config.plugins[cls.name] = ortho if cls is OrthoInit else cls.Config()
    host = Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in classes})
    check_config(config, host)
    return config, host, build_model(config, host, None)


def is_orthogonal(w, gain=1.0):
    small = min(w.shape)
    gram = w @ w.T if w.size(0) == small else w.T @ w  # orthonormal rows or columns, whichever is fewer
    return torch.allclose(gram, gain**2 * torch.eye(small), atol=1e-5)


def test_reference_init():
    config = tiny_config(mlp_mult=3.0)  # up [96, 32], k/v [16, 32], q [32, 32]
    _, _, model = build(Config(), config=config)
    for layer in model.layers:
        assert all(is_orthogonal(getattr(layer, n).weight) for n in ("q", "k", "v", "up"))
        assert torch.all(layer.o.weight == 0) and torch.all(layer.down.weight == 0)
    _, _, plain = build(None)
    assert not is_orthogonal(plain.layers[0].q.weight)  # the core's default init is not orthogonal


def test_physical_layers_under_recurrence_and_options():
    _, _, model = build(Config(matrices=["q", "down"], gain=0.5), schedule=True)
    assert len(model.layers) == 4
    for layer in model.layers:
        assert is_orthogonal(layer.q.weight, 0.5) and is_orthogonal(layer.down.weight, 0.5)
        assert not is_orthogonal(layer.k.weight, 0.5) and torch.all(layer.o.weight == 0)


def test_deterministic_from_the_seed():
    _, _, a = build(Config())
    _, _, b = build(Config())
    assert torch.equal(a.layers[2].up.weight, b.layers[2].up.weight)


def test_trains():
    config, host, model = build(Config())
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)


@pytest.mark.parametrize("table, key", [({"matrices": ["q", "w"]}, "matrices"), ({"gain": 0.0}, "gain"), ({"matrices": "q"}, "matrices")])
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.ortho_init\].*{key}"):
        resolve({"plugins": {"ortho_init": table}}, discover(), "<test>")

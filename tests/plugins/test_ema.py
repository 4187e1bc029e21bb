"""EMA: after training, the model holds exactly the EMA of the recorded per-step weights."""

import warnings

import pytest
import torch
from golf_plugins.ema import Config as EmaConfig
from golf_plugins.ema import Ema

from golfcore.errors import ConfigError
from golfcore.assemble import build_model
from golfcore.params import param_specs
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import Snapshots, host_with, tiny_config, train_briefly


def train(config, host):
    model = build_model(config, host, None)
    train_briefly(config, host, model)
    return model


def test_model_holds_the_ema_of_the_recorded_weights():
    Snapshots.taken = []
    config = tiny_config()
    config.train.iterations, config.train.warmup_steps = 6, 2
    decay = 0.6  # short horizon so every step visibly matters
    host = host_with(config, (Ema, EmaConfig(decay=decay)), Snapshots)
    model = train(config, host)
    assert [s for s, _, _ in Snapshots.taken] == list(range(1, 7))  # warm-up steps are not averaged
    expected = [p.clone() for p in Snapshots.taken[0][2]]
    for _, _, params in Snapshots.taken[1:]:
        expected = [e.mul(decay).add(p, alpha=1 - decay) for e, p in zip(expected, params)]
    final = list(model.parameters())
    for got, want, last in zip(final, expected, Snapshots.taken[-1][2]):
        assert torch.equal(got, want)
    assert any(not torch.equal(got, last) for got, last in zip(final, Snapshots.taken[-1][2]))
    ema = host.plugins["ema"]
    assert all(s.dtype == torch.float32 and s.device == p.device for s, p in zip(ema.average.tensors, final))


def test_ema_runs_in_fp32_for_low_precision_parameters():
    ema = Ema(EmaConfig(decay=0.5))
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    ema.golf_step_end(model, 1, 1.0)
    assert all(s.dtype == torch.float32 for s in ema.average.tensors)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.golf_step_end(model, 2, 1.0)
    before = [p.float().clone() for p in model.parameters()]
    ema.golf_train_end(model)
    for p, b in zip(model.parameters(), before):
        assert p.dtype == torch.bfloat16
        assert torch.allclose(p.float(), b - 0.5, atol=1e-2)


def test_no_step_leaves_weights_and_warns():
    model = torch.nn.Linear(3, 3)
    before = [p.clone() for p in model.parameters()]
    with pytest.warns(UserWarning, match="ema"):
        Ema().golf_train_end(model)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_defaults():
    assert EmaConfig().decay == 0.997
    config = resolve({"plugins": {"ema": {}}}, discover(), "<test>")
    assert config.plugins["ema"].decay == 0.997


@pytest.mark.parametrize("table, key", [({"decay": 1.0}, "decay"), ({"decay": 0}, "decay"), ({"decay": "high"}, "decay"), ({"every": 2}, "every")])
def test_bad_config_names_plugin_and_key(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins\.ema\].*{key}"):
        resolve({"plugins": {"ema": table}}, discover(), "<test>")


def test_no_parameters_added_and_trains_with_default_config():
    plain = build_model(tiny_config(), host_with(tiny_config()), None)
    config = tiny_config()
    host = host_with(config, Ema)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = train(config, host)
    assert set(param_specs(model)) == set(param_specs(plain))
    assert all(torch.isfinite(p).all() for p in model.parameters())

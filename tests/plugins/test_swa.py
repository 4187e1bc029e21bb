"""SWA: snapshot schedule, the average really applied (D4), combining with EMA, the too-short-run warning."""

import pytest
import torch
from golf_plugins.ema import Config as EmaConfig
from golf_plugins.ema import Ema
from golf_plugins.swa import Config as SwaConfig
from golf_plugins.swa import Swa

from golfcore.errors import ConfigError
from golfcore.assemble import build_model
from golfcore.params import param_specs
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import Snapshots, host_with, tiny_config, train_briefly


def warmdown_config():
    """12 steps, lr scale (12 - s) / 8 from step index 4: scales < 0.5 on steps 10, 11, 12."""
    config = tiny_config()
    config.train.iterations, config.train.warmdown_iters, config.train.warmup_steps = 12, 8, 1
    return config


def train(config, host):
    Snapshots.taken = []
    model = build_model(config, host, None)
    train_briefly(config, host, model)
    return model


def mean(snapshots):
    return [torch.stack(ps).mean(0) for ps in zip(*snapshots)]


def test_snapshots_only_in_the_tail_every_n_steps_and_replace_applies_their_mean():
    config = warmdown_config()
    host = host_with(config, (Swa, SwaConfig(every=2, start_scale=0.5, combine="replace")), Snapshots)
    model = train(config, host)
    swa = host.plugins["swa"]
    expected_steps = [s for s, scale, _ in Snapshots.taken if scale < 0.5 and s % 2 == 0]
    assert swa.snapshot_steps == expected_steps == [10, 12]
    assert swa.count == 2
    want = mean([ps for s, _, ps in Snapshots.taken if s in expected_steps])
    for got, w, last in zip(model.parameters(), want, Snapshots.taken[-1][2]):
        assert torch.allclose(got, w, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(got, last) for got, last in zip(model.parameters(), Snapshots.taken[-1][2]))


def test_every_step_of_the_tail_with_every_1():
    config = warmdown_config()
    host = host_with(config, (Swa, SwaConfig(every=1, start_scale=0.5)), Snapshots)
    train(config, host)
    assert host.plugins["swa"].snapshot_steps == [10, 11, 12]


@pytest.mark.parametrize("order", ["swa_first", "ema_first"])
def test_average_with_ema_is_half_ema_plus_half_swa(order):
    config = warmdown_config()
    decay = 0.7
    plugins = {Swa: SwaConfig(every=2, start_scale=0.5, combine="average"), Ema: EmaConfig(decay=decay)}
    if order == "ema_first":
        plugins = dict(reversed(list(plugins.items())))
    host = host_with(config, *plugins.items(), Snapshots)
    model = train(config, host)
    ema = [p.clone() for p in Snapshots.taken[0][2]]
    for _, _, ps in Snapshots.taken[1:]:
        ema = [e.mul(decay).add(p, alpha=1 - decay) for e, p in zip(ema, ps)]
    swa = mean([ps for s, _, ps in Snapshots.taken if s in (10, 12)])
    for got, e, s in zip(model.parameters(), ema, swa):
        assert torch.allclose(got, 0.5 * (e + s), rtol=1e-6, atol=1e-7)


def test_average_without_ema_uses_the_last_weights():
    config = warmdown_config()
    host = host_with(config, (Swa, SwaConfig(every=2, start_scale=0.5, combine="average")), Snapshots)
    model = train(config, host)
    swa = mean([ps for s, _, ps in Snapshots.taken if s in (10, 12)])
    for got, s, last in zip(model.parameters(), swa, Snapshots.taken[-1][2]):
        assert torch.allclose(got, 0.5 * (s + last), rtol=1e-6, atol=1e-7)


def test_no_snapshot_warns_and_leaves_weights():
    config = tiny_config()  # 3 steps, no warmdown: lr scale stays 1
    host = host_with(config, Swa, Snapshots)
    with pytest.warns(UserWarning, match=r"\[plugins\.swa\] no snapshot"):
        model = train(config, host)
    for got, last in zip(model.parameters(), Snapshots.taken[-1][2]):
        assert torch.equal(got, last)


def test_defaults():
    config = resolve({"plugins": {"swa": {}}}, discover(), "<test>")
    cfg = config.plugins["swa"]
    assert (cfg.every, cfg.start_scale, cfg.combine) == (50, 0.2, "replace")


@pytest.mark.parametrize(
    "table, key",
    [
        ({"every": 0}, "every"),
        ({"every": 2.5}, "every"),
        ({"start_scale": 0}, "start_scale"),
        ({"start_scale": 1.5}, "start_scale"),
        ({"combine": "blend"}, "combine"),
        ({"decay": 0.9}, "decay"),
    ],
)
def test_bad_config_names_plugin_and_key(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins\.swa\].*{key}"):
        resolve({"plugins": {"swa": table}}, discover(), "<test>")


def test_no_parameters_added_and_trains_with_default_config():
    plain = build_model(tiny_config(num_layers=2), host_with(tiny_config(num_layers=2)), None)
    config = tiny_config(num_layers=2)
    config.train.iterations, config.train.warmdown_iters = 50, 50
    config.train.batch_tokens, config.train.micro_batches = 32, 1  # 50 quick steps
    host = host_with(config, Swa)
    model = build_model(config, host, None)
    assert set(param_specs(model)) == set(param_specs(plain))
    train_briefly(config, host, model)
    assert host.plugins["swa"].snapshot_steps == [50]  # scale at step index 49 is 1/50 < 0.2

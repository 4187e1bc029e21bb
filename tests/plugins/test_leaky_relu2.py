"""leaky_relu2: the activation's formula, its wiring into every block, training, config errors."""

import math

import pytest
import torch
from golf_plugins.leaky_relu2 import LeakyRelu2, LeakyReluSquared
from torch import nn

from golfcore.errors import ConfigError
from golfcore.model import ReluSquared, count_parameters
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import build, built, edited, train_briefly


def test_formula():
    u = torch.randn(2, 3, 7)
    expected = (u.clamp(min=0) + 0.5 * u.clamp(max=0)) ** 2
    torch.testing.assert_close(LeakyReluSquared(0.5)(u), expected)
    torch.testing.assert_close(LeakyReluSquared(0.0)(u), torch.relu(u) ** 2)
    assert LeakyReluSquared(0.5)(torch.tensor([-2.0, 3.0])).tolist() == [1.0, 9.0]


def test_every_block_uses_it_and_it_changes_the_output():
    _, _, model = build(LeakyRelu2)
    assert all(isinstance(b.activation, LeakyReluSquared) and b.activation.slope == 0.5 for b in model.blocks)
    # the MLP down projections start at zero; make the MLPs contribute, then compare with relu²
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in model.layers:
            nn.init.normal_(layer.down.weight, std=0.1)
    tokens = torch.randint(0, 64, (2, 9))
    leaky = model.logits(tokens)
    for block in model.blocks:
        block.activation = ReluSquared()
    assert not torch.allclose(leaky, model.logits(tokens))


def test_adds_no_parameters():
    _, _, plain = build()
    _, _, model = build(LeakyRelu2)
    assert count_parameters(model) == count_parameters(plain)


def test_trains():
    config, host, model = build(LeakyRelu2)
    outcome = train_briefly(config, host, model)
    assert outcome.steps == config.train.iterations and math.isfinite(outcome.last_train_loss)


@pytest.mark.parametrize("slope", [-0.1, 1.5, float("nan")])
def test_bad_slope(slope):
    with pytest.raises(ConfigError, match=r"\[plugins.leaky_relu2\] slope"):
        resolve({"plugins": {"leaky_relu2": {"slope": slope}}}, discover(), "<test>")


def test_slope_option_reaches_the_module():
    config = resolve({"plugins": {"leaky_relu2": {"slope": 0.25}}}, discover(), "<test>")
    assert built(edited(LeakyRelu2(config.plugins["leaky_relu2"]), config).layers[0].activation).slope == 0.25

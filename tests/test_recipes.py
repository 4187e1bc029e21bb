"""The shipped recipes: they resolve, build the models they promise, and compile."""

from pathlib import Path

import pytest
import torch

from golfcore.model import build_model, check_config, count_parameters
from golfcore.plugins import Host, discover
from golfcore.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def model_of(recipe: str, *without: str):
    available = discover()
    config = load_recipe(RECIPES / recipe, available, without=list(without))
    host = Host(config, available)
    check_config(config, host)
    return config, build_model(config, host, host.first("golf_quantizer", config=config))


def test_full_scale_parameter_counts():
    # the challenge baseline logs 17,059,912; PR #733 logs 27,051,758, which includes block 0's
    # two value-residual weights that are never used (D7): golf does not create them
    assert count_parameters(model_of("baseline.toml")[1]) == 17_059_912
    assert count_parameters(model_of("pr549.toml")[1]) == 26_993_756
    assert count_parameters(model_of("v4.toml")[1]) == 27_051_758 - 2


def test_v4_is_pr549_plus_the_six_techniques():
    v4 = set(load_recipe(RECIPES / "v4.toml", discover()).plugins)
    pr549 = set(load_recipe(RECIPES / "pr549.toml", discover()).plugins)
    assert v4 - pr549 == {"xsa", "value_residual", "gated_attention", "crownq", "recurrence", "ttt", "hedge_mixer"}
    assert set(load_recipe(RECIPES / "v4-quick.toml", discover()).plugins) == v4
    assert set(load_recipe(RECIPES / "pr549-quick.toml", discover()).plugins) == pr549


@pytest.mark.parametrize("technique", ["xsa", "value_residual", "gated_attention", "crownq", "recurrence", "ttt", "hedge_mixer"])
def test_every_v4_technique_switches_off(technique):
    config, model = model_of("v4-quick.toml", technique)
    assert technique not in config.plugins
    tokens = torch.randint(0, 1024, (1, 32))
    assert torch.isfinite(model.logits(tokens)).all()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["quickstart.toml", "pr549-quick.toml", "v4-quick.toml"])
def test_model_compiles_fullgraph_and_matches_eager(recipe):
    torch._dynamo.reset()
    _, model = model_of(recipe)
    with torch.no_grad():
        for layer in model.layers:  # zero-initialised projections would hide most of the graph
            layer.o.normal_(0, 0.02)
            layer.down.normal_(0, 0.02)
        tokens = torch.randint(0, 1024, (2, 64))
        eager = model.logits(tokens)
        compiled = torch.compile(model.logits, fullgraph=True)(tokens)
    assert torch.allclose(compiled, eager, atol=1e-4)

"""The shipped recipes: they resolve and build the models they promise (compiling them: tests/test_compile.py, tests/test_cuda.py)."""

import json
from pathlib import Path

import pytest
import torch

import golfcore as golf
from golfcore.assemble import build_model, check_config
from golfcore.model import count_parameters
from golfcore.plugins import Host, discover
from golfcore.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def model_of(recipe: str, *without: str):
    available = discover()
    config = load_recipe(RECIPES / recipe, available, without=list(without))
    host = Host(config, available)
    check_config(config, host)
    return config, build_model(config, host, host.first("golf_quantizer", config=config))


def test_full_scale_parameter_counts_match_the_records_logs():
    # the challenge baseline logs 17,059,912 and the PR #549 record 26,928,220; PR #733 logs
    # 27,051,758, which includes block 0's two value-residual weights that are never used (D7):
    # golf does not create them
    assert count_parameters(model_of("baseline.toml")[1]) == 17_059_912
    assert count_parameters(model_of("pr549.toml")[1]) == 26_928_220
    assert count_parameters(model_of("v4.toml")[1]) == 27_051_758 - 2


def test_pr549_is_the_record_as_it_ran():
    config = load_recipe(RECIPES / "pr549.toml", discover())
    plugins = config.plugins
    assert "swa" not in plugins  # collected but never applied by the record's code (D4)
    assert plugins["xsa"].layers == "last:4" and plugins["bigram_hash"].buckets == 1536
    assert plugins["ema"].decay == 0.997
    ttt = plugins["ttt"]
    assert (ttt.lr, ttt.momentum, ttt.epochs, ttt.batch_seqs, ttt.grad_clip, ttt.freeze_blocks) == (0.002, 0.9, 3, 32, 1.0, 0)
    assert (config.train.iterations, config.eval.chunk_tokens, config.eval.stride) == (9000, 32768, 64)


def test_v4_is_pr549_plus_the_six_techniques():
    available = discover()
    v4 = load_recipe(RECIPES / "v4.toml", available)
    pr549 = load_recipe(RECIPES / "pr549.toml", available)
    assert set(v4.plugins) - set(pr549.plugins) == {"value_residual", "gated_attention", "crownq", "recurrence", "hedge_mixer"}
    assert set(pr549.plugins) <= set(v4.plugins)
    # the two settings PR #733 changed in PR #549's techniques: XSA everywhere, BigramHash 2048
    assert v4.plugins["xsa"].layers == "all" and v4.plugins["bigram_hash"].buckets == 2048
    assert v4.train.iterations == 20000
    assert set(load_recipe(RECIPES / "v4-quick.toml", available).plugins) == set(v4.plugins)
    assert set(load_recipe(RECIPES / "pr549-quick.toml", available).plugins) == set(pr549.plugins)


@pytest.mark.parametrize("technique", ["xsa", "value_residual", "gated_attention", "crownq", "recurrence", "ttt", "hedge_mixer"])
def test_every_v4_technique_switches_off(technique):
    config, model = model_of("v4-quick.toml", technique)
    assert technique not in config.plugins
    tokens = torch.randint(0, 1024, (1, 32))
    assert torch.isfinite(model.logits(tokens)).all()

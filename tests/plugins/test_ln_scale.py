"""ln_scale: 1/sqrt(i+1) per virtual (or physical) layer, applied to both sublayer inputs."""

import math

import pytest
import torch
from golf_plugins.ln_scale import Config, LnScale
from torch import nn

import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.assemble import build_model, check_config
from golfcore.model import count_parameters, rms_norm
from golfcore.plugins import Host, PluginInfo, discover
from golfcore.recipe import resolve
from tests.helpers import host_with, tiny_config, train_briefly


class Repeat(golf.Plugin):
    name = "repeat"

    @golf.hookimpl
    def golf_layer_schedule(self, config):
        return [0, 1, 2, 1, 2, 3]


def build(index="virtual", schedule=False):
    config = tiny_config()
    classes = [LnScale] + ([Repeat] if schedule else [])
    for cls in classes:
        config.plugins[cls.name] = Config(index=index) if cls is LnScale else cls.Config()
    host = Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in classes})
    check_config(config, host)
    return config, host, build_model(config, host, None)


def test_factors_by_virtual_index():
    _, _, model = build()
    assert [b.input_scale for b in model.blocks] == pytest.approx([1, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5])


def test_virtual_vs_physical_under_recurrence():
    _, _, model = build(schedule=True)
    assert [b.input_scale for b in model.blocks] == pytest.approx([1 / math.sqrt(i + 1) for i in range(6)])
    _, _, model = build(index="physical", schedule=True)
    assert [b.input_scale for b in model.blocks] == pytest.approx([1 / math.sqrt(p + 1) for p in [0, 1, 2, 1, 2, 3]])


def test_scales_both_sublayer_inputs():
    _, _, model = build()
    block = model.blocks[3]  # s = 1/2
    seen = {}
    layer = model.layers[3]
    with torch.no_grad():
        nn.init.normal_(layer.down.weight, std=0.1)
        nn.init.normal_(layer.o.weight, std=0.1)
    block.activation.register_forward_pre_hook(lambda m, args: seen.update(u=args[0]))
    original_attention = block.attention
    block.attention = lambda x, w, ctx: seen.update(attn_in=x) or original_attention(x, w, ctx)
    x, x0 = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    out = block(x, x0, layer, {"tokens": torch.zeros(2, 5, dtype=torch.long)})
    torch.testing.assert_close(seen["attn_in"], 0.5 * rms_norm(x))  # resid_mix starts at (1, 0)
    h = x + original_attention(0.5 * rms_norm(x), layer, {})
    torch.testing.assert_close(seen["u"], 0.5 * rms_norm(h) @ layer.up.weight.T)
    torch.testing.assert_close(out, h + block.activation(0.5 * rms_norm(h) @ layer.up.weight.T) @ layer.down.weight.T)


def test_no_parameters_and_trains():
    config, host, model = build()
    plain_config = tiny_config()
    assert count_parameters(model) == count_parameters(build_model(plain_config, host_with(plain_config), None))
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)


def test_bad_index():
    with pytest.raises(ConfigError, match=r"\[plugins.ln_scale\] index"):
        resolve({"plugins": {"ln_scale": {"index": "both"}}}, discover(), "<test>")

"""xsa: orthogonality to the own value, the naive GQA formula, the value actually attended,
layer selection (all, last:N, lists; virtual vs physical under recurrence), training, config."""

import math

import pytest
import torch
from golf_plugins.xsa import Config, ExclusiveSelfAttention, Xsa
from torch import nn

import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.assemble import build_model, check_config
from golfcore.plugins import Host, PluginInfo, discover
from golfcore.recipe import resolve
from tests.helpers import editor, tiny_config, train_briefly

SCHEDULE = [0, 1, 2, 1, 2, 3]  # 6 virtual layers over 4 physical ones


class Repeat(golf.Plugin):
    name = "repeat"

    @golf.hookimpl
    def golf_layer_schedule(self, config):
        return SCHEDULE


def build(cfg: Config, *extra, config=None):
    config = config or tiny_config()
    classes = [Xsa, *extra]
    for cls in classes:
        config.plugins[cls.name] = cfg if cls is Xsa else cls.Config()
    host = Host(config, {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in classes})
    check_config(config, host)
    return config, host, build_model(config, host, None)


def xsa_layers(model):
    return [i for i, b in enumerate(model.blocks) if any(isinstance(t, ExclusiveSelfAttention) for t in b.output_transforms)]


def naive(y, v):  # repeat KV heads to H, then y − (y·v̂)v̂ per head
    H, G = y.size(2), v.size(2)
    vh = v.repeat_interleave(H // G, dim=2)  # [B,T,H,D]
    vn = vh / vh.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return y - (y * vn).sum(-1, keepdim=True) * vn


@pytest.mark.parametrize("H, G", [(8, 4), (8, 2), (4, 4), (6, 1)])
def test_orthogonal_to_own_value_and_matches_naive_gqa(H, G):
    torch.manual_seed(0)
    y, v = torch.randn(2, 5, H, 16, dtype=torch.float64), torch.randn(2, 5, G, 16, dtype=torch.float64)
    z = ExclusiveSelfAttention()(y, v, None, {})
    assert z.shape == y.shape
    torch.testing.assert_close(z, naive(y, v))
    for h in range(H):  # every head is orthogonal to its own group's value at the same position
        dots = (z[:, :, h] * v[:, :, h // (H // G)]).sum(-1)
        assert dots.abs().max() < 1e-12
    # the component orthogonal to v is untouched; applying twice changes nothing
    torch.testing.assert_close(ExclusiveSelfAttention()(z, v, None, {}), z)


def test_zero_value_leaves_output_unchanged():
    y = torch.randn(1, 3, 4, 8)
    v = torch.zeros(1, 3, 2, 8)
    torch.testing.assert_close(ExclusiveSelfAttention()(y, v, None, {}), y)


def test_non_contiguous_output_like_sdpa():
    y = torch.randn(2, 4, 7, 8).transpose(1, 2)  # [B,T,H,D] viewed from [B,H,T,D], as the block passes it
    v = torch.randn(2, 7, 2, 8)
    torch.testing.assert_close(ExclusiveSelfAttention()(y, v, None, {}), naive(y, v))


class Spy(nn.Module):
    """An attention-output transform at a given order that records (y, v)."""

    def __init__(self, log, order):
        super().__init__()
        self.log, self.order = log, order

    def forward(self, y, v, x, ctx):
        self.log.append((y.detach().clone(), v.detach().clone()))
        return y


class ShiftValues(nn.Module):
    """A value transform that changes v, so the test sees XSA use the value actually attended."""

    def forward(self, v, ctx):
        return v + 1.0


def test_in_model_uses_the_attended_value():
    before, after = [], []
    def add(slot, cls, *args):
        return lambda d: [getattr(layer, slot).append(golf.Part(cls, *args)) for layer in d.layers]

    Pre = editor("pre", add("output_transforms", Spy, before, -1))
    Post = editor("post", add("output_transforms", Spy, after, 1))
    Shift = editor("shift", add("value_transforms", ShiftValues))
    _, _, model = build(Config(), Pre, Post, Shift)
    assert [type(t).__name__ for t in model.blocks[0].output_transforms] == ["Spy", "ExclusiveSelfAttention", "Spy"]
    model.logits(torch.randint(0, 64, (2, 6)))
    assert len(before) == len(after) == 4
    for (y, v), (z, v2) in zip(before, after):
        torch.testing.assert_close(v, v2)
        torch.testing.assert_close(z, naive(y, v), atol=1e-6, rtol=1e-5)
        dots = (z.view(2, 6, 2, 2, 8) * v.unsqueeze(3)).sum(-1)  # tiny model: H=4, G=2
        assert dots.abs().max() < 1e-5


def test_layer_selection_virtual():
    assert xsa_layers(build(Config())[2]) == [0, 1, 2, 3]
    assert xsa_layers(build(Config(layers="last:2"))[2]) == [2, 3]
    assert xsa_layers(build(Config(layers=[0, 3]))[2]) == [0, 3]
    _, _, model = build(Config(), Repeat)
    assert xsa_layers(model) == [0, 1, 2, 3, 4, 5]  # D5 fixed: every virtual layer
    _, _, model = build(Config(layers="last:4"), Repeat)
    assert xsa_layers(model) == [2, 3, 4, 5]  # the reference's XSA_LAST_N counting, virtual layers
    _, _, model = build(Config(layers=[1, 4]), Repeat)
    assert xsa_layers(model) == [1, 4]


def test_layer_selection_physical_under_recurrence():
    _, _, model = build(Config(layers=[1], index="physical"), Repeat)
    assert xsa_layers(model) == [1, 3]  # both virtual layers running physical 1
    _, _, model = build(Config(layers="last:2", index="physical"), Repeat)
    assert xsa_layers(model) == [2, 4, 5]  # physical 2 and 3
    _, _, model = build(Config(index="physical"), Repeat)
    assert xsa_layers(model) == list(range(6))


def test_no_parameters():
    _, _, plain = build(Config(layers=[0]))
    n = sum(p.numel() for p in plain.parameters())
    _, _, model = build(Config())
    assert sum(p.numel() for p in model.parameters()) == n
    assert ExclusiveSelfAttention.order == 0


def test_trains():
    config, host, model = build(Config(), Repeat)
    with torch.no_grad():
        for layer in model.layers:
            nn.init.normal_(layer.o.weight, std=0.05)
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)


def resolved(table):
    return resolve({"plugins": {"xsa": table}}, discover(), "<test>")


def test_resolves_from_a_recipe():
    assert resolved({}).plugins["xsa"] == Config("all", "virtual")
    assert resolved({"layers": "last:11"}).plugins["xsa"].layers == "last:11"
    assert resolved({"layers": [0, 2], "index": "physical"}).plugins["xsa"].layers == [0, 2]


@pytest.mark.parametrize(
    "table, key",
    [({"layers": "some"}, "layers"), ({"layers": "last:0"}, "layers"), ({"layers": "last:-1"}, "layers"),
     ({"layers": []}, "layers"), ({"layers": [-1]}, "layers"), ({"layers": [1, 1]}, "layers"),
     ({"layers": 3}, "layers"), ({"index": "logical"}, "index"), ({"last": 3}, "last")],
)
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.xsa\].*{key}"):
        resolved(table)


def test_physical_range_checked_in_check_config():
    config = resolved({"layers": [9], "index": "physical"})  # the 9-layer baseline: 0..8
    with pytest.raises(ConfigError, match=r"\[plugins.xsa\] layers: \[9\]"):
        check_config(config, Host(config, discover()))
    config = resolved({"layers": "last:10", "index": "physical"})
    with pytest.raises(ConfigError, match=r"\[plugins.xsa\] layers: 'last:10'"):
        check_config(config, Host(config, discover()))


def test_virtual_range_checked_at_build():
    with pytest.raises(ConfigError, match=r"\[plugins.xsa\] layers: \[6\].*6 virtual"):
        build(Config(layers=[6]), Repeat)
    with pytest.raises(ConfigError, match=r"\[plugins.xsa\] layers: 'last:7'"):
        build(Config(layers="last:7"), Repeat)
    build(Config(layers=[5]), Repeat)  # virtual 5 exists under the 6-layer schedule

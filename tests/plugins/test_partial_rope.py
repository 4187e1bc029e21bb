"""partial_rope: only the first k head dims rotate, the NTK option's base, wiring, config errors."""

import math

import pytest
import torch
from golf_plugins.partial_rope import NTKRotary, PartialRope, ntk_base

from golfcore.errors import ConfigError
from golfcore.assemble import build_model, check_config
from golfcore.model import Rotary, count_parameters
from golfcore.plugins import Host, PluginInfo, discover
from golfcore.recipe import resolve
from tests.helpers import built, edited, host_with, tiny_config, train_briefly


def build(config=None, **options):
    config = config or tiny_config()
    config.plugins["partial_rope"] = PartialRope.Config(**options)
    config.plugins["partial_rope"].check()
    host = Host(config, {"partial_rope": PluginInfo("partial_rope", PartialRope, "test", "0")})
    check_config(config, host)
    return config, host, build_model(config, host, None)


def direct_rope(x, dims, base):
    """Rotate pairs (c, c + dims/2), c < dims/2, by angle t·base^(-2c/dims); leave the rest."""
    B, T, H, D = x.shape
    out = x.clone()
    half = dims // 2
    for t in range(T):
        for c in range(half):
            a = t * base ** (-2 * c / dims)
            x1, x2 = x[:, t, :, c], x[:, t, :, c + half]
            out[:, t, :, c] = x1 * math.cos(a) + x2 * math.sin(a)
            out[:, t, :, c + half] = x2 * math.cos(a) - x1 * math.sin(a)
    return out


def test_first_k_dims_rotate_and_the_rest_are_untouched():
    config = resolve({"plugins": {"partial_rope": {}}}, discover(), "<test>")  # defaults: d=512, 8 heads -> D=64
    rotary = built(edited(PartialRope(config.plugins["partial_rope"]), config).layers[0].rotary)
    assert type(rotary) is Rotary and rotary.dims == 16
    x = torch.randn(2, 6, 3, 64)
    y = rotary(x)
    assert torch.equal(y[..., 16:], x[..., 16:])  # 48 dims carry no position
    torch.testing.assert_close(y, direct_rope(x, 16, 1e4), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[:, 0], x[:, 0])  # position 0: no rotation
    assert not torch.allclose(y[:, 1:, :, :16], x[:, 1:, :, :16])


def test_every_block_gets_it_and_scores_change():
    config = tiny_config()
    plain = build_model(config, host_with(config), None)
    _, _, model = build(dims=4)  # head_dim 8 in the tiny model
    assert all(type(b.rotary) is Rotary and b.rotary.dims == 4 for b in model.blocks)
    assert count_parameters(model) == count_parameters(plain)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in model.layers:  # o starts at zero: let attention reach the logits
            torch.nn.init.normal_(layer.o.weight, std=0.1)
    plain.load_state_dict(model.state_dict())  # same weights, full-dim RoPE
    tokens = torch.randint(0, 64, (2, 9))
    assert not torch.allclose(model.logits(tokens), plain.logits(tokens))


def test_ntk_base_reproduces_the_reference():
    assert ntk_base(1e4, 16, 2048, 1024) == pytest.approx(22_082, abs=1)
    assert ntk_base(1e4, 16, 2048, 1024) == pytest.approx(1e4 * 2 ** (16 / 14))
    assert ntk_base(1e4, 16, 1024, 1024) == 1e4 and ntk_base(1e4, 16, 512, 1024) == 1e4


def test_ntk_rotary_rescales_only_longer_forward_passes():
    rotary = NTKRotary(head_dim=16, base=1e4, dims=8, train_len=4)
    x = torch.randn(1, 8, 2, 16)
    torch.testing.assert_close(rotary(x), direct_rope(x, 8, ntk_base(1e4, 8, 8, 4)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(rotary(x), Rotary(16, 1e4, 8)(x))
    short = x[:, :4]
    torch.testing.assert_close(rotary(short), Rotary(16, 1e4, 8)(short))  # T <= train_len: plain base
    assert torch.equal(rotary(x)[..., 8:], x[..., 8:])


def test_ntk_option_reaches_the_blocks():
    _, _, model = build(dims=4, ntk_train_len=8)
    assert all(isinstance(b.rotary, NTKRotary) and b.rotary.train_len == 8 for b in model.blocks)


def test_trains():
    config, host, model = build(dims=4, ntk_train_len=8)  # train seq_len 16 > 8: the rescaled path
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)


@pytest.mark.parametrize(
    "table, key",
    [({"dims": 15}, "dims"), ({"dims": 0}, "dims"), ({"ntk_train_len": -1}, "ntk_train_len"),
     ({"dims": 2, "ntk_train_len": 1024}, "dims"), ({"dims": 16.0}, "dims")],
)
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.partial_rope\].*{key}"):
        resolve({"plugins": {"partial_rope": table}}, discover(), "<test>")


def test_dims_beyond_the_head_dim_is_a_config_error():
    config = resolve({"model": {"num_heads": 16}, "plugins": {"partial_rope": {"dims": 34}}}, discover(), "<test>")
    with pytest.raises(ConfigError, match=r"\[plugins.partial_rope\] dims: 34 exceeds the head dim 32"):
        check_config(config, Host(config, discover()))

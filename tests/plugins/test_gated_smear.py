"""gated_smear: the identity at init, a hand-computed smear, the BOS mask against PR #1797's
leak, wired before the embedding norm, declarations, training, config."""

import math

import pytest
import torch
from golf_plugins.gated_smear import Config, GatedSmear, GatedSmearPlugin

from golfcore.errors import ConfigError
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import build, train_briefly


def test_identity_at_init():
    smear = GatedSmear(window=3, mask_bos=True)
    assert sum(p.numel() for p in smear.parameters()) == 4
    x = torch.randn(2, 5, 8)
    assert torch.equal(smear(x, torch.randint(2, 9, (2, 5))), x)


@pytest.mark.parametrize("mask_bos", [True, False])
def test_hand_computed_smear(mask_bos):
    smear = GatedSmear(window=2, mask_bos=mask_bos)
    with torch.no_grad():
        smear.weight.copy_(torch.tensor([[1.0, -1.0]]))
        smear.lam.fill_(2.0)
    x = torch.tensor([[[1.0, 1.0, 5.0], [3.0, 1.0, 7.0], [0.0, 4.0, -2.0]]])  # [1,3,3]
    tokens = torch.tensor([[9, 7, 1]])  # position 2 is a BOS
    out = smear(x, tokens)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert torch.equal(out[0, 0], x[0, 0])  # the first position has no predecessor
    # t=1: gate 2·σ(3 − 1) on x_0
    torch.testing.assert_close(out[0, 1], x[0, 1] + 2 * sig(2.0) * x[0, 0])
    # t=2 is a BOS: untouched with the mask; 2·σ(0 − 4)·x_1 added without it (the leak)
    expected = x[0, 2] if mask_bos else x[0, 2] + 2 * sig(-4.0) * x[0, 1]
    torch.testing.assert_close(out[0, 2], expected)


def test_gate_reads_only_the_window_of_the_current_token():
    smear = GatedSmear(window=2, mask_bos=True)
    with torch.no_grad():
        smear.weight.normal_()
        smear.lam.fill_(1.0)
    x = torch.randn(1, 4, 6)
    tokens = torch.full((1, 4), 5)
    y = x.clone()
    y[:, :, 2:] += 10.0  # outside the window: changes only what is smeared, not the gate
    gx = (smear(x, tokens) - x)[:, 1:] / x[:, :-1]
    gy = (smear(y, tokens) - y)[:, 1:] / y[:, :-1]
    torch.testing.assert_close(gx[..., 0], gy[..., 0])


def test_declared_scalars():
    from golfcore.params import ParamSpec, spec_of

    smear = GatedSmear(window=12, mask_bos=True)
    assert {spec_of(p) for p in smear.parameters()} == {ParamSpec("scalar", "float32")}


@pytest.mark.parametrize("table, key", [({"window": 0}, "window"), ({"mask_bos": "yes"}, "mask_bos")])
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.gated_smear\].*{key}"):
        resolve({"plugins": {"gated_smear": table}}, discover(), "<test>")


def test_wired_before_the_embedding_norm():
    config, host, model = build(GatedSmearPlugin)
    (smear,) = model.embedding_before_norm
    assert isinstance(smear, GatedSmear) and smear.mask_bos and smear.bos_id == 1
    with torch.no_grad():
        smear.weight.normal_()
        smear.lam.fill_(0.7)
    tokens = torch.randint(2, 64, (2, 7))
    tokens[0, 3] = 1
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x0=args[1]))
    model.logits(tokens)
    e = model.tok_emb(tokens)
    torch.testing.assert_close(seen["x0"], torch.nn.functional.rms_norm(smear(e, tokens), (32,)))
    assert math.isfinite(train_briefly(config, host, model).last_train_loss)


def test_window_beyond_the_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"\[plugins.gated_smear\] window: 40"):
        build((GatedSmearPlugin, Config(window=40)))
